"""The command line (`python -m helpers …`): build the data, train any stage, chat, run a notebook headless.
The top of the package: it may import every module."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .config import get_config, out_path
from .distributed import is_main, refuse_more_than_one
from .data import prepare_data
from .sft import SFT_STAGES, build_initial_model, run_sft
from .dpo import run_dpo
from .reward_model import run_reward_model
from .rloo import run_rloo
from .rft import run_rft
from .experiment import run_experiment, write_experiment
from .chat import chat_cli

# what `train --stage` accepts, in pipeline order: each stage's start (sft_masked for DPO and the reward model, dpo for
# RLOO and RFT) comes before it
TRAIN_STAGES = (*SFT_STAGES, "dpo", "reward_model", "rloo", "rft")


def run_notebook(path, timeout: int | None = None) -> Path:
    """Execute a notebook headless (cwd = its folder); the executed copy goes to outputs/<profile>/notebooks/,
    so the committed notebook stays without outputs. `timeout` (seconds per cell, 0 = none) defaults to the
    profile's `notebook_cell_timeout`: 30 minutes for tiny, none for qwen, whose cells train for hours."""
    import nbformat
    from nbclient import NotebookClient
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    if timeout is None:
        timeout = get_config().notebook_cell_timeout
    NotebookClient(nb, timeout=timeout or None, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    executed = out_path("outputs", get_config(), "notebooks", path.name)
    executed.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, executed)
    print(f"{path.name}: ran in {time.perf_counter() - started:.0f} s; executed copy: {executed}")
    return executed


def parse_overrides(pairs: list[str]) -> dict:
    """["sft__batch_size=4", "dpo__beta=0.2"] -> get_config's keyword overrides; a value is JSON if it parses."""
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected SECTION__FIELD=VALUE, e.g. sft__batch_size=4")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return overrides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="build/download the datasets and the initial model of a profile")
    p.add_argument("--profile", default=None)
    p = sub.add_parser("train", help="train one stage")
    p.add_argument("--stage", required=True, choices=TRAIN_STAGES)
    p.add_argument("--profile", default=None)
    p.add_argument("--restart", action="store_true",
                   help="train again even if the stage folder holds a finished run of the same config")
    p.add_argument("--set", action="append", default=[], metavar="SECTION__FIELD=VALUE",
                   help="override a config field, e.g. --set sft__batch_size=4 (VALUE read as JSON, else text)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop after this many optimizer steps; the same command later resumes from the last "
                        "checkpoint (save_every)")
    p = sub.add_parser("experiment", help="the masked-vs-unmasked experiment: seeds, the control, the grid "
                                          "(resumable; results under evaluation_results/<profile>/sft_sweep)")
    p.add_argument("--profile", default=None)
    p = sub.add_parser("chat", help="chat with a checkpoint: interactive, or one prompt and exit")
    p.add_argument("--model", required=True, help="a Hugging Face model directory")
    p.add_argument("prompt", nargs="?", default=None)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p = sub.add_parser("run-notebook", help="execute a notebook headless")
    p.add_argument("path")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds per cell (0 = no limit); default: the profile's notebook_cell_timeout")
    args = parser.parse_args(argv)

    if args.command != "train":       # only training scales out; the rest would race N copies on the same files
        refuse_more_than_one(f"`{args.command}`")
    if args.command == "data":
        cfg = get_config(args.profile)
        for name, folder in prepare_data(cfg).items():
            print(f"{name}: {folder}")
        print(f"initial model: {build_initial_model(cfg)}")
    elif args.command == "train":
        cfg = get_config(args.profile, **parse_overrides(args.set))
        cfg.restart = cfg.restart or args.restart
        stop = args.stop_after_steps
        runners = {"dpo": lambda: run_dpo(cfg, stop_after_steps=stop),
                   "reward_model": lambda: run_reward_model(cfg, stop_after_steps=stop),
                   "rloo": lambda: run_rloo(cfg, stop_after_steps=stop), "rft": lambda: run_rft(cfg)}
        result = runners[args.stage]() if args.stage in runners else run_sft(cfg, args.stage, SFT_STAGES[args.stage],
                                                                             stop_after_steps=stop)
        if is_main():               # under N processes, said once
            last = f"; last evaluation {result['history'][-1]}" if result.get("history") else ""
            print(f"{args.stage}: saved to {result['dir']}{last}")
    elif args.command == "experiment":
        cfg = get_config(args.profile)
        for kind, path in write_experiment(cfg, run_experiment(cfg)).items():
            print(f"{kind}: {path if not isinstance(path, dict) else path['md']}")
    elif args.command == "chat":
        return chat_cli(args.model, args.prompt, args.temperature, args.max_new_tokens)
    elif args.command == "run-notebook":
        run_notebook(args.path, args.timeout)
    return 0
