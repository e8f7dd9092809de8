"""Several processes under `accelerate launch` (DDP, or FSDP by accelerate's config): which process this is, a list
shared out between the processes and gathered back in its order, sums over processes, per-process seeds, the one
writer, and the model wrapped for the training loop. Without `accelerate launch` every function here answers for
one process and touches nothing: no Accelerator, no process group. Imports: nothing from the package."""
from __future__ import annotations

import contextlib
import functools
import os
import random
from datetime import timedelta

import torch

# Process r of a multi-process run seeds its own streams with seed + PROCESS_SEED_STRIDE · r: process 0 keeps the
# seed, the others never collide with a neighbouring seed (seeds 0, 1, 2 of an experiment stay apart).
PROCESS_SEED_STRIDE = 100_003


def launched() -> bool:
    """Whether this program was started by `accelerate launch` (or torchrun): then the loop runs through accelerate.
    Every accelerate launcher sets `ACCELERATE_MIXED_PRECISION`; torchrun sets `WORLD_SIZE`."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def accelerator():
    """This process's `accelerate.Accelerator`, created on first use (never at import); None when not launched.

    On a machine without a GPU it asks for the CPU: then `accelerate launch --multi_gpu --num_processes 2` runs two
    CPU processes over gloo (accelerate's own `--cpu` flag starts a single process). The process group waits two
    hours for a slow process (a long evaluation), not torch's default ten minutes."""
    if not launched():
        return None
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))])


def num_processes() -> int:
    acc = accelerator()
    return acc.num_processes if acc is not None else 1


def process_index() -> int:
    acc = accelerator()
    return acc.process_index if acc is not None else 0


def is_main() -> bool:
    """The one writer: checkpoints, TensorBoard events and data files come from this process only."""
    return process_index() == 0


def sharded_run() -> bool:
    """Whether accelerate's config asks for FSDP: the weights are then split between the processes while training."""
    acc = accelerator()
    return acc is not None and acc.distributed_type.value == "FSDP"


def refuse_more_than_one(what: str) -> None:
    """For the parts that stay single-process (data, chat, the experiment grid, evaluation and the report)."""
    if num_processes() > 1:
        raise RuntimeError(f"{what} runs in one process: start it with `python -m helpers …`, not under "
                           f"`accelerate launch` with {num_processes()} processes (only `train` scales out)")


def process_seed(seed: int) -> int:
    """This process's seed where sampling must differ between processes (RLOO's and RFT's rollouts, on-policy pairs,
    dropout): `seed` itself in process 0 and in a single-process run, whose numbers therefore do not change."""
    return seed + PROCESS_SEED_STRIDE * process_index()


def seed_this_process(seed: int) -> None:
    """Several processes: torch's and Python's global streams seeded by `process_seed` (sampling differs between
    processes). One process: nothing — its streams stay exactly where the stage left them."""
    if num_processes() > 1:
        random.seed(process_seed(seed))
        torch.manual_seed(process_seed(seed))


def rng_state() -> dict:
    """This process's random streams, for a checkpoint."""
    state = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def run_config_of(run_config: dict) -> dict:
    """The run config, with the process count and FSDP recorded when they are not the single-process default: the
    global batch is batch_size × processes × grad_accum, so a run is resumed (or kept) only by as many processes,
    sharded alike. A single-process run config is returned unchanged."""
    processes, sharded = num_processes(), sharded_run()
    if processes == 1 and not sharded:
        return run_config
    return {**run_config, "distributed": {"processes": processes, "fsdp": sharded}}


def share(items: list, rank: int | None = None, processes: int | None = None) -> list:
    """This process's share of a list: every processes-th item from its rank on (sizes differ by at most one).
    `gather_shares` puts the pieces back in the list's order."""
    rank = process_index() if rank is None else rank
    processes = num_processes() if processes is None else processes
    return items[rank::processes]


def interleave(parts: list[list], total: int) -> list:
    """The inverse of `share`: item i comes from process i mod N, at place i // N of its part."""
    return [parts[i % len(parts)][i // len(parts)] for i in range(total)]


def gather_objects(value) -> list:
    """[value of process 0, value of process 1, …] on every process (pickled; for small things)."""
    if num_processes() == 1:
        return [value]
    parts = [None] * num_processes()
    torch.distributed.all_gather_object(parts, value)
    return parts


def gather_shares(mine: list, total: int) -> list:
    """Every process's results for its `share` of a list of `total` items, in the list's order, on every process."""
    return mine if num_processes() == 1 else interleave(gather_objects(mine), total)


def sum_over_processes(value: float) -> float:
    """Σ over processes (a float64 all-reduce); the value itself, untouched, in one process."""
    if num_processes() == 1:
        return value
    acc = accelerator()
    return float(acc.reduce(torch.tensor(float(value), dtype=torch.float64, device=acc.device), "sum"))


def mean_metrics(metrics: dict) -> dict:
    """Each logged metric averaged over the processes that have it (a process's batch may lack a track)."""
    if num_processes() == 1:
        return metrics
    merged: dict[str, list] = {}
    for part in gather_objects({key: float(value) for key, value in metrics.items()}):
        for key, value in part.items():
            merged.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in merged.items()}


def barrier() -> None:
    if num_processes() > 1:
        accelerator().wait_for_everyone()


def finish() -> None:
    """The end of a program under N processes: wait for every process, then close the process group. One process:
    nothing to do.

    Why: "terminate called without an active exception" (SIGABRT, exit 134) is C++'s std::terminate, raised when a
    std::thread that is still running is destroyed — here at interpreter exit, when the process group's gloo
    threads (or, in the chat, a Python thread still inside a model's forward pass) meet the static destructors. A
    program must not leave torch threads running behind it: this closes the group, and the chat decodes in the
    caller's thread (`generation.stream_text`) and joins a widget's reply thread before exit."""
    if launched() and torch.distributed.is_available() and torch.distributed.is_initialized():
        barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (it clears, repairs or writes), the others after it (they only read)."""
    if num_processes() == 1:
        yield
        return
    with accelerator().main_process_first():
        yield


class ModelCall(torch.nn.Module):
    """The model and a function of it as one module: forward(fn, *args) = fn(model, *args). DDP synchronises the
    gradients, and FSDP gathers and frees weight shards, around a module's forward — while a stage's loss calls the
    decoder and the head apart (and RLOO samples first) — so under accelerate the loop wraps this, not the model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = getattr(base, "_no_split_modules", None)     # FSDP's auto-wrap: a unit per layer

    def forward(self, fn, *args):
        return fn(self.model, *args)


def prepare_model(model):
    """The model as the loop trains it: `ModelCall(model)` wrapped by accelerate (DDP, or FSDP by its config) under
    `accelerate launch`; the model itself otherwise. Call it as `wrapped(fn, batch)` in both cases via `call`."""
    acc = accelerator()
    return model if acc is None else acc.prepare_model(ModelCall(model))


def call(wrapped, fn, *args):
    """fn(model, *args), through the wrapper when there is one (so DDP/FSDP see the forward and the backward)."""
    return fn(wrapped, *args) if accelerator() is None else wrapped(fn, *args)


def no_sync(wrapped, skip: bool):
    """Gradients accumulate locally (no all-reduce) when `skip`: every micro-batch of a step but the last."""
    acc = accelerator()
    return acc.no_sync(wrapped) if skip and acc is not None and acc.num_processes > 1 else contextlib.nullcontext()


def full_weights(wrapped):
    """The whole model readable on every process for the duration (evaluation, saving): FSDP gathers its shards
    (without writing back); DDP and one process hold the whole model already."""
    if not sharded_run():
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel
    return FullyShardedDataParallel.summon_full_params(wrapped, writeback=False)


def clip_grad_norm(wrapped, params, max_norm: float) -> float:
    """The global gradient norm before clipping, the same on every process (FSDP: over all shards)."""
    acc = accelerator()
    if acc is None or not sharded_run():
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(acc.clip_grad_norm_(wrapped.parameters(), max_norm))


def state_dict_for_saving(wrapped) -> dict | None:
    """FSDP: the model's full weights gathered (every process must call this; the main process gets them), keys as
    the unwrapped model names them. None otherwise: the model object holds its whole weights and saves them itself."""
    if not sharded_run():
        return None
    full = accelerator().get_state_dict(wrapped)
    return {key.removeprefix("model."): value for key, value in full.items()}       # ModelCall's attribute


def optimizer_state(wrapped, optimizer) -> dict:
    """The optimizer's state for a checkpoint: its own (DDP: the same on every process), or FSDP's shards gathered
    into one full state (every process must call this)."""
    if not sharded_run():
        return optimizer.state_dict()
    from torch.distributed.fsdp import FullyShardedDataParallel
    return FullyShardedDataParallel.optim_state_dict(wrapped, optimizer)


def load_optimizer_state(wrapped, optimizer, saved: dict) -> None:
    """The inverse of `optimizer_state`: FSDP shares the saved full state out to this process's shards."""
    if sharded_run():
        from torch.distributed.fsdp import FullyShardedDataParallel
        saved = FullyShardedDataParallel.optim_state_dict_to_load(wrapped, optimizer, saved)
    optimizer.load_state_dict(saved)
