"""The notebook runner (`python -m helpers run-notebook`, `make demo`): it says where it is while a notebook runs,
names the failing cell, estimates the time left from the run times in the notebooks' metadata, and keeps one output per
progress bar in the executed copy."""
import nbformat

from conftest import CLI_ENV, run_cli
from helpers import config, runner


def write_notebook(path, cells, run_time_s: dict | None = None):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    if run_time_s:
        metadata["run_time_s"] = run_time_s
    nb = new_notebook(cells=[new_markdown_cell(s[3:]) if s.startswith("md:") else new_code_cell(s) for s in cells],
                      metadata=metadata)
    nbformat.write(nb, path)
    return path


def test_run_notebook_says_where_it_is_and_names_the_failing_cell(tmp_path, output_dir):
    """What `make demo` prints: each cell as it starts (number, first line) and its time as it ends, the headings
    passed, the cells' printed lines (a few), the progress bar as text at a readable rate (not one line per step),
    the run's place and time; on failure the failing cell and its traceback as text — not nbclient's JSON."""
    path = write_notebook(tmp_path / "demo.ipynb", [
        "md:# A demo",
        "print('hello')\nfor i in range(40):\n    print('line', i)",
        "md:## Training",
        "import time\nfrom tqdm.auto import tqdm\nbar = tqdm(range(30), desc='train')\nfor i in bar:\n"
        "    time.sleep(0.02)\n    bar.set_postfix(loss=1.0 / (i + 1))\n"
        "from helpers.logger import progress_bar\n"
        "for i in progress_bar(range(30), desc='text'):\n    time.sleep(0.02)",
        "def check(x):\n    raise ValueError(f'bad value {x}')\n\ncheck(3)",
        "print('never runs')"])
    env = {k: v for k, v in CLI_ENV.items() if k != "TQDM_DISABLE"}
    done = run_cli("run-notebook", str(path), env={**env, "PROFILE": "smoke", "OUTPUT_DIR": str(output_dir)})
    out, err = done.stdout, done.stderr
    assert done.returncode == 1, out + err
    assert out.startswith("=== ") and "demo.ipynb (PROFILE=smoke) · notebook 1/1 · elapsed 0 s" in out
    assert "── A demo" in out and "── Training" in out
    assert "[cell 1/4] print('hello')" in out and "    │ hello" in out and "    │ line 18" in out
    assert "    │ line 19" not in out and "… 21 more lines" in out          # a cell's output is cut, not flooded
    assert "cell 1/4 done in 0 s · notebook 1/1 · elapsed" in out and "estimated remaining" in out
    bars = [line for line in out.splitlines() if line.startswith("    ▸ train:")]
    assert 1 <= len(bars) <= 3 and "30/30" in bars[-1] and "loss=0.0333" in bars[-1]   # the last loss arrived
    text_bars = [line for line in out.splitlines() if line.startswith("    ▸ text:")]     # a text bar (stderr, \r)
    assert len(text_bars) == 1 and "0/30" in text_bars[0] and "    │ text: 100%" in out
    assert "[cell 3/4] def check(x):" in out and "never runs" not in out
    assert "FAILED: demo.ipynb: cell 3/4 (def check(x):) raised an error" in err
    assert "----> 4 check(3)" in err and "ValueError: bad value 3" in err
    assert "\x1b[" not in err and '"output_type"' not in err and "CellExecutionError" not in err
    executed = output_dir / "outputs" / "smoke" / "notebooks" / "demo.ipynb"
    assert f"The executed notebook up to there: {executed}" in err and executed.exists()


def test_run_plan_estimates_the_time_left_from_the_notebooks_stated_times(tmp_path, monkeypatch):
    """Three notebooks whose metadata say 1, 2 and 3 minutes (a number in their prose is not read); the first took
    2 minutes (this machine runs at half the stated speed), the second has run for 1 minute: 2 × 2 − 1 = 3 minutes
    of it are left, and 2 × 3 for the third."""
    for name, minutes in [("00_a", 1), ("01_b", 2), ("02_c", 3)]:
        write_notebook(tmp_path / f"{name}.ipynb", [f"md:# {name}\n**Run time.** tiny ≈ 9 min"],
                       run_time_s={"tiny": 60 * minutes, "smoke": 5})
    now = 10_000.0
    monkeypatch.setattr(runner.time, "time", lambda: now)
    plan = runner.RunPlan(tmp_path / "01_b.ipynb", "tiny", index=2, total=3, started=now - 180)
    plan.notebook_started = now - 60
    assert plan.seconds_left() == 540
    assert plan.line() == "notebook 2/3 · elapsed 3 min 00 s · estimated remaining 9 min 00 s"
    assert runner.stated_run_time(nbformat.read(tmp_path / "00_a.ipynb", as_version=4), "smoke") == 5
    assert [runner.clock(s) for s in (42, 362, 3900)] == ["42 s", "6 min 02 s", "1 h 05 min"]


def test_every_notebook_states_its_tiny_run_time_so_make_demo_can_estimate():
    """`make demo`'s "estimated remaining" reads these from each notebook's metadata (the header of its .py source);
    a notebook without one counted as 0 s (it once said 10 s left for the whole run)."""
    notebooks = sorted((config.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stated = {p.name: runner.stated_run_time(nbformat.read(p, as_version=4), "tiny") for p in notebooks}
    assert len(stated) == 7 and all(stated.values()), stated
    assert 600 <= sum(stated.values()) <= 1800                              # the demo: minutes, not seconds


def test_the_executed_copy_keeps_one_output_per_progress_bar():
    """A bar redrawn every 10 s in a kernel arrives as one stream message per redraw; the executed copy keeps what a
    notebook shows — the last drawing — so a 5-minute stage is one line, not thirty outputs."""
    stream = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [stream("stdout", "config\n"), stream("stderr", "\rdpo:   0%| 0/800"),
                    stream("stderr", "\rdpo:  50%| 400/800"), stream("stderr", "\rdpo: 100%| 800/800\n"),
                    stream("stdout", "done\n"), stream("stdout", "more\n")]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    runner.settle_streams(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [
        ("stdout", "config\n"), ("stderr", "dpo: 100%| 800/800\n"), ("stdout", "done\nmore\n")]
