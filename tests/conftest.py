"""Shared fixtures: an in-process tiny tokenizer, the real Qwen2.5 tokenizer (skipped when absent), and an
OUTPUT_DIR that points every test at its own temporary folder, so no test writes into the repository."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import helpers  # noqa: E402  (needs the sys.path line above)

QWEN_TOKENIZER_DIR = Path(helpers.__file__).resolve().parent.parent / "shared" / "qwen2.5-tokenizer"

# words the mask tests use in conversations, so the tiny BPE has merges for them (it would work without: byte-level)
CHAT_WORDS = ("hello there friend how are you today fine thanks tell me a joke why did the chicken cross road "
              "to get other side be brief answer short the capital of france is paris")


@pytest.fixture(autouse=True)
def output_dir(tmp_path, monkeypatch) -> Path:
    """Every output of helpers (data, checkpoints, results) goes under a per-test temp dir."""
    out = tmp_path / "output"
    monkeypatch.setenv("OUTPUT_DIR", str(out))
    return out


@pytest.fixture(scope="session")
def smoke_world() -> dict:
    return helpers.build_tiny_world(helpers.get_config("smoke").data)


@pytest.fixture(scope="session")
def tiny_tokenizer(smoke_world):
    texts = [r["text"] for r in smoke_world["pretrain"]["train"]]
    texts += [helpers.render_chat_plain(r["messages"])
              for r in smoke_world["instructions"]["train"] + smoke_world["warmstart"]["train"]]
    texts += [CHAT_WORDS] * 20
    return helpers.train_tiny_tokenizer(texts, 400)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    if not (QWEN_TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"real Qwen2.5 tokenizer not found at {QWEN_TOKENIZER_DIR}")
    return helpers.load_tokenizer(QWEN_TOKENIZER_DIR)


@pytest.fixture(params=["tiny", "qwen"])
def any_tokenizer(request):
    """Both tokenizers, for checks that must hold for each."""
    return request.getfixturevalue(f"{request.param}_tokenizer")
