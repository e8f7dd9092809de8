"""Launched by tests/test_distributed.py under `accelerate launch` (1 or 2 processes): every stage of
`python -m helpers train --profile smoke`, in pipeline order, through the command line's own entry point — in one
Python process, so that accelerate, torch and the process group start once. OUTPUT_DIR holds the data and the
initial model. The instruction prompts of RLOO and RFT are judged by the reward model just trained: RFT then keeps
the best of n for them (a verifier keeps nothing from the smoke model, whose answers are all wrong), so its rounds
of fine-tuning run too."""
from helpers import cli, distributed

for stage in cli.TRAIN_STAGES:
    code = cli.main(["train", "--stage", stage, "--profile", "smoke", "--set", "rloo__instruction_reward=reward_model"])
    assert code == 0, f"{stage}: exit status {code}"
distributed.finish()
