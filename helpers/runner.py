"""The notebook runner behind `make demo` and `python -m helpers run-notebook`: executes a notebook headless with
nbclient, says where it is while it runs (each cell as it starts and ends, the notebook's place in the run, an
estimate of the time left from the notebooks' stated run times), keeps one output per progress bar, and saves the
executed copy under outputs/<profile>/notebooks/. Imports: config."""
from __future__ import annotations

import html
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from .config import out_path
from .config_file import get_config

PROGRESS_EVERY_SECONDS = 10   # a running stage's progress bar is printed at most this often (and when it ends)
ECHO_LINES_PER_CELL = 20      # a cell's printed lines shown as it runs; the executed copy keeps all of them
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")   # the colours of IPython's tracebacks


class NotebookFailed(RuntimeError):
    """A cell raised, timed out or killed the kernel: the message names the cell and gives its traceback as text."""


def clock(seconds: float) -> str:
    """42 s · 6 min 02 s · 1 h 05 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def stated_run_time(nb, profile: str) -> float | None:
    """The seconds a notebook takes in a profile, from its metadata (`run_time_s: {tiny: 180, …}`, the header of its
    .py source), or None where it does not say."""
    seconds = (nb.metadata.get("run_time_s") or {}).get(profile)
    return float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else None


class RunPlan:
    """Where a run of several notebooks (`make demo`) is: notebook i of n, the time since the run started, and an
    estimate of the time left — the notebooks' stated run times, scaled by how fast this machine has been so far."""

    def __init__(self, path: Path, profile: str, index: int | None = None, total: int | None = None,
                 started: float | None = None):
        self.index, self.total = index or 1, total or 1
        self.started = started or time.time()
        self.notebook_started = time.time()
        numbered = sorted(path.parent.glob("[0-9][0-9]_*.ipynb"))
        if self.total == 1:
            plan = [path]
        elif len(numbered) == self.total and numbered[self.index - 1] == path:
            plan = numbered                    # the Makefile's list: the numbered notebooks, in order
        else:
            plan = []
        self.stated = [stated_run_time(nbformat.read(p, as_version=4), profile) for p in plan]

    def seconds_left(self) -> float | None:
        now = time.time()
        before, this_one = self.notebook_started - self.started, now - self.notebook_started
        if any(self.stated):
            stated = [s or 0.0 for s in self.stated]
            stated_before = sum(stated[:self.index - 1])
            speed = before / stated_before if stated_before >= 60 else 1.0   # this machine vs the stated times
            return max(0.0, speed * stated[self.index - 1] - this_one) + speed * sum(stated[self.index:])
        if self.index > 1:                     # no stated times: the mean notebook so far
            return max(0.0, before / (self.index - 1) * (self.total - self.index + 1) - this_one)
        return None

    def line(self) -> str:
        left = self.seconds_left()
        return (f"notebook {self.index}/{self.total} · elapsed {clock(time.time() - self.started)} · estimated "
                f"remaining {clock(left) if left is not None else 'unknown'}")


def first_line(source: str, width: int = 100) -> str:
    line = next((s.strip() for s in source.splitlines() if s.strip()), "")
    return line if len(line) <= width else line[:width - 1] + "…"


class EchoingClient(NotebookClient):
    """nbclient's executor, printing where it is: each code cell as it starts (its number and first line) and its
    time when it ends, the markdown headings passed, the lines the cells print, and the progress bars — tqdm bars
    in a kernel are widgets, invisible headless — as text lines at a readable rate."""

    def __init__(self, nb, plan: RunPlan, write, **kwargs):
        super().__init__(nb, **kwargs)
        self.plan, self.write = plan, write
        self.code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        self.current: tuple[int, str] | None = None       # (cell index, label) of the cell running
        self.cell_started = time.perf_counter()
        self.echoed = self.hidden = 0
        self.partial = ""
        self.bar_printed: dict[str, float] = {}         # progress text widget → when it was last printed
        self.bars_finished: set[str] = set()
        self.finishing: dict[str, str] = {}             # finished bars, printed once their last update is in

    def label(self, cell_index: int) -> str:
        return f"cell {self.code_cells.index(cell_index) + 1}/{len(self.code_cells)}"

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell_index not in self.code_cells:
            heading = next((s for s in cell.source.splitlines() if s.startswith("#")), None)
            if cell.cell_type == "markdown" and heading:
                self.write(f"── {heading.lstrip('#').strip()}")
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        self.current, self.cell_started = (cell_index, self.label(cell_index)), time.perf_counter()
        self.echoed = self.hidden = 0
        self.write(f"[{self.current[1]}] {first_line(cell.source)}")
        try:
            cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            if self.partial:
                self.echo_line(self.partial)
            self.partial = ""
            self.print_finished_bars()
            if self.hidden:
                self.write(f"    │ … {self.hidden} more lines (all of them in the executed notebook)")
        self.write(f"  {self.current[1]} done in {clock(time.perf_counter() - self.cell_started)} · "
                   f"{self.plan.line()}")
        return cell

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "stream":
            *lines, self.partial = (self.partial + msg["content"]["text"]).split("\n")
            for line in lines:
                self.echo_line(line)
            if "\r" in self.partial:     # a text progress bar redrawing its line (helpers.logger.progress_bar)
                self.partial = self.partial.rsplit("\r", 1)[-1]
                self.echo_text_bar(ANSI_ESCAPE.sub("", self.partial).strip())
        return super().output(outs, msg, display_id, cell_index)

    def echo_text_bar(self, text: str) -> None:
        now = time.monotonic()
        if text and now - self.bar_printed.get("text", -1e9) >= PROGRESS_EVERY_SECONDS:
            self.bar_printed["text"] = now
            self.write("    ▸ " + text)

    def echo_line(self, line: str) -> None:
        self.print_finished_bars()
        if self.echoed < ECHO_LINES_PER_CELL:
            self.write("    │ " + ANSI_ESCAPE.sub("", line).rsplit("\r", 1)[-1].rstrip())
            self.echoed += 1
        else:
            self.hidden += 1

    def handle_comm_msg(self, outs, msg, cell_index):
        super().handle_comm_msg(outs, msg, cell_index)
        if "value" in (msg["content"].get("data", {}).get("state") or {}):
            self.echo_progress(msg["content"]["comm_id"])

    def echo_progress(self, widget_id: str) -> None:
        """A tqdm bar in a kernel is an HBox of [description, progress bar, counts] widgets (tqdm/notebook.py);
        when its counts change ("40/100 [00:10<00:15, 4.0it/s, loss=1.23]"), print it now and then."""
        state = lambda ref: self.widget_state.get(ref.removeprefix("IPY_MODEL_"), {})
        box = next((w["children"] for w in self.widget_state.values() if len(w.get("children") or []) == 3
                    and w["children"][2] == f"IPY_MODEL_{widget_id}"), None)
        if box is None or not state(box[1]).get("_model_name", "").endswith("ProgressModel"):
            return
        bar = state(box[1])
        text = html.unescape(f"{state(box[0]).get('value', '')} {state(box[2]).get('value', '')}")
        text = " ".join(text.replace("\u2007", " ").split())       # tqdm pads with figure spaces
        if bar.get("value", 0) >= bar.get("max", 1):
            self.finishing[widget_id] = text      # its last update (the final loss) may still come
            return
        self.print_finished_bars()
        now = time.monotonic()
        if now - self.bar_printed.get(widget_id, -1e9) >= PROGRESS_EVERY_SECONDS:
            self.bar_printed[widget_id] = now
            self.write("    ▸ " + text)

    def print_finished_bars(self) -> None:
        for widget_id, text in self.finishing.items():
            if widget_id not in self.bars_finished:
                self.bars_finished.add(widget_id)
                self.write("    ▸ " + text)
        self.finishing = {}

    def failure(self, err: Exception, timeout) -> str:
        """Which cell failed, how, and its traceback as plain text (not nbclient's message)."""
        if self.current is None:
            return f"the kernel failed before any cell ran: {type(err).__name__}: {err}"
        cell_index, label = self.current
        cell = self.nb.cells[cell_index]
        how = {CellTimeoutError: f"timed out (the limit is {timeout} s per cell: --timeout, or the profile's "
                                 "notebook_cell_timeout)",
               DeadKernelError: "killed the kernel (out of memory?)"}.get(type(err), "raised an error")
        tracebacks = ["\n".join(o.get("traceback", [])) for o in cell.get("outputs", []) if o.output_type == "error"]
        text = ANSI_ESCAPE.sub("", tracebacks[-1] if tracebacks else
                               f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}")
        return (f"{label} ({first_line(cell.source)}) {how} after "
                f"{clock(time.perf_counter() - self.cell_started)}:\n{text.rstrip()}")


def settle_streams(nb) -> None:
    """The executed copy as a notebook front-end shows it: consecutive outputs of one stream merged into one, and a
    line redrawn with carriage returns (a progress bar, every 10 s) kept as its last drawing — one output per bar,
    not one per redraw."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if last is not None and out.output_type == last.output_type == "stream" and out.name == last.name:
                last.text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream" and "\r" in out.text:
                out.text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        if "outputs" in cell:
            cell.outputs = merged


def run_notebook(path, timeout: int | None = None, index: int | None = None, total: int | None = None,
                 started: float | None = None, write=None) -> Path:
    """Execute a notebook headless (cwd = its folder), printing where it is (EchoingClient, RunPlan); the executed
    copy goes to outputs/<profile>/notebooks/, so the committed notebook stays without outputs. `timeout` (seconds
    per cell, 0 = none) defaults to the profile's `notebook_cell_timeout`: 30 minutes for tiny, none for qwen,
    whose cells train for hours. index/total/started: its place in a run of several (`make demo`).

    Raises NotebookFailed naming the failed cell, with its traceback; the executed copy then holds the cells run so
    far, outputs included."""
    write = write or (lambda line: print(line, flush=True))
    path = Path(path).resolve()
    cfg = get_config()
    nb = nbformat.read(path, as_version=4)
    started_here = time.perf_counter()
    if timeout is None:
        timeout = cfg.notebook_cell_timeout
    plan = RunPlan(path, cfg.profile, index, total, started)
    write(f"=== {path.parent.name}/{path.name} (PROFILE={cfg.profile}) · {plan.line()}")
    client = EchoingClient(nb, plan, write, timeout=timeout or None, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}})
    executed = out_path("outputs", cfg, "notebooks", path.name)
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        settle_streams(nb)
        nbformat.write(nb, executed)
        raise NotebookFailed(f"{path.name}: {client.failure(err, timeout)}\n"
                             f"The executed notebook up to there: {executed}") from None
    settle_streams(nb)
    nbformat.write(nb, executed)
    write(f"{path.name}: ran in {clock(time.perf_counter() - started_here)}; executed copy: {executed}")
    return executed
