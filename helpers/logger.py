"""One small TensorBoard logger with namespaced keys (`train/loss`, `eval/…`, `rloo/…`), a do-nothing twin so
training code never asks whether logging is on, and a reader for plots. Imports nothing from the package."""
from __future__ import annotations

import shutil
from pathlib import Path


class NullLogger:
    """Logs nothing, so training code never asks whether logging is on."""

    def scalars(self, values: dict, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    def __init__(self, log_dir, fresh: bool = True):
        """fresh=True removes earlier event files of this run, so a re-run does not draw two curves."""
        from torch.utils.tensorboard import SummaryWriter
        if fresh:
            shutil.rmtree(log_dir, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


def read_tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), …]} from every event file under log_dir (for plots and the report)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    curves: dict[str, list] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in curves.items()}


def progress_bar(iterable=None, **options):
    """One text progress bar for our own long loops (training steps, generate calls): plain text on stderr, so an
    executed notebook keeps a readable line instead of a widget that shows 0% without its state; TQDM_DISABLE=1
    turns it off. Redrawn at most every 2 s in a terminal and every 10 s elsewhere — a notebook's output keeps every
    redraw, so there a stage of a few minutes leaves a few lines, not hundreds."""
    import os
    import sys
    from tqdm.std import tqdm
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true"):   # tqdm reads it once, at import
        options["disable"] = True
    return tqdm(iterable, file=sys.stderr, mininterval=2 if interactive else 10, ncols=100, **options)
