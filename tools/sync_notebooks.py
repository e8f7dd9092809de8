"""Writes notebooks/NN_name.ipynb from its readable source notebooks/NN_name.py (jupytext percent format), without
outputs and with stable cell ids, so the committed .ipynb changes only where the source changed.

    make notebooks-sync          # or: .venv/bin/python tools/sync_notebooks.py [--check]

In Jupyter (with jupytext installed, as `make setup` does) the two files are paired: saving either updates the other.
`--check` exits 1 when a committed .ipynb differs from what its .py gives (tests/test_notebooks.py runs it).
"""
import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def notebook_from_source(source: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(source, fmt="py:percent")
    run_time = nb.metadata.get("run_time_s")         # seconds per profile: `make demo`'s estimate of the time left
    nb.metadata = {"kernelspec": KERNELSPEC, "jupytext": {"formats": "ipynb,py:percent"}}
    if run_time:
        nb.metadata["run_time_s"] = dict(run_time)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{source.stem}-{i:02d}"       # stable ids: a re-sync changes nothing that did not change
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks out of sync")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        target = source.with_suffix(".ipynb")
        text = nbformat.writes(notebook_from_source(source)) + "\n"
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text, encoding="utf-8")
    verb = "out of sync with their .py sources" if args.check else "written"
    print(f"{len(stale)} notebook(s) {verb}: {', '.join(stale) or '-'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
