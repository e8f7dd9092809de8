"""The command line (`python -m helpers …`): one subcommand each — build the data, train any stage, the seeded
experiment, the robustness chain, chat, run a notebook headless (`runner`). The top of the package: it may import
every module."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .config import ConfigError, ProjectError, device, out_path
from .config_file import config_file_overrides, config_yaml, get_config
from .checkpoints import run_progress
from .distributed import is_main, refuse_more_than_one
from .data import prepare_data
from .modeling import quiet_output
from .sft import SFT_STAGES, build_initial_model, run_sft
from .dpo import run_dpo
from .reward_model import run_reward_model
from .rloo import run_rloo
from .rft import run_rft
from .experiment import run_experiment, write_experiment
from .robustness import run_robustness, write_robustness
from .chat import chat_cli
from .runner import NotebookFailed, run_notebook

# what `train --stage` accepts, in pipeline order: each stage's start (sft_masked for DPO and the reward model, dpo for
# RLOO and RFT) comes before it
TRAIN_STAGES = (*SFT_STAGES, "dpo", "reward_model", "rloo", "rft")


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


def shard_arg(text: str) -> tuple[int, int]:
    """--shard K/N: the K-th of N processes sharing the experiment (0 ≤ K < N)."""
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 0 <= K < N, e.g. 0/2")
    return int(k), int(n)


def count_arg(low: int):
    """An argparse type: a whole number ≥ low, refused with the reason otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be ≥ {low}")
        return value
    return parse


def time_arg(text: str) -> float:
    """--started: seconds since the epoch, a real moment (not nan, not in the future)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= time.time() + 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a moment in the past (seconds since the epoch)")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (`error: …` and where to read more) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"error: {self.prog.removeprefix('python -m helpers ')}: {message} (`{self.prog} --help` "
                     "lists the arguments)\n")


def config_arg(parser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a YAML file of overrides on top of the profile (`python -m helpers config` prints a "
                             "starting one); --set goes on top of it")


def settings_args(parser) -> None:
    """--profile, --set and --config: what a command's config is made of."""
    parser.add_argument("--profile", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION__FIELD=VALUE",
                        help="override a config field (as for train)")
    config_arg(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m helpers", description=__doc__.split("\n")[0],
                                     epilog="Exit codes: 0 done, 1 a run failed, 2 bad input (config, data, "
                                            "checkpoints, arguments), 130 interrupted.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="build/download the datasets and the initial model of a profile")
    p.add_argument("--profile", default=None)
    p.add_argument("--datasets-only", action="store_true", help="build the datasets, not the initial model")
    p.add_argument("--set", action="append", default=[], metavar="SECTION__FIELD=VALUE",
                   help="override a config field (as for train)")
    config_arg(p)
    p = sub.add_parser("train", help="train one stage")
    p.add_argument("--stage", required=True, choices=TRAIN_STAGES)
    p.add_argument("--profile", default=None)
    p.add_argument("--restart", action="store_true",
                   help="train again even if the stage folder holds a finished run of the same config")
    p.add_argument("--set", action="append", default=[], metavar="SECTION__FIELD=VALUE",
                   help="override a config field, e.g. --set sft__batch_size=4 (VALUE read as JSON, else text)")
    config_arg(p)
    p.add_argument("--stop-after-steps", type=count_arg(1), default=None,
                   help="stop after this many optimizer steps; the same command later resumes from the last "
                        "checkpoint (save_every)")
    p = sub.add_parser("experiment", help="the masked-vs-unmasked experiment: seeds, the control, the grid "
                                          "(resumable; results under evaluation_results/<profile>/sft_sweep)")
    p.add_argument("--profile", default=None)
    p.add_argument("--shard", default=None, metavar="K/N", type=shard_arg,
                   help="run only every N-th cell from the K-th (N processes share the grid); writes no results")
    config_arg(p)
    p = sub.add_parser("robustness", help="the chain for several base models (resumable; results under "
                                          "evaluation_results/<profile>/robustness)")
    p.add_argument("--profile", default=None)
    p.add_argument("--shard", default=None, metavar="K/N", type=shard_arg,
                   help="run only every N-th seed from the K-th (N processes share them); writes no results")
    p.add_argument("--tuning", action="store_true",
                   help="the tuning seeds (robustness.tuning_seeds) instead of the reported ones; results under "
                        "robustness_tuning")
    p.add_argument("--set", action="append", default=[], metavar="SECTION__FIELD=VALUE",
                   help="override a config field (as for train)")
    config_arg(p)
    p.add_argument("--name", default=None,
                   help="write the round under evaluation_results/<profile>/NAME… (default: robustness, or "
                        "robustness_tuning): a candidate setting's round beside the committed one")
    p = sub.add_parser("config", help="print a profile's whole config as a commented YAML file, a starting point "
                                      "for --config FILE")
    settings_args(p)
    p = sub.add_parser("iterate", help="another DPO round from the latest model: its samples chosen over the previous "
                                       "stage's (pipeline b), against SPIN's rule at the same number of pairs")
    settings_args(p)
    p.add_argument("--previous", default="dpo", help="the previous stage's checkpoint (default: dpo)")
    p.add_argument("--latest", default="final", help="the latest checkpoint, the round's start (default: final)")
    p.add_argument("--rule", default="latest", choices=["latest", "latest, judged"],
                   help="the rule whose pair count SPIN's round trains at (every rule trains its own round)")
    p.add_argument("--prompts", type=count_arg(1), default=800, help="training prompts sampled by both models")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the round's pairs (default 2)")
    p.add_argument("--steps", type=count_arg(1), default=None, help="the round's DPO steps (instead of --epochs)")
    p = sub.add_parser("chat", help="chat with a checkpoint: interactive, or one prompt and exit")
    p.add_argument("--model", required=True, help="a Hugging Face model directory")
    p.add_argument("prompt", nargs="?", default=None)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p = sub.add_parser("serve", help="serve a checkpoint behind an OpenAI-compatible chat-completions endpoint "
                                     "(transformers' server, on 127.0.0.1)")
    p.add_argument("--model", default=None, help="a model folder (default: checkpoints/<profile>/final)")
    p.add_argument("--profile", default=None)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=count_arg(1), default=8000)
    p = sub.add_parser("run-notebook", help="execute a notebook headless")
    p.add_argument("path")
    p.add_argument("--timeout", type=count_arg(0), default=None,
                   help="seconds per cell (0 = no limit); default: the profile's notebook_cell_timeout")
    p.add_argument("--index", type=count_arg(1), default=None,
                   help="its place in a run of several notebooks (make demo)")
    p.add_argument("--total", type=count_arg(1), default=None, help="how many notebooks that run has")
    config_arg(p)
    p.add_argument("--started", type=time_arg, default=None,
                   help="when that run started (seconds since the epoch)")
    return parser


def data_command(args) -> int:
    cfg = get_config(args.profile, args.config, **parse_overrides(args.set))
    for name, folder in prepare_data(cfg).items():
        print(f"{name}: {folder}")
    if not args.datasets_only:
        print(f"initial model: {build_initial_model(cfg)}")
    return 0


def train_command(args) -> int:
    cfg = get_config(args.profile, args.config, **parse_overrides(args.set))
    cfg.restart = cfg.restart or args.restart
    stop = args.stop_after_steps
    runners = {"dpo": lambda: run_dpo(cfg, stop_after_steps=stop),
               "reward_model": lambda: run_reward_model(cfg, stop_after_steps=stop),
               "rloo": lambda: run_rloo(cfg, stop_after_steps=stop), "rft": lambda: run_rft(cfg, stop_after_steps=stop)}
    result = runners[args.stage]() if args.stage in runners else run_sft(cfg, args.stage, SFT_STAGES[args.stage],
                                                                         stop_after_steps=stop)
    if not is_main():               # under N processes, said once
        return 0
    history = result.history
    progress = run_progress(result.dir) if result.dir.exists() else {"finished": False, "step": None}
    if progress.get("finished"):
        print(f"{args.stage}: saved to {result.dir}" + (f"; last evaluation {history[-1]}" if history else ""))
    elif progress.get("step") is not None:
        print(f"{args.stage}: stopped after {stop} steps; the checkpoint of step {progress['step']} is in "
              f"{result.dir}: the same command without --stop-after-steps resumes it")
    else:
        print(f"{args.stage}: stopped after {stop} steps, before its first checkpoint (save_every): nothing was "
              "saved, so the next run starts from the beginning")
    return 0


def config_command(args) -> int:
    print(config_yaml(get_config(args.profile, args.config, **parse_overrides(args.set))), end="")
    return 0


def experiment_command(args) -> int:
    cfg = get_config(args.profile, args.config)
    if args.shard:
        k, n = args.shard
        run_experiment(cfg, shard=(k, n))
        print(f"shard {k}/{n} done; `python -m helpers experiment` writes the results once every shard is")
        return 0
    for kind, path in write_experiment(cfg, run_experiment(cfg)).items():
        print(f"{kind}: {path if not isinstance(path, dict) else path['md']}")
    return 0


def robustness_command(args) -> int:
    cfg = get_config(args.profile, args.config, **parse_overrides(args.set))
    seeds = cfg.robustness.tuning_seeds if args.tuning else cfg.robustness.seeds
    name = args.name or ("robustness_tuning" if args.tuning else "robustness")
    if args.shard:
        run_robustness(cfg, seeds, shard=args.shard, name=name)
        print(f"shard {args.shard[0]}/{args.shard[1]} done; `python -m helpers robustness` writes the results")
        return 0
    results = run_robustness(cfg, seeds, name=name)
    for kind, path in write_robustness(cfg, results, name).items():
        print(f"{kind}: {path if not isinstance(path, dict) else path['md']}")
    return 0


def chat_command(args) -> int:
    return chat_cli(args.model, args.prompt, args.temperature, args.max_new_tokens)


def iterate_command(args) -> int:
    from .iterate import RoundSettings, run_round
    cfg = get_config(args.profile, args.config, **parse_overrides(args.set))
    result = run_round(cfg, args.previous, args.latest, RoundSettings(prompts=args.prompts, epochs=args.epochs,
                                                                            steps=args.steps),
                       rule=args.rule)
    print(result["table"].to_string(index=False))
    print(f"md: {result['paths']['md']}")
    return 0


def serve_command(args) -> int:
    from .serve import serve
    model = args.model or out_path("checkpoints", get_config(args.profile), "final")
    serve(model, host=args.host, port=args.port, device=str(device()))
    return 0


def run_notebook_command(args) -> int:
    if args.index is not None and args.total is not None and args.index > args.total:
        raise ConfigError(f"--index {args.index} is beyond --total {args.total}")
    if args.config or os.environ.get("CONFIG"):       # the kernel reads $CONFIG; it runs in the notebook's folder
        path = Path(args.config or os.environ["CONFIG"]).resolve()
        config_file_overrides(path)                    # a bad file fails here, in one line, before any kernel starts
        os.environ["CONFIG"] = str(path)
    try:
        run_notebook(args.path, args.timeout, args.index, args.total, args.started)
    except NotebookFailed as err:
        print(f"\nFAILED: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


COMMANDS = {"data": data_command, "train": train_command, "experiment": experiment_command, "config": config_command,
            "robustness": robustness_command, "iterate": iterate_command, "chat": chat_command, "serve": serve_command,
            "run-notebook": run_notebook_command}


def main(argv=None) -> int:
    """Run one subcommand. The project's own errors (ProjectError: config, data, checkpoints, a diverged run) and
    the operating system's (a read-only folder, a full disk) print one line, `error: …`, and exit 2 (bad input)
    or 1 (a failed run); --debug shows the traceback. Anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    quiet_output()                  # Hugging Face's own progress bars and info logs (loading weights) off
    try:
        if args.command not in ("train",):      # only training scales out; the rest would race N copies on files
            refuse_more_than_one(f"`{args.command}`")
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ProjectError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 1)


def one_line(err: BaseException) -> str:
    """An error as one line: its message (an OSError's with the file it names), or its type when it has none."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, ProjectError) else f"{type(err).__name__}: {text}"
