"""benchmarks/gpu_check.py at tiny shapes on the CPU: the script a GPU run uses, run end to end."""
import importlib.util

import pytest

from helpers import config
from conftest import QWEN_TOKENIZER_DIR


def test_gpu_check_runs_every_stage_at_tiny_shapes(capsys):
    """Every stage's row, with a time per step and, for sampling, decoding steps per second."""
    if not (QWEN_TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"real Qwen2.5 tokenizer not found at {QWEN_TOKENIZER_DIR}")
    spec = importlib.util.spec_from_file_location("gpu_check", config.REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--tiny", "--steps", "2", "--tokenizer", str(QWEN_TOKENIZER_DIR)]) == 0
    out = capsys.readouterr().out
    rows = {line[:26].strip(): line.split() for line in out.splitlines()[2:]}
    assert set(rows) >= {"SFT", "DPO", "RLOO sampling, eager", "RLOO scoring step", "evaluation, greedy",
                         "reward model (full)"}
    assert all(float(row[-2]) > 0 for row in rows.values())                   # seconds per step
    assert float(rows["RLOO sampling, eager"][-1]) > 0                         # decoding steps per second
