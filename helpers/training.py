"""The one training loop every stage uses; a stage plugs in its loss and collate function. Per-step loss
normalisation (gradient accumulation and N processes give the same gradient), warmup + cosine, bf16 autocast on
CUDA, resume; one process, or N under `accelerate launch` (DDP, or FSDP by accelerate's config).
Imports: config, modeling, batching, logger, checkpoints, distributed."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import torch

from .config import Config, ProjectError, TrainConfig, check_config, out_path, seed_everything
from .config_file import config_yaml
from .modeling import autocast_context
from .batching import length_grouped_batches, to_device
from .logger import NullLogger, TensorBoardLogger, progress_bar
from .checkpoints import (RESOLVED, keeps_events, load_weights_into, save_checkpoint, stage_lock, stage_status,
                          start_fingerprint)
from .distributed import (accelerator, barrier, call, clip_grad_norm, full_weights, gather_objects, is_main,
                          load_optimizer_state, main_first, mean_metrics, no_sync, num_processes, optimizer_state,
                          prepare_model, process_index, rng_state, run_config_of, seed_this_process, set_rng_state,
                          share, sharded_run, state_dict_for_saving, sum_over_processes)


class TrainingDiverged(ProjectError, RuntimeError):
    """The loss became NaN/inf, rose far above where it started, or sat at the uniform-output value; training
    stopped and the message says which checkpoint, if any, was kept."""
    exit_code = 1


class NothingToTrain(ProjectError, ValueError):
    """A stage was handed no examples (every row dropped by its filters): the message says which stage and why."""


# Divergence beyond NaN: a loss above DIVERGED_FACTOR × its first value + 1 nat, or within UNIFORM_TOLERANCE of
# ln(vocabulary) (a model that outputs the uniform distribution), for DIVERGED_STEPS steps in a row.
DIVERGED_FACTOR, UNIFORM_TOLERANCE, DIVERGED_STEPS = 3.0, 0.02, 3


@dataclasses.dataclass
class StageStart:
    """How every stage opens (`open_stage`): its settings, where it starts from and trains into, and the run config
    its saved run records (a stage adds what is its own: dataset sizes, dropped rows, …)."""
    settings: TrainConfig
    start_dir: Path
    stage_dir: Path
    run_config: dict


def open_stage(cfg: Config, section: str, start: str, stage: str, settings: TrainConfig | None = None) -> StageStart:
    """The opening every stage shares, in this order: the whole config checked (a bad value fails before any model
    is loaded), the seed set, the start checkpoint named by its weights' fingerprint (a finished stage that started
    from other weights is trained again: `stage_status`), the run config begun. `settings`: the section as the
    stage overrides it (SFT's loss weight and seed)."""
    checked = check_config(cfg)
    settings = settings or getattr(checked, section)
    seed_everything(settings.seed)
    start_dir = out_path("checkpoints", cfg, start)
    run_config = {"stage": stage, "profile": cfg.profile, "start": start,
                  "start_weights": start_fingerprint(start_dir, start), section: dataclasses.asdict(settings),
                  RESOLVED: config_yaml(checked, commented=False)}        # saved as config.yml, never compared
    return StageStart(settings, start_dir, out_path("checkpoints", cfg, stage), run_config)


@dataclasses.dataclass
class StageResult:
    """What every stage returns: the trained model and its tokenizer, its folder, its held-out history (one dict per
    evaluation; RFT: one per round) and what is the stage's own (`details`: DPO's preference accuracy before and
    after, the reward model's accuracy, …). `result["before"]` reads a detail, `result["history"]` a field."""
    model: object
    tokenizer: object
    dir: Path
    history: list[dict]
    details: dict = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str):
        if key in ("model", "tokenizer", "dir", "history"):
            return getattr(self, key)
        return self.details[key]


def stage_logger(cfg: Config, stage: str, run_config: dict, enabled: bool = True):
    """The stage's TensorBoard logger: a fresh run clears old events, a resumed or finished run keeps them."""
    if not enabled or not is_main():       # one writer: the main process
        return NullLogger()
    keep = keeps_events(out_path("checkpoints", cfg, stage), run_config_of(run_config), cfg.restart)
    return TensorBoardLogger(out_path("tensorboard_events", cfg, stage), fresh=not keep)


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, run_config: dict, log: bool = True):
    """A stage's run, opened and closed in one place: the stage folder locked against a second process (before its
    TensorBoard events can be touched), the logger (`stage_logger`) yielded, and both released whatever happens."""
    stage_dir = out_path("checkpoints", cfg, stage)
    with stage_lock(stage_dir) if is_main() else contextlib.nullcontext():
        logger = stage_logger(cfg, stage, run_config, log)
        try:
            yield logger
        finally:
            logger.close()


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """lr multiplier: linear warmup to 1, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def my_share(indices: list[int]) -> tuple[list[int], bool]:
    """This process's share of a step's global batch, and whether it is real: a global batch with fewer items than
    processes (an epoch's last) leaves some with none; those run the first item with weight 0, because DDP needs a
    backward from every process."""
    mine = share(indices)
    return (mine, True) if mine else (indices[:1], False)


@dataclasses.dataclass
class RunState:
    """Where a run stands: saved with every checkpoint (as a dict, these keys) and restored on resume."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    finished: bool = False


class EpochBatches:
    """The run's batches of example indices, epoch after epoch: length-grouped and shuffled by seed × 1000 + epoch,
    so a resumed run (the epoch and batch in `state`) continues the same sequence."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, state: RunState):
        self.make = lambda epoch: length_grouped_batches(lengths, batch_size, seed * 1000 + epoch, group_by_length)
        self.state, self.batches = state, self.make(state.epoch)

    def next(self) -> list[int]:
        if self.state.batch_in_epoch >= len(self.batches):
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            self.batches = self.make(self.state.epoch)
        self.state.batch_in_epoch += 1
        return self.batches[self.state.batch_in_epoch - 1]


class DivergenceGuard:
    """Says why a run has diverged, or None: a NaN/inf loss or gradient at once; a loss far above its first value
    (`watch_loss`) or sitting at ln V (`uniform_loss`: a model that outputs the uniform distribution) for
    DIVERGED_STEPS steps in a row. ln V counts only after the loss has been elsewhere (a fresh model starts there)
    and after warmup (a fresh model may still sit there on its way down)."""

    def __init__(self, watch_loss: bool, uniform_loss: float | None, warmup_steps: int):
        self.watch_loss, self.uniform_loss, self.warmup_steps = watch_loss, uniform_loss, warmup_steps
        self.first_loss, self.strikes, self.left_uniform = None, 0, False

    def check(self, loss: float, grad_norm: float, step: int) -> str | None:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"loss={loss} grad_norm={grad_norm}"
        self.first_loss = loss if self.first_loss is None else self.first_loss
        far_above = self.watch_loss and loss > DIVERGED_FACTOR * abs(self.first_loss) + 1.0
        at_uniform = self.uniform_loss is not None and abs(loss - self.uniform_loss) < UNIFORM_TOLERANCE
        uniform = at_uniform and self.left_uniform and step >= self.warmup_steps
        self.left_uniform = self.left_uniform or not at_uniform
        self.strikes = self.strikes + 1 if far_above or uniform else 0
        if self.strikes < DIVERGED_STEPS:
            return None
        return (f"loss {loss:.4g} far above its start ({self.first_loss:.4g})" if far_above else
                f"loss {loss:.4g} sits at ln(vocabulary) = {self.uniform_loss:.4g}: the model outputs the uniform "
                "distribution")


def open_stage_dir(stage_dir: Path, run_config: dict, restart: bool, desc: str) -> tuple[str, dict | None]:
    """What the stage folder holds for this run: ("finished" | "resume", the saved checkpoint) or ("fresh", None).
    `restart` deletes it first; a run trained from other start weights ("stale") is deleted and trained again."""
    if restart and is_main():
        shutil.rmtree(stage_dir, ignore_errors=True)
    barrier()
    with main_first():          # the main process repairs an interrupted save first; the others only read
        status, saved = stage_status(stage_dir, run_config)
    if status == "stale":       # the stage it started from was trained again: its results no longer follow
        if is_main():
            print(f"{desc}: {stage_dir} was trained from other weights ({', '.join(saved['changed'])} changed "
                  "since): training it again")
            shutil.rmtree(stage_dir)
        barrier()
        return "fresh", None
    return status, saved


def accumulate_step(wrapped, loss_fn, examples, collate_fn, shares, dev):
    """One optimizer step's forward and backward passes over its micro-batches. A step's loss is the sum over all its
    micro-batches divided by the units of the whole step, over every process: each process's backward of (its
    summed loss × N / total) is then averaged by DDP into the gradient of (everyone's summed loss / total).
    Returns (loss, total units, micro-batches, the stage's metrics averaged over the real micro-batches)."""
    processes = num_processes()
    micro_batches = [collate_fn([examples[i] for i in indices]) for indices, _ in shares]
    total_units = sum_over_processes(sum(float(b["normalizer"]) for b, (_, real) in zip(micro_batches, shares)
                                         if real))
    real_batches = sum(real for _, real in shares)
    prepare = getattr(loss_fn, "prepare_step", None)     # RLOO: a step's rollouts in as few sampling calls as fit
    if prepare is not None and accelerator() is None:    # one plain process (N processes sample per micro-batch)
        prepare(wrapped, micro_batches)
    loss_sum, metric_sums = 0.0, Counter()
    for j, (batch, (_, real)) in enumerate(zip(micro_batches, shares)):
        batch = to_device(batch, dev)
        with no_sync(wrapped, skip=j < len(micro_batches) - 1):     # one all-reduce per step, after the last
            with autocast_context(dev):
                summed, metrics = call(wrapped, loss_fn, batch)
            (summed * (1.0 if real else 0.0) / (total_units / processes)).backward()
        if real:
            loss_sum += float(summed.detach())
            metric_sums.update({k: float(v.detach() if torch.is_tensor(v) else v) / real_batches
                                for k, v in metrics.items()})
    return sum_over_processes(loss_sum) / total_units, total_units, micro_batches, metric_sums


def train(model, tokenizer, examples: list[dict], cfg: TrainConfig, loss_fn, collate_fn, stage_dir,
          eval_fn=None, logger=None, run_config: dict | None = None, restart: bool = False,
          stop_after_steps: int | None = None, desc: str = "train", length_fn=None, watch_loss: bool = True,
          uniform_loss: float | None = None, start_metrics: dict | None = None) -> list[dict]:
    """The one training loop. Returns the evaluation history [{step, metric: value, …}].

    loss_fn(model, batch) -> (summed_loss, metrics): the loss summed over the batch's units (trained tokens for
    SFT, pairs for DPO, samples for RLOO); collate_fn puts the unit count in batch["normalizer"]. A step's loss
    is the sum over all its micro-batches divided by the total units of the whole step, so batch 8 × accumulation
    1 and batch 1 × accumulation 8 give the same gradient (the 2024 gradient-accumulation bug).
    `length_fn(example)` gives the length that batches are grouped by (default: len(example["input_ids"])).
    `stop_after_steps` returns after that many steps, as an interrupted run would (the checkpoint saved last is
    kept): a later call resumes it.

    Under `accelerate launch` with N processes, `cfg.batch_size` is per process: a micro-batch of the step is a
    global batch of batch_size × N examples, shared out by `share`, and the step's total units are summed over the
    processes (all-reduce), so N processes × batch B give the gradient of one process × batch N·B. Only the main
    process writes (checkpoints, events); each process saves and resumes its own random streams.

    stage_dir may hold an unfinished run of the same config (resumed), a finished one (kept: its weights are
    loaded and its history returned, nothing is trained again), or anything else (CheckpointError naming the file
    and the fix); `restart=True` deletes it and trains from scratch. `watch_loss` stops a loss that rises far above
    where it started (off for RLOO, whose loss has no fixed sign), `uniform_loss` (ln V for token losses) one that
    sits where a model outputs the uniform distribution (`DivergenceGuard`). `start_metrics`: eval_fn's numbers
    for the start weights, known already (a cached evaluation of the checkpoint the stage starts from): step 0
    records them instead of evaluating the same weights again.
    """
    if not examples:
        raise NothingToTrain(f"{desc}: no examples to train on — every row was dropped by its filters (see the "
                             f"counts printed above; max_length = {cfg.max_length} may be too short for any of them)")
    logger = logger or NullLogger()
    run_config = run_config_of(json.loads(json.dumps(run_config or {"train": dataclasses.asdict(cfg)}, default=str)))
    stage_dir, processes = Path(stage_dir), num_processes()

    # 1. what the folder holds: a finished run is kept, an unfinished one resumed
    status, saved = open_stage_dir(stage_dir, run_config, restart, desc)
    if status == "finished":
        load_weights_into(model, saved["dir"])
        if is_main():
            print(f"{desc}: {stage_dir} already holds this finished run (same config): kept, not trained again "
                  "(restart=True / RESTART=1 trains it again)")
        return saved["history"]
    if status == "resume":
        load_weights_into(model, saved["dir"])

    # 2. the optimizer, the schedule and where the run stands
    wrapped = prepare_model(model)      # the model itself in one process; DDP/FSDP around it under accelerate
    dev, params = next(model.parameters()).device, [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.max_steps))
    state = RunState()
    if status == "resume":
        load_optimizer_state(wrapped, optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["process_rng"][process_index()] if "process_rng" in saved else saved)
        state = RunState(**{f.name: saved[f.name] for f in dataclasses.fields(RunState)})
        if is_main():
            print(f"resuming {desc} from step {state.step} ({saved['dir']})")
    else:
        seed_this_process(cfg.seed)     # N processes: each its own sampling stream; one process: untouched
    lengths = [length_fn(e) if length_fn else len(e["input_ids"]) for e in examples]
    batches = EpochBatches(lengths, cfg.batch_size * processes, cfg.seed, cfg.group_by_length, state)

    def evaluate():
        if eval_fn is not None:
            model.eval()
            with torch.no_grad(), full_weights(wrapped):    # every process evaluates the same (whole) model
                metrics = eval_fn(model)
            model.train()
            state.history.append({"step": state.step, **metrics})
            logger.scalars(metrics, state.step)

    def save():
        state.finished = state.step == cfg.max_steps
        weights, optimizer_saved = state_dict_for_saving(wrapped), optimizer_state(wrapped, optimizer)
        rngs = gather_objects(rng_state())      # collectives: every process takes part, the main one writes
        if is_main():
            saved_state = dataclasses.asdict(state) | ({"process_rng": rngs} if processes > 1 else {})
            save_checkpoint(model, tokenizer, stage_dir, saved_state, optimizer_saved, scheduler, run_config,
                            state_dict=weights)
        barrier()

    # 3. the loop: step 0's evaluation, then step, log, evaluate, save
    if state.step == 0 and start_metrics is not None:
        state.history.append({"step": 0, **start_metrics})
        logger.scalars(start_metrics, 0)
    elif state.step == 0:
        evaluate()
    model.train()
    progress = progress_bar(total=cfg.max_steps, initial=state.step, desc=desc, disable=not is_main())
    guard = DivergenceGuard(watch_loss, uniform_loss, cfg.warmup_steps)
    last_saved = state.step if status == "resume" else None
    while state.step < cfg.max_steps:
        if stop_after_steps is not None and state.step >= stop_after_steps:
            progress.close()
            return state.history
        started = time.perf_counter()
        shares = [my_share(batches.next()) for _ in range(cfg.grad_accum)]
        loss, total_units, micro_batches, metric_sums = accumulate_step(wrapped, loss_fn, examples, collate_fn,
                                                                        shares, dev)
        grad_norm = clip_grad_norm(wrapped, params, cfg.max_grad_norm)
        why = guard.check(loss, grad_norm, state.step)
        if why is not None:
            optimizer.zero_grad(set_to_none=True)
            progress.close()
            kept = (f"the checkpoint of step {last_saved} is kept in {stage_dir}" if last_saved is not None
                    else "no checkpoint had been saved")
            raise TrainingDiverged(f"{desc}: {why} at step {state.step + 1}; stopped, {kept} (lower the lr?)")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        progress.update(1)
        last = state.step == cfg.max_steps
        if state.step % cfg.log_every == 0 or last:
            logger.scalars(step_scalars(micro_batches, shares, time.perf_counter() - started, loss,
                                        scheduler.get_last_lr()[0], grad_norm, total_units, metric_sums),
                           state.step)
            progress.set_postfix(loss=f"{loss:.4f}", refresh=False)     # drawn with the bar's next update
        if state.step % cfg.eval_every == 0 or last:
            evaluate()
        if state.step % cfg.save_every == 0 or last:
            save()
            last_saved = state.step
    progress.close()
    return state.history


def step_scalars(micro_batches, shares, seconds, loss, lr, grad_norm, total_units, metric_sums) -> dict:
    """A step's TensorBoard scalars; token counts summed over the processes, the stage's metrics averaged."""
    real = [b for b, (_, is_real) in zip(micro_batches, shares) if is_real]
    scalars = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm, "train/trained_units": total_units,
               **mean_metrics(dict(metric_sums))}
    if "labels" in micro_batches[0]:
        scalars["train/trained_tokens"] = sum_over_processes(sum(float((b["labels"][:, 1:] != -100).sum())
                                                                 for b in real))
    if "attention_mask" in micro_batches[0]:
        tokens = sum_over_processes(sum(float(b["attention_mask"].sum()) for b in real))
        cells = sum_over_processes(sum(b["attention_mask"].numel() for b in real))
        scalars.update({"train/tokens_per_second": tokens / seconds, "train/padding_fraction": 1 - tokens / cells})
    return scalars


def whole_model(model, stage_dir, load):
    """The trained model, whole: the object itself — or, after FSDP (which leaves the object in shards), `load` of
    the checkpoint the loop saved, for the stage's evaluation after training."""
    return load(stage_dir) if sharded_run() else model


def refuse_sharded(stage: str) -> None:
    """RLOO and RFT sample with the policy between steps; FSDP would have every process gather every layer at every
    generated token, in step with the others. They scale out with DDP (the policy fits one device)."""
    if sharded_run():
        raise RuntimeError(f"{stage} samples from the policy and does not run under FSDP: launch it with a DDP "
                           "config (assets/accelerate/ddp_1node_4gpu.yaml)")
