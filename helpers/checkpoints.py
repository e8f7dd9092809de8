"""Resumable checkpoints of the training loop: atomic save (weights, optimizer, scheduler, RNG state, run config,
checksums), loading weights back, and what a stage folder holds — nothing, a run to resume, a finished run to keep,
or something unusable, named with its fix. Imports: modeling."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch

from .modeling import save_model

CHECKSUMS = "checksums.json"      # written last: a folder with it is complete


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is — corrupt, foreign, or a run of another config. The message names
    the file and the fix; nothing is deleted or overwritten behind the user's back."""


def fix_hint(stage_dir: Path) -> str:
    return (f"rerun with restart=True (`--restart` on the command line, RESTART=1 for the notebooks) or delete "
            f"{stage_dir}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def save_checkpoint(model, tokenizer, stage_dir: Path, state: dict, optimizer, scheduler, run_config: dict,
                    state_dict: dict | None = None):
    """Atomic: write everything to a temporary sibling, then swap it in, so a crash never leaves half a checkpoint.
    The checksums of the weights and the training state go last; loading checks them. `optimizer` is the optimizer
    or its state dict already gathered (FSDP); `state_dict` the model's weights when they live elsewhere (FSDP)."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir.with_name(stage_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer, extra={"run_config.json": run_config}, state_dict=state_dict)
    rng = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    optimizer_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    torch.save({**state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(), **rng},
               tmp / "training_state.pt")
    files = weight_files(tmp) + [tmp / "training_state.pt", tmp / "run_config.json"]
    (tmp / CHECKSUMS).write_text(json.dumps({p.name: sha256(p) for p in files}, indent=1))
    old = stage_dir.with_name(stage_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        stage_dir.rename(old)
    tmp.rename(stage_dir)
    shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(folder: Path) -> None:
    """Raise CheckpointError if a file no longer matches the checksum it was saved with (truncated, flipped bytes,
    replaced). Folders saved without checksums (the initial model, older runs) are not checked."""
    folder = Path(folder)
    listed = folder / CHECKSUMS
    if not listed.exists():
        return
    try:
        expected = json.loads(listed.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{listed} is unreadable ({err}); {fix_hint(folder)}") from None
    for name, digest in expected.items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"{path} is missing from the checkpoint; {fix_hint(folder)}")
        if sha256(path) != digest:
            raise CheckpointError(f"{path} does not match the checksum it was saved with (corrupt or changed "
                                  f"since); {fix_hint(folder)}")


def recover_interrupted_save(stage_dir: Path) -> None:
    """A crash inside `save_checkpoint` leaves temporaries beside the stage folder. Put back the newest complete
    checkpoint (one with its checksums) if the stage folder itself is gone, and remove every leftover — each is a
    full copy of the model."""
    stage_dir = Path(stage_dir)
    leftovers = sorted(stage_dir.parent.glob(stage_dir.name + ".tmp-*"), key=lambda p: p.stat().st_mtime)
    old = stage_dir.with_name(stage_dir.name + ".old")
    if not stage_dir.exists():
        complete = [p for p in leftovers if (p / CHECKSUMS).exists()]       # checksums go last: these are whole
        if complete:
            complete[-1].rename(stage_dir)        # the newest
        elif old.exists():
            old.rename(stage_dir)                 # the previous checkpoint, whole before the swap began
    for path in leftovers + [old]:
        if path.exists() and path != stage_dir:
            shutil.rmtree(path, ignore_errors=True)


def load_weights_into(model, ckpt_dir: Path) -> None:
    """Weights of a saved checkpoint into a model of the same architecture; a corrupt or foreign file is named."""
    from safetensors.torch import load_file
    ckpt_dir = Path(ckpt_dir)
    verify_checkpoint(ckpt_dir)
    try:
        if (ckpt_dir / "adapter_model.safetensors").exists():
            from peft import set_peft_model_state_dict
            set_peft_model_state_dict(model, load_file(ckpt_dir / "adapter_model.safetensors"))
            return
        state = {}
        for shard in sorted(ckpt_dir.glob("model*.safetensors")):
            state.update(load_file(shard))
    except Exception as err:                  # safetensors raises its own error types, without the path
        raise CheckpointError(f"{ckpt_dir}: the weights cannot be read ({type(err).__name__}: {err}); "
                              f"{fix_hint(ckpt_dir)}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{ckpt_dir} holds another model's weights (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}); {fix_hint(ckpt_dir)}")


def read_run(stage_dir: Path) -> tuple[dict, dict]:
    """(training state, run config) of a saved run — checksums verified; unreadable files named with the fix."""
    stage_dir = Path(stage_dir)
    verify_checkpoint(stage_dir)
    state_file, config_file = stage_dir / "training_state.pt", stage_dir / "run_config.json"
    try:
        state = torch.load(state_file, weights_only=True)
    except Exception as err:                  # truncated zip, a pickle with code in it (refused), garbage
        raise CheckpointError(f"{state_file} is unreadable ({type(err).__name__}); {fix_hint(stage_dir)}") from None
    try:
        saved_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file} is missing or unreadable ({type(err).__name__}); "
                              f"{fix_hint(stage_dir)}") from None
    if not isinstance(state, dict) or not isinstance(saved_config, dict) or "step" not in state:
        raise CheckpointError(f"{stage_dir} does not hold a training run of this project; {fix_hint(stage_dir)}")
    return state, saved_config


def config_differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """'sft.lr: 0.001 → 0.002' for every leaf that differs."""
    out = []
    for key in sorted(set(saved) | set(wanted), key=str):
        a, b = saved.get(key, "(absent)"), wanted.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} → {b}")
    return out


def stage_status(stage_dir: Path, run_config: dict) -> tuple[str, dict | None]:
    """What `stage_dir` holds for a run of `run_config`: ("fresh", None), ("resume", state) — an unfinished run of
    the same config — or ("finished", state) — a finished one, kept rather than trained again. Anything else (a
    corrupt checkpoint, a run of another config) raises CheckpointError with the fix."""
    stage_dir = Path(stage_dir)
    recover_interrupted_save(stage_dir)
    if not stage_dir.exists():
        return "fresh", None
    if not (stage_dir / "training_state.pt").exists():
        if any(stage_dir.iterdir()):
            raise CheckpointError(f"{stage_dir} holds files but no training_state.pt (not a run of this "
                                  f"project, or an interrupted copy); {fix_hint(stage_dir)}")
        return "fresh", None
    state, saved_config = read_run(stage_dir)
    wanted = json.loads(json.dumps(run_config, default=str))      # tuples -> lists, as saved
    if state.get("finished"):      # a finished run is kept whatever number of processes trained it (the notebooks)
        saved_config, wanted = ({k: v for k, v in c.items() if k != "distributed"} for c in (saved_config, wanted))
    if saved_config != wanted:
        kind = "a finished" if state.get("finished") else "an unfinished"
        changes = "; ".join(config_differences(saved_config, wanted)[:4])
        raise CheckpointError(f"{stage_dir} holds {kind} run of another config ({changes}); {fix_hint(stage_dir)}")
    state["dir"] = stage_dir
    return ("finished" if state.get("finished") else "resume"), state


def keeps_events(stage_dir: Path, run_config: dict, restart: bool = False) -> bool:
    """Whether a stage's TensorBoard events belong to a run that goes on (resumed) or stays (finished): then a
    logger must not clear them. Unusable checkpoints say False here and raise in the training loop."""
    if restart:
        return False
    try:
        return stage_status(stage_dir, run_config)[0] != "fresh"
    except CheckpointError:
        return False


def load_history(stage_dir) -> list[dict]:
    """The evaluation history saved with a run's checkpoint."""
    return read_run(stage_dir)[0]["history"]
