"""Launched by tests/test_distributed.py under `accelerate launch`: the real RLOO stage from the sft_masked checkpoint
of OUTPUT_DIR, with each process recording the prompts it sampled; the main process writes them all to argv[1]."""
import json
import sys

from helpers import config, distributed, rloo

sampled = []
real_sample = rloo.sample_completions


def recording_sample(model, tokenizer, prompts, *args):
    sampled.append([p[-1]["content"] for p in prompts])
    return real_sample(model, tokenizer, prompts, *args)


rloo.sample_completions = recording_sample
result = rloo.run_rloo(config.get_config("smoke", rloo__max_steps=2, rloo__save_every=2, rloo__eval_every=2),
                       start="sft_masked")
per_process = distributed.gather_objects(sampled)
if distributed.is_main():
    with open(sys.argv[1], "w") as f:
        json.dump({"prompts": per_process, "history": result["history"]}, f)
distributed.barrier()       # the file is written before any process leaves
distributed.finish()        # the process group closed before the interpreter exits (see finish: the abort at exit)
