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
