"""Resumable checkpoints of the training loop: atomic save (weights, optimizer, scheduler, RNG state, run
config), loading weights back, and deciding whether a folder holds a run to resume. Imports: modeling."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from .modeling import save_model


def save_checkpoint(model, tokenizer, stage_dir: Path, state: dict, optimizer, scheduler, run_config: dict):
    """Atomic: write everything to a temporary sibling, then swap it in, so a crash never leaves half a checkpoint."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir.with_name(stage_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer, extra={"run_config.json": run_config})
    rng = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng},
               tmp / "training_state.pt")
    old = stage_dir.with_name(stage_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        stage_dir.rename(old)
    tmp.rename(stage_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_weights_into(model, ckpt_dir: Path) -> None:
    from safetensors.torch import load_file
    if (ckpt_dir / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(ckpt_dir / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(ckpt_dir.glob("model*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir} does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")


def resumable_state(stage_dir: Path, run_config: dict) -> dict | None:
    """The saved training state if stage_dir holds an unfinished run of the same config, else None."""
    stage_dir = Path(stage_dir)
    if not stage_dir.exists() and stage_dir.with_name(stage_dir.name + ".old").exists():
        stage_dir = stage_dir.with_name(stage_dir.name + ".old")     # crashed between the two renames
    state_file = stage_dir / "training_state.pt"
    if not state_file.exists():
        return None
    state = torch.load(state_file, weights_only=True)
    saved_config = json.loads((stage_dir / "run_config.json").read_text())
    run_config = json.loads(json.dumps(run_config, default=str))     # tuples -> lists, as saved
    if state.get("finished") or saved_config != run_config:
        return None
    state["dir"] = stage_dir
    return state


def load_history(stage_dir) -> list[dict]:
    """The evaluation history saved with a run's checkpoint."""
    return torch.load(Path(stage_dir) / "training_state.pt", weights_only=True)["history"]
