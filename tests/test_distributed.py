"""Several processes: the list sharing, and — under `accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo),
marked `distributed` (`make test-distributed`, ~3 minutes on 2 cores) — SFT and DPO after k steps equal to one process
with the doubled batch, RLOO with each process sampling its own prompts, a resume under 2 processes, and every stage
of `train` run under 1 and under 2 processes (finished, one writer; one process under accelerate equal to plain
`python -m helpers`)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import cli, config, distributed, training

ACCELERATE = Path(sys.executable).parent / "accelerate"
# Weights after k steps: N processes × batch B against one process × batch N·B. Both sum the same per-example
# gradients in another order (and DDP averages in float32), so they agree to float rounding, ~1e-7 here.
TOLERANCE = 1e-5


def test_shares_cover_the_list_once_and_gather_back_in_order():
    items = list(range(11))
    parts = [distributed.share(items, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == items and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.interleave(parts, len(items)) == items


def test_one_process_touches_nothing():
    """Not launched: no Accelerator, the seed and the run config unchanged, sums and gathers are the value itself."""
    assert not distributed.launched() and distributed.accelerator() is None
    assert distributed.num_processes() == 1 and distributed.is_main()
    assert distributed.process_seed(7) == 7
    run_config = {"sft": {"batch_size": 8}}
    assert distributed.run_config_of(run_config) is run_config
    assert distributed.sum_over_processes(2.5) == 2.5 and distributed.gather_shares([1, 2], 2) == [1, 2]
    state = torch.get_rng_state()
    distributed.seed_this_process(123)
    assert torch.equal(torch.get_rng_state(), state)
    assert training.my_share([4, 5, 6]) == ([4, 5, 6], True)


# ---- several processes, launched -------------------------------------------------------------------------------

def launch(output: Path, args: list[str], processes: int | None, script: str | None = None) -> str:
    """`python -m helpers …` (processes None), or the same under accelerate launch with `processes` CPU processes."""
    env = {**os.environ, "OUTPUT_DIR": str(output), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(config.REPO_ROOT)}
    target = [script] if script else ["-m", "helpers"]
    if processes is None:
        command = [sys.executable, *target, *args]
    else:
        how = ["--multi_gpu"] if processes > 1 else ["--cpu"]
        command = [str(ACCELERATE), "launch", *how, "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", *target, *args]
    done = subprocess.run(command, cwd=config.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The smoke profile's data and initial model, built once."""
    root = tmp_path_factory.mktemp("prepared")
    launch(root, ["data", "--profile", "smoke"], None)
    return root


def workspace(prepared: Path, tmp_path: Path, name: str, checkpoints=("initial",)) -> Path:
    """A fresh OUTPUT_DIR holding the prepared data and the named checkpoints."""
    out = tmp_path / name
    shutil.copytree(prepared / "data", out / "data")
    for stage in checkpoints:
        shutil.copytree(prepared / "checkpoints" / "smoke" / stage, out / "checkpoints" / "smoke" / stage)
    return out


def weights(output: Path, stage: str) -> dict:
    from safetensors.torch import load_file
    return load_file(output / "checkpoints" / "smoke" / stage / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def train(output: Path, stage: str, processes: int | None, *settings: str, stop: int | None = None) -> str:
    args = ["train", "--stage", stage, "--profile", "smoke"] + [a for s in settings for a in ("--set", s)]
    return launch(output, args + (["--stop-after-steps", str(stop)] if stop else []), processes)


@pytest.fixture(scope="module")
def sft_one_process(prepared, tmp_path_factory) -> Path:
    """SFT in one process with batch 8 (smoke's default); its checkpoint is also DPO's and RLOO's start."""
    out = workspace(prepared, tmp_path_factory.mktemp("sft1"), "out")
    train(out, "sft_masked", None)
    shutil.copytree(out / "checkpoints" / "smoke" / "sft_masked", prepared / "checkpoints" / "smoke" / "sft_masked")
    return out


@pytest.mark.distributed
def test_sft_two_processes_equal_one_process_with_the_doubled_batch(prepared, sft_one_process, tmp_path):
    two = workspace(prepared, tmp_path, "two")
    train(two, "sft_masked", 2, "sft__batch_size=4")
    one, both = weights(sft_one_process, "sft_masked"), weights(two, "sft_masked")
    initial = weights(two, "initial")
    difference = max_difference(one, both)
    print(f"SFT: max |2 processes − 1 process| = {difference:.2e}; max change in training "
          f"{max_difference(one, initial):.2e}")
    assert difference < TOLERANCE
    assert max_difference(one, initial) > 100 * TOLERANCE        # it trained: the comparison can fail
    # the comparison sees the batch: one process with batch 4 ends elsewhere
    alone = workspace(prepared, tmp_path, "alone")
    train(alone, "sft_masked", 1, "sft__batch_size=4")
    assert max_difference(weights(alone, "sft_masked"), one) > 100 * TOLERANCE


def every_stage(prepared: Path, tmp_path: Path, processes: int) -> Path:
    """Every stage of `python -m helpers train`, in pipeline order, from the initial model, in one launch of
    `processes` processes (tests/distributed_stages.py); asserts each finished and only the main process wrote."""
    out = workspace(prepared, tmp_path, f"stages{processes}")
    stdout = launch(out, [], processes, script=str(Path(__file__).with_name("distributed_stages.py")))
    smoke = out / "checkpoints" / "smoke"
    for stage in cli.TRAIN_STAGES:
        assert stdout.count(f"{stage}: saved to ") == 1                # said once, by the main process
        events = list((out / "tensorboard_events" / "smoke" / stage).iterdir())
        assert len(events) == 1, events                                # one writer
        run_config = json.loads((smoke / stage / "run_config.json").read_text())
        state = torch.load(smoke / stage / "training_state.pt", weights_only=True)
        if stage == "rft":          # saved at each round's end (its curve, every process's streams); no optimizer
            assert state["history"][-1]["round"] == 2 and state["optimizer"] is None
            assert not (smoke / "rft.round").exists()
        assert state["finished"] and len(state.get("process_rng", [None])) == processes
        assert run_config.get("distributed") == ({"processes": 2, "fsdp": False} if processes > 1 else None)
    assert max_difference(weights(out, "rft"), weights(out, "dpo")) > 0      # RFT's rounds trained (it kept some)
    return out


@pytest.mark.distributed
def test_every_stage_runs_under_one_process_and_sft_equals_plain_python(prepared, sft_one_process, tmp_path):
    out = every_stage(prepared, tmp_path, 1)
    assert max_difference(weights(out, "sft_masked"), weights(sft_one_process, "sft_masked")) == 0.0


@pytest.mark.distributed
def test_every_stage_runs_under_two_processes(prepared, tmp_path):
    every_stage(prepared, tmp_path, 2)


@pytest.mark.distributed
def test_dpo_two_processes_equal_one_process_with_the_doubled_batch(prepared, sft_one_process, tmp_path):
    """Reference log-probs computed per shard and gathered; no on-policy pairs (their samples differ by process)."""
    runs = {}
    for processes, batch in ((None, 8), (2, 4)):
        out = runs[processes] = workspace(prepared, tmp_path, f"dpo{processes}", ("initial", "sft_masked"))
        train(out, "dpo", processes, f"dpo__batch_size={batch}", "dpo__onpolicy_countdown_prompts=0")
    one, both = weights(runs[None], "dpo"), weights(runs[2], "dpo")
    difference = max_difference(one, both)
    print(f"DPO: max |2 processes − 1 process| = {difference:.2e}")
    assert difference < TOLERANCE
    assert max_difference(one, weights(runs[None], "sft_masked")) > 100 * TOLERANCE


@pytest.mark.distributed
def test_rloo_processes_sample_different_prompts(prepared, sft_one_process, tmp_path):
    out = workspace(prepared, tmp_path, "rloo", ("initial", "sft_masked"))
    launch(out, [str(tmp_path / "sampled.json")], 2, script=str(Path(__file__).with_name("distributed_rloo.py")))
    record = json.loads((tmp_path / "sampled.json").read_text())
    first, second = ([p for batch in prompts for p in batch] for prompts in record["prompts"])
    assert first and second and not set(first) & set(second)     # each process its own share of every step
    state = torch.load(out / "checkpoints" / "smoke" / "rloo" / "training_state.pt", weights_only=True)
    assert state["finished"] and len(state["process_rng"]) == 2
    assert not torch.equal(state["process_rng"][0]["torch_rng"], state["process_rng"][1]["torch_rng"])
    assert record["history"][-1]["step"] == 2


@pytest.mark.distributed
def test_a_resume_under_two_processes_finishes_with_the_same_weights(prepared, tmp_path):
    whole, resumed = workspace(prepared, tmp_path, "whole"), workspace(prepared, tmp_path, "resumed")
    train(whole, "sft_masked", 2, "sft__batch_size=4")
    train(resumed, "sft_masked", 2, "sft__batch_size=4", stop=3)      # smoke saves every 3 steps
    state = torch.load(resumed / "checkpoints" / "smoke" / "sft_masked" / "training_state.pt", weights_only=True)
    assert state["step"] == 3 and not state["finished"]
    assert "resuming sft_masked from step 3" in train(resumed, "sft_masked", 2, "sft__batch_size=4")
    assert max_difference(weights(whole, "sft_masked"), weights(resumed, "sft_masked")) == 0.0
