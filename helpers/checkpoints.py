"""Resumable checkpoints of the training loop: atomic save (weights, optimizer, scheduler, RNG state, run config,
checksums), loading weights back, and what a stage folder holds — nothing, a run to resume, a finished run to keep,
or something unusable, named with its fix. Imports: modeling."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch

from .config import ProjectError
from .config_file import with_added_fields
from .modeling import save_model

CHECKSUMS = "checksums.json"      # written last: a folder with it is complete
PROGRESS = "progress.json"        # {"step", "finished"} of the run that saved it

# Where each checkpoint a stage can start from comes from: the fix named when it is missing or unfinished.
MADE_BY = {"initial": "00_data (python -m helpers data)", "final": "05_evaluation (it publishes the chain's end)"}


# A run config's key for the whole resolved config as YAML text: saved as config.yml beside run_config.json (what was
# run, readable, and usable as --config FILE), never compared — a run is kept or resumed by its own section's settings
RESOLVED = "resolved_config"


def run_record_files(run_config: dict) -> dict:
    """The files a run config is saved as: run_config.json (what stage_status compares) and config.yml."""
    record = {k: v for k, v in run_config.items() if k != RESOLVED}
    return {"run_config.json": record, **({"config.yml": run_config[RESOLVED]} if RESOLVED in run_config else {})}


class CheckpointError(ProjectError, RuntimeError):
    """A checkpoint that cannot be used as it is — corrupt, foreign, or a run of another config. The message names
    the file and the fix; nothing is deleted or overwritten behind the user's back."""


@contextlib.contextmanager
def stage_lock(stage_dir: Path):
    """Only one process trains a stage folder at a time: a second `train` of the same stage and output folder is
    refused at once, naming the folder, instead of both writing the same checkpoint and duplicate TensorBoard
    points. An OS file lock (flock): released by the operating system when the process ends, even killed."""
    stage_dir = Path(stage_dir)
    lock_path = stage_dir.with_name(stage_dir.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise CheckpointError(f"{stage_dir} is being trained by {holder}: wait for it to finish (or stop it), "
                                  "then run this again") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    or its state dict already gathered (FSDP), or None with `scheduler` None where a run resumes without them (RFT
    starts each round's optimizer afresh); `state_dict` the model's weights when they live elsewhere (FSDP)."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir.with_name(stage_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer, extra=run_record_files(run_config), state_dict=state_dict)
    rng = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    optimizer_state = optimizer if isinstance(optimizer, dict) or optimizer is None else optimizer.state_dict()
    torch.save({**state, "optimizer": optimizer_state, "scheduler": scheduler and scheduler.state_dict(), **rng},
               tmp / "training_state.pt")
    write_checksums(tmp, progress={"step": state["step"], "finished": bool(state.get("finished"))})
    swap_in(tmp, stage_dir)


def write_checksums(folder: Path, progress: dict | None = None) -> None:
    """checksums.json (last: a folder with it is complete) over the weights, the training state and the run config,
    and `progress.json` ({"step", "finished"}) beside them — what a later stage reads to know that this one is
    finished without unpickling its optimizer state. A plain model (the initial one, `final`) is finished."""
    folder = Path(folder)
    (folder / PROGRESS).write_text(json.dumps(progress or {"step": None, "finished": True}))
    files = weight_files(folder) + [folder / name for name in ("training_state.pt", "run_config.json", PROGRESS)
                                    if (folder / name).exists()]
    (folder / CHECKSUMS).write_text(json.dumps({p.name: sha256(p) for p in files}, indent=1))


def swap_in(tmp: Path, stage_dir: Path) -> None:
    """Put a complete folder written beside `stage_dir` in its place: the old one is renamed away first and removed
    last, so a crash leaves either the old folder or the new one (recover_interrupted_save tidies up)."""
    old = stage_dir.with_name(stage_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        stage_dir.rename(old)
    tmp.rename(stage_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_finished_model(model, tokenizer, stage_dir: Path, extra: dict | None = None) -> Path:
    """A finished model without training state (the initial model, RFT's result), atomically and with checksums."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir.with_name(stage_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer, extra=extra)
    write_checksums(tmp)
    swap_in(tmp, stage_dir)
    return stage_dir


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


def made_by(name: str) -> str:
    """How a checkpoint of this name is made: its notebook and command."""
    if name in MADE_BY:
        return MADE_BY[name]
    notebook = {"sft_masked": "01_sft_masked", "sft_unmasked": "02_sft_unmasked", "dpo": "03_dpo",
                "reward_model": "03_dpo", "rloo": "04_rloo", "rft": "04_rloo"}.get(Path(name).name)
    command = f"python -m helpers train --stage {Path(name).name}"
    return f"{notebook} ({command})" if notebook else command


def weights_fingerprint(folder: Path) -> str:
    """The exact weights a checkpoint holds, as 16 hex digits: a hash of its weight files' SHA-256 — taken from its
    checksums (verified first) where it has them, computed otherwise. The same weights give the same fingerprint
    wherever the folder is copied; a retrained stage gives another."""
    folder = Path(folder)
    verify_checkpoint(folder)
    listed = folder / CHECKSUMS
    digests = json.loads(listed.read_text()) if listed.exists() else {}
    files = weight_files(folder)
    if not files:
        raise CheckpointError(f"{folder} holds no weights (*.safetensors); {fix_hint(folder)}")
    weights = {p.name: digests.get(p.name) or sha256(p) for p in files}
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16]


def run_progress(folder: Path) -> dict:
    """{"step", "finished"} of the run that saved `folder`: from progress.json, else its training state (a
    checkpoint saved before progress.json existed); a folder with weights and neither is a plain, finished model."""
    folder = Path(folder)
    if (folder / PROGRESS).exists():
        try:
            return json.loads((folder / PROGRESS).read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{folder / PROGRESS} is unreadable ({err}); {fix_hint(folder)}") from None
    if (folder / "training_state.pt").exists():
        state = read_run(folder)[0]
        return {"step": state["step"], "finished": bool(state.get("finished"))}
    return {"step": None, "finished": True}


def start_fingerprint(folder: Path, name: str | None = None) -> str:
    """The fingerprint of a checkpoint a stage starts from (or loads as its judge), after checking that it is there,
    whole (checksums) and finished. A stage never starts from an unfinished run: its results would silently rest on
    half-trained weights. Each failure is one CheckpointError naming the folder and the fix."""
    folder, name = Path(folder), name or Path(folder).name
    if not any((folder / f).exists() for f in ("config.json", "adapter_config.json")):
        raise CheckpointError(f"no `{name}` checkpoint in {folder}: make it first with {made_by(name)}")
    progress = run_progress(folder)
    if not progress.get("finished"):
        raise CheckpointError(f"{folder} holds an unfinished run of `{name}` (stopped at step {progress.get('step')}): "
                              f"finish it first — {made_by(name)} resumes it — then start the next stage")
    return weights_fingerprint(folder)


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


START_SUFFIX = "_weights"         # run-config keys holding the fingerprint of a checkpoint the run started from


def stage_status(stage_dir: Path, run_config: dict) -> tuple[str, dict | None]:
    """What `stage_dir` holds for a run of `run_config`: ("fresh", None), ("resume", state) — an unfinished run of
    the same config — ("finished", state) — a finished one, kept rather than trained again — or ("stale", state):
    a run of the same config from other start weights (`…_weights` keys: the stage it started from was trained
    again since), which must be trained again; state["changed"] names those keys. Anything else (a corrupt
    checkpoint, a run of another config) raises CheckpointError with the fix."""
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
    saved_config = with_added_fields(saved_config)
    wanted = json.loads(json.dumps(run_record_files(run_config)["run_config.json"], default=str))   # tuples → lists
    if state.get("finished"):      # a finished run is kept whatever number of processes trained it (the notebooks)
        saved_config, wanted = ({k: v for k, v in c.items() if k != "distributed"} for c in (saved_config, wanted))
    starts = {k for k in set(saved_config) | set(wanted) if k.endswith(START_SUFFIX)}
    without = lambda c: {k: v for k, v in c.items() if k not in starts}
    if saved_config != wanted and without(saved_config) == without(wanted):
        state["dir"], state["changed"] = stage_dir, [k for k in sorted(starts) if saved_config.get(k) != wanted.get(k)]
        return "stale", state
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
        return stage_status(stage_dir, run_config)[0] in ("resume", "finished")
    except CheckpointError:
        return False


def load_history(stage_dir) -> list[dict]:
    """The evaluation history saved with a run's checkpoint."""
    return read_run(stage_dir)[0]["history"]
