"""Notebooks: readable .py sources in sync with the committed .ipynb (no outputs), and each runs top to bottom in
the smoke profile."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import helpers as H
from helpers import runner

NOTEBOOKS = sorted((H.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist_in_order():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_data", "01_sft_masked", "02_sft_unmasked", "03_dpo", "04_rloo", "05_evaluation", "06_chat"]


def test_every_notebook_has_a_readable_source_in_sync():
    """notebooks/NN.py (jupytext percent format) is what a reviewer reads; the .ipynb must be what it gives."""
    assert [p.with_suffix(".py").exists() for p in NOTEBOOKS] == [True] * len(NOTEBOOKS)
    done = subprocess.run([sys.executable, "tools/sync_notebooks.py", "--check"], cwd=H.REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# Numbers a markdown cell may state: settings — any value of a profile's config (`config_numbers`) — and these
# constants, never a result this run computes (results are printed from the run). Each constant, and why:
CONSTANTS = {"1.0",                           # the top reward and the grid's weight 1, as prose writes them
             "0.2", "1.2",                    # "Try next" settings: 01's WarmStart share, 06's temperature
             "1.5",                           # the experiment's length, `make experiment` (hours)
             "0.30", "2 points",              # the targets as the course states them (cfg.targets: 0.3, 0.02)
             "3,200", "6,400"}                # RFT's rounds end at RLOO's evaluations: steps × prompts × k (config)
RESULT_LIKE = r"(?<![\w.,])(?<!\w-)(\d+(?:\.\d+)? points?|\d+(?:\.\d+)? ?%|\d+\.\d+|\d+(?:,\d{3})+|\d{2,})(?![\w.,]*\d)"
NOT_PROSE = r"`[^`]*`|\$[^$]*\$|\b(?:19|20)\d\d\b|\b\d\d_\w+|[\w/.-]+\.(?:md|py|png|ipynb)"   # code, math, years, files


def config_numbers() -> set[str]:
    """Every number in every profile's config, as prose writes it (1500 → "1500" and "1,500"; 0.30 → "0.3")."""
    import dataclasses
    found = set()

    def walk(value):
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.update({f"{value:g}", f"{value:,}", f"{value:,g}"})
    for profile in ("tiny", "smoke", "qwen"):
        walk(H.get_config(profile))
    return found


def result_numbers(text: str, allowed: set[str]) -> list[str]:
    import re
    prose = re.sub(NOT_PROSE, " ", text)
    return [m for m in re.findall(RESULT_LIKE, prose) if m not in allowed and not (m.isdigit() and int(m) <= 10)]


def test_markdown_states_no_result_of_the_run():
    """A number in prose that the run computes (an accuracy, a loss, a count of samples) goes stale on the next
    machine: only settings are allowed (a config value or CONSTANTS), or a past measurement that cites docs/LOG.md."""
    import re
    found, allowed = [], CONSTANTS | config_numbers()
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for sentence in re.split(r"(?<=[.!?])\s", "".join(cell["source"])):
                if "LOG.md" in sentence:
                    continue
                found += [f"{path.stem}: {m} in {sentence.strip()[:80]!r}" for m in result_numbers(sentence, allowed)]
    assert found == []


def test_the_prose_check_can_fail():
    allowed = CONSTANTS | config_numbers()
    assert result_numbers("exact match rose to 0.790 (+23.0 points), 4 % of 1,200 samples; 137 tasks, 26 of 261",
                          allowed) == ["0.790", "23.0 points", "4 %", "1,200", "137", "26", "261"]
    # settings, code, math, years and file names pass: 800 steps, `lr=5e-4`, $\\beta = 0.1$, 2024, 03_dpo.py
    assert result_numbers("DPO's 800 steps (`max_steps=800`, $x_{12}$) as in 2024, see 03_dpo and LOG.md; k = 8",
                          allowed) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and not cell.get("execution_count"), f"{path.name} has outputs"


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return {"OUTPUT_DIR": str(out), "PROFILE": "smoke"}      # progress bars on: the hygiene check counts them


def test_notebooks_run_in_smoke_profile(smoke_env, monkeypatch):
    """All notebooks in order (each loads the previous stage's output by name), writing only under OUTPUT_DIR."""
    for key, value in smoke_env.items():
        monkeypatch.setenv(key, value)
    before = {p for p in H.REPO_ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts
              and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}
    for path in NOTEBOOKS:
        runner.run_notebook(path, timeout=600)
    out = Path(smoke_env["OUTPUT_DIR"])
    assert (out / "checkpoints" / "smoke" / "sft_masked" / "model.safetensors").exists()
    assert (out / "assets" / "smoke" / "Comparison.png").exists()
    assert list((out / "evaluation_results" / "smoke" / "sft_comparison").glob("*/summary/summary_*.xlsx"))
    for stage in ("dpo", "reward_model", "rloo", "final"):
        assert (out / "checkpoints" / "smoke" / stage / "config.json").exists(), stage
    assert list((out / "evaluation_results" / "smoke" / "stages").glob("*/summary/summary_*.csv"))
    assert (out / "outputs" / "smoke" / "rloo" / "responses.jsonl").exists()
    report = (out / "report" / "report_smoke.md").read_text()
    assert "held-out preference accuracy" in report and "reward model (Bradley–Terry" in report   # 03's evidence
    after = {p for p in H.REPO_ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts
             and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}
    assert after - before == set(), f"smoke run wrote into the repo: {sorted(after - before)[:5]}"
    problems = [p for path in NOTEBOOKS for p in output_problems(out / "outputs" / "smoke" / "notebooks" / path.name)]
    assert not problems, "noisy notebook outputs:\n" + "\n".join(problems)


NOISE = ("Warning", "Traceback", "LOAD REPORT", "\x1b[")        # warnings, errors, ANSI-coloured library reports
MAX_TEXT_OUTPUT = 60_000                                         # characters of text per notebook (images apart)
MAX_REDRAWS, MAX_BAR_OUTPUTS = 0, 5           # the runner keeps each bar's last drawing (runner.settle_streams):
                                              # one per run of a training cell
EXPERIMENT_BARS = 12                          # smoke runs the seeded experiment in 02 (one bar per SFT run of it)


def output_problems(executed: Path) -> list[str]:
    """Output hygiene of an executed notebook: no warning, traceback or ANSI report in any output, no progress-bar
    widgets, and no more text than a reader scrolls through."""
    problems, size = [], 0
    for i, cell in enumerate(json.loads(executed.read_text())["cells"]):
        for output in cell.get("outputs", []):
            text = output.get("text") or "".join(output.get("data", {}).get("text/plain", ""))
            text = "".join(text) if isinstance(text, list) else text
            size += len(text)
            where = f"{executed.name} cell {i}"
            if output["output_type"] == "error":
                problems.append(f"{where}: {output['ename']}: {output['evalue'][:200]}")
            elif any(word in text for word in NOISE):
                problems.append(f"{where}: {text.strip()[:200]!r}")
            elif "application/vnd.jupyter.widget-view+json" in output.get("data", {}) and "0%" in text:
                problems.append(f"{where}: a progress-bar widget")
            elif output["output_type"] == "stream" and text.count("\r") > MAX_REDRAWS:
                problems.append(f"{where}: a progress bar redrawn {text.count(chr(13))} times in one output")
        bars = sum(o["output_type"] == "stream" and "%|" in "".join(o.get("text", ""))   # tqdm's "NN%|"
                   for o in cell.get("outputs", []))
        source = "".join(cell.get("source", ""))
        if bars > (EXPERIMENT_BARS if "run_experiment" in source else MAX_BAR_OUTPUTS):
            problems.append(f"{executed.name} cell {i}: {bars} separate progress-bar outputs")
    if size > MAX_TEXT_OUTPUT:
        problems.append(f"{executed.name}: {size:,} characters of text output (limit {MAX_TEXT_OUTPUT:,})")
    return problems
