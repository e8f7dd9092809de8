"""Writing results: timestamped summaries (csv/md/txt/xlsx) under evaluation_results/, markdown tables, and the
small figure helpers every notebook uses. Imports: config."""
from __future__ import annotations

import time
from pathlib import Path

from .config import Config, out_path


def timestamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S")


def machine() -> str:
    """This machine in a few words ("AMD EPYC, 2 cores"), for the record of a run: another CPU rounds floats
    differently and pre-trains another base model."""
    import os
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                     "")
    except OSError:
        pass
    import platform
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def markdown_table(df) -> str:
    """A GitHub markdown table without the optional `tabulate` dependency."""
    cells = [[str(c) for c in df.columns]] + [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_summary(df, cfg: Config, eval_name: str, stamp: str | None = None) -> dict[str, Path]:
    """evaluation_results/<profile>/<eval_name>/<stamp>/summary/summary_<stamp>.{csv,md,txt,xlsx}."""
    stamp = stamp or timestamp()
    folder = out_path("evaluation_results", cfg, eval_name, stamp, "summary")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"summary_{stamp}.{ext}" for ext in ("csv", "md", "txt", "xlsx")}
    df.to_csv(paths["csv"], index=False)
    paths["md"].write_text(markdown_table(df) + "\n")
    paths["txt"].write_text(df.to_string(index=False) + "\n")
    df.to_excel(paths["xlsx"], index=False, engine="openpyxl")
    return paths


def latest_summary(cfg: Config, eval_name: str):
    """The newest summary csv of an evaluation as a DataFrame (None if there is none)."""
    import pandas as pd
    found = sorted(out_path("evaluation_results", cfg, eval_name).glob("*/summary/summary_*.csv"))
    return pd.read_csv(found[-1]) if found else None


def grouped_bars(ax, table, metrics, labels: bool = True, counts: dict | None = None) -> None:
    """One group of bars per metric, one bar per row (model) of `table`. counts = {metric: items it is a share of}:
    error bars of ±2 binomial standard errors on those (the noise of a share of that many tasks)."""
    width = 0.8 / len(table)
    for i, row in enumerate(table.itertuples(index=False)):
        values = [table.iloc[i][m] for m in metrics]
        errors = [2 * (min(max(v, 0), 1) * (1 - min(max(v, 0), 1)) / counts[m]) ** 0.5 if (counts or {}).get(m)
                  else float("nan") for m, v in zip(metrics, values)]           # NaN: no bar where no count
        bars = ax.bar([j + i * width for j in range(len(metrics))], values, width, label=row.model,
                      yerr=errors if any(e == e for e in errors) else None, capsize=2, error_kw={"elinewidth": 0.8})
        if labels:                 # upright labels collide once a group has more than four narrow bars
            crowded = len(table) > 4
            ax.bar_label(bars, fmt="%.2f", fontsize=7, rotation=90 if crowded else 0, padding=2)
    if labels:
        ax.margins(y=0.18)         # room above the tallest bar for its label
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, rotation=15)
    ax.legend(fontsize=8)


def log_axis(ax) -> None:
    """A log y-axis labelled at 1, 2, 3 and 5 of each decade (every digit where the curves span less than a
    decade), in plain numbers: matplotlib's default leaves two ticks (10⁰, 10¹) to read a whole curve by. Call it
    after plotting: it reads the axis' range."""
    import math
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    narrow = low > 0 and math.log10(high / low) < 1
    ax.yaxis.set_major_locator(LogLocator(subs=tuple(range(1, 10)) if narrow else (1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(fig, path: Path, tight: bool = True) -> Path:
    import matplotlib.pyplot as plt
    if tight:                      # False: the caller laid the figure out itself
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
