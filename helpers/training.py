"""The one training loop every stage uses; a stage plugs in its loss and collate function. Per-step loss
normalisation (gradient accumulation gives the same gradient), warmup + cosine, bf16 autocast on CUDA, resume.
Imports: config, batching, logger, checkpoints."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import torch

from .config import TrainConfig
from .modeling import autocast_context
from .batching import length_grouped_batches
from .logger import NullLogger
from .checkpoints import load_weights_into, resumable_state, save_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """lr multiplier: linear warmup to 1, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, tokenizer, examples: list[dict], cfg: TrainConfig, loss_fn, collate_fn, stage_dir,
          eval_fn=None, logger=None, run_config: dict | None = None, resume: bool = True,
          stop_after_steps: int | None = None, desc: str = "train", length_fn=None) -> list[dict]:
    """The one training loop. Returns the evaluation history [{step, metric: value, …}].

    loss_fn(model, batch) -> (summed_loss, metrics): the loss summed over the batch's units (trained tokens for
    SFT, pairs for DPO, samples for RLOO); collate_fn puts the unit count in batch["normalizer"]. A step's loss
    is the sum over all its micro-batches divided by the total units of the whole step, so batch 8 × accumulation
    1 and batch 1 × accumulation 8 give the same gradient (the 2024 gradient-accumulation bug).
    `length_fn(example)` gives the length that batches are grouped by (default: len(example["input_ids"])).
    `stop_after_steps` simulates an interruption (tests); a later call with resume=True picks up the checkpoint.
    """
    from tqdm.auto import tqdm
    logger = logger or NullLogger()
    run_config = json.loads(json.dumps(run_config or {"train": dataclasses.asdict(cfg)}, default=str))
    stage_dir = Path(stage_dir)
    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.max_steps))
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "finished": False}
    saved = resumable_state(stage_dir, run_config) if resume else None
    if saved is not None:
        load_weights_into(model, saved["dir"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        if "cuda_rng" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        state = {k: saved[k] for k in state}
        print(f"resuming {desc} from step {state['step']} ({saved['dir']})")

    lengths = [length_fn(e) if length_fn else len(e["input_ids"]) for e in examples]
    epoch_batches = lambda epoch: length_grouped_batches(lengths, cfg.batch_size, cfg.seed * 1000 + epoch,
                                                         cfg.group_by_length)
    batches = epoch_batches(state["epoch"])

    def next_indices():
        nonlocal batches
        if state["batch_in_epoch"] >= len(batches):
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            batches = epoch_batches(state["epoch"])
        state["batch_in_epoch"] += 1
        return batches[state["batch_in_epoch"] - 1]

    def evaluate():
        if eval_fn is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model)
        model.train()
        state["history"].append({"step": state["step"], **metrics})
        logger.scalars(metrics, state["step"])

    if state["step"] == 0:
        evaluate()
    model.train()
    progress = tqdm(total=cfg.max_steps, initial=state["step"], desc=desc, mininterval=2)
    while state["step"] < cfg.max_steps:
        if stop_after_steps is not None and state["step"] >= stop_after_steps:
            progress.close()
            return state["history"]
        started = time.perf_counter()
        micro_batches = [collate_fn([examples[i] for i in next_indices()]) for _ in range(cfg.grad_accum)]
        total_units = sum(float(b["normalizer"]) for b in micro_batches)
        loss_sum, metric_sums = 0.0, Counter()
        for batch in micro_batches:
            batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast_context(dev):
                summed, metrics = loss_fn(model, batch)
            (summed / total_units).backward()
            loss_sum += float(summed.detach())
            metric_sums.update({k: float(v) / cfg.grad_accum for k, v in metrics.items()})
        loss = loss_sum / total_units
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            progress.close()
            raise TrainingDiverged(f"{desc}: loss={loss} grad_norm={grad_norm} at step {state['step'] + 1}; "
                                   f"stopped, last good checkpoint kept in {stage_dir} (lower the lr?)")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        progress.update(1)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.max_steps:
            seconds = time.perf_counter() - started
            scalars = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                       "train/trained_units": total_units, **dict(metric_sums)}
            if "labels" in micro_batches[0]:
                scalars["train/trained_tokens"] = sum(float((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
            if "attention_mask" in micro_batches[0]:
                real = sum(float(b["attention_mask"].sum()) for b in micro_batches)
                cells = sum(b["attention_mask"].numel() for b in micro_batches)
                scalars.update({"train/tokens_per_second": real / seconds, "train/padding_fraction": 1 - real / cells})
            logger.scalars(scalars, state["step"])
            progress.set_postfix(loss=f"{loss:.4f}")
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
            evaluate()
        if state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps:
            state["finished"] = state["step"] == cfg.max_steps
            save_checkpoint(model, tokenizer, stage_dir, state, optimizer, scheduler, run_config)
    progress.close()
    return state["history"]
