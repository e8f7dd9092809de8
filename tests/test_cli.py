"""The command line: `python -m helpers` answers --help and chats with one prompt exactly as ChatSession does (the
notebook runner behind `run-notebook`: test_runner.py)."""
from conftest import run_cli
from helpers import chat


def test_help_lists_every_command():
    done = run_cli("--help")
    assert done.returncode == 0 and "python -m helpers" in done.stdout
    for command in ("data", "train", "chat", "run-notebook"):
        assert command in done.stdout


def test_chat_command_line(chat_model_dir):
    done = run_cli("chat", "--model", str(chat_model_dir), "hi", "--temperature", "0", "--max-new-tokens", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    session = chat.ChatSession(temperature=0.0, max_new_tokens=5)
    assert session.load(chat_model_dir) is None
    assert done.stdout.strip() == session.send("hi")
