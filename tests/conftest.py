"""Shared fixtures: an in-process tiny tokenizer, the real Qwen2.5 tokenizer (skipped when absent), and an
OUTPUT_DIR that points every test at its own temporary folder, so no test writes into the repository."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import chat, config, formatting, modeling, preference, tiny_world

QWEN_TOKENIZER_DIR = config.REPO_ROOT.parent / "shared" / "qwen2.5-tokenizer"
os.environ.pop("CONFIG", None)      # a config file of the shell's would change every profile the tests build
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_cli(*args, env: dict | None = None):
    """`python -m helpers ARGS` from the repository root, one thread, output captured."""
    return subprocess.run([sys.executable, "-m", "helpers", *args], cwd=config.REPO_ROOT, env=env or CLI_ENV,
                          capture_output=True, text=True, timeout=120)

# words the mask tests use in conversations, so the tiny BPE has merges for them (it would work without: byte-level)
CHAT_WORDS = ("hello there friend how are you today fine thanks tell me a joke why did the chicken cross road "
              "to get other side be brief answer short the capital of france is paris")


def pytest_addoption(parser):
    parser.addoption("--browser", action="store_true",
                     help="also run the browser tests (tests/test_browser.py: JupyterLab and TensorBoard in headless "
                          "Chromium, 3–4 minutes); make test-browser")


def pytest_collection_modifyitems(config, items):
    """The browser tests take minutes: `make test` skips them, saying how to run them; --browser runs them."""
    if config.getoption("--browser"):
        return
    skip = pytest.mark.skip(reason="browser test: run with `make test-browser` (pytest --browser)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def output_dir(tmp_path, monkeypatch) -> Path:
    """Every output of helpers (data, checkpoints, results) goes under a per-test temp dir."""
    out = tmp_path / "output"
    monkeypatch.setenv("OUTPUT_DIR", str(out))
    return out


@pytest.fixture(scope="session")
def smoke_world() -> dict:
    return tiny_world.build_tiny_world(config.get_config("smoke").data)


@pytest.fixture(scope="session")
def tiny_tokenizer(smoke_world):
    texts = [r["text"] for r in smoke_world["pretrain"]["train"]]
    texts += [formatting.render_chat_plain(r["messages"])
              for r in smoke_world["instructions"]["train"] + smoke_world["warmstart"]["train"]]
    texts += [CHAT_WORDS] * 20
    return modeling.train_tiny_tokenizer(texts, 400)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    if not (QWEN_TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"real Qwen2.5 tokenizer not found at {QWEN_TOKENIZER_DIR}")
    return modeling.load_tokenizer(QWEN_TOKENIZER_DIR)


@pytest.fixture(params=["tiny", "qwen"])
def any_tokenizer(request):
    """Both tokenizers, for checks that must hold for each."""
    return request.getfixturevalue(f"{request.param}_tokenizer")


@pytest.fixture(scope="session")
def sft_world():
    """(smoke config, a tokenizer trained on the smoke world, its tokenized SFT examples)."""
    cfg = config.get_config("smoke")
    rows = tiny_world.build_tiny_world(cfg.data)
    texts = [r["text"] for r in rows["pretrain"]["train"]]
    texts += [formatting.render_chat_plain(r["messages"]) for r in rows["warmstart"]["train"]]
    tokenizer = modeling.train_tiny_tokenizer(texts, cfg.model.vocab_size)
    examples, _ = formatting.build_sft_dataset(tokenizer, rows["instructions"]["train"] + rows["warmstart"]["train"],
                                               128)
    return cfg, tokenizer, examples


@pytest.fixture(scope="session")
def preference_world():
    """(smoke config, a tokenizer trained on the smoke world's text, its tokenized preference pairs)."""
    cfg = config.get_config("smoke")
    world = tiny_world.build_tiny_world(cfg.data)
    tokenizer = modeling.train_tiny_tokenizer([r["text"] for r in world["pretrain"]["train"]], cfg.model.vocab_size)
    pairs, _ = preference.build_pair_dataset(tokenizer, world["preferences"]["train"], 64)
    return cfg, tokenizer, pairs


def build_shared_prompt_pairs(tokenizer):
    """Pairs whose answers share a first digit (12 / 13), differ in length, or follow an earlier assistant turn."""
    user = lambda text: [{"role": "user", "content": text}]
    rows = [{"prompt": user("What is 7 + 5?"), "chosen": "12", "rejected": "13"},
            {"prompt": user("Which letter does zebra start with?"), "chosen": "z", "rejected": "the letter e"},
            {"prompt": user("Hi") + [{"role": "assistant", "content": "Hello"}] + user("What follows 8?"),
             "chosen": "9", "rejected": "7"}]
    pairs, skips = preference.build_pair_dataset(tokenizer, rows, 128)    # room for any tokenizer of the world
    assert skips.total == 0
    return pairs


@pytest.fixture
def shared_prompt_pairs():
    """The builder above: tests call it with their own tokenizer."""
    return build_shared_prompt_pairs


def lively_tiny_model(tokenizer, std: float = 0.3):
    """The tiny Qwen2 with its matrices redrawn at std 0.3: at the default 0.02 a random tied model only repeats
    "\\n", so every reply would strip to "" and checks on replies (or on their order) would pass vacuously."""
    model = modeling.build_tiny_model(tokenizer, config.get_config("smoke").model, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


@pytest.fixture(scope="session")
def lively_model(tiny_tokenizer):
    return lively_tiny_model(tiny_tokenizer).eval()


@pytest.fixture(scope="session")
def chat_model_dir(tiny_tokenizer, tmp_path_factory):
    """The lively model saved as a Hugging Face checkpoint, for the chat and the command line."""
    return modeling.save_model(lively_tiny_model(tiny_tokenizer), tmp_path_factory.mktemp("chat") / "model",
                               tiny_tokenizer)


def pytest_terminal_summary(terminalreporter):
    """One line for docs/RELIABILITY.md: how many hostile-input cases ran, how many failed, the
    slowest one."""
    reports = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "") == "call" and "hostile" in getattr(r, "keywords", {})]
    if reports:
        failed = sum(r.outcome != "passed" for r in reports)
        slowest = max(reports, key=lambda r: r.duration)
        terminalreporter.write_line(f"hostile inputs: {len(reports)} cases, {failed} failed, slowest "
                                    f"{slowest.duration * 1000:.0f} ms ({slowest.nodeid.split('::')[-1]})")


def loaded_chat(model_dir, **kwargs) -> "chat.ChatSession":
    """A ChatSession with `model_dir` loaded (`load` returns None when it succeeds, else the message)."""
    session = chat.ChatSession(**kwargs)
    assert session.load(model_dir) is None
    return session
