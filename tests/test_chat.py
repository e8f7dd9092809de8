"""Chat: the ChatSession logic (load, send, stream, stop, clear, context budget), the widget, side by side."""
import io
import shutil
import time

import pytest
import torch

from helpers import chat, config, formatting, generation
from conftest import loaded_chat as loaded


@pytest.mark.hostile
def test_load_reports_problems_as_messages(tmp_path, chat_model_dir):
    session = chat.ChatSession()
    missing = session.load(tmp_path / "nowhere")
    assert isinstance(missing, str) and "No checkpoint" in missing and "nowhere" in missing
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a model")
    not_model = session.load(tmp_path / "empty")
    assert isinstance(not_model, str) and "config.json" in not_model
    assert session.model is None
    assert session.load(chat_model_dir) is None and session.model is not None and session.tokenizer is not None


def test_send_ignores_empty_messages(chat_model_dir):
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=8)
    assert session.send("") is None and session.send("   ") is None and session.send("\n\t") is None
    assert session.history == []
    session.send("hello")
    before = [dict(m) for m in session.history]
    assert session.send("  ") is None and session.history == before


def record_generate(monkeypatch) -> list[list[int]]:
    """Record every reply the chat generates: [prompt tokens, new tokens] per call (`generation.stream_tokens`, the
    one loop the chat decodes with)."""
    calls, real = [], generation.stream_tokens

    def wrapped(model, prompt_ids, max_new_tokens, *args, **kwargs):
        call = [len(prompt_ids), 0]
        calls.append(call)
        for token in real(model, prompt_ids, max_new_tokens, *args, **kwargs):
            call[1] += 1
            yield token
    monkeypatch.setattr(generation, "stream_tokens", wrapped)
    return calls


def test_send_streams_the_reply_and_records_both_turns(chat_model_dir, monkeypatch):
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=12)
    pieces = []
    reply = session.send("hi", pieces.append)
    assert isinstance(reply, str) and reply.strip()          # the lively model says something
    assert "".join(pieces).strip() == reply
    assert len(pieces) >= 1
    assert session.history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]
    # greedy: the same reply as the batched evaluation path gives for the same rendered prompt
    expected = generation.generate_responses(session.model, session.tokenizer,
                                    [[{"role": "system", "content": session.system_prompt},
                                      {"role": "user", "content": "hi"}]], max_new_tokens=12, progress=False)[0]
    assert reply == expected
    # a second turn sees the first: its prompt is the whole conversation so far
    calls = record_generate(monkeypatch)
    session.send("and then?")
    assert len(session.history) == 4 and session.history[2]["content"] == "and then?"
    whole = [{"role": "system", "content": session.system_prompt}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]
    assert calls[0][0] == len(session.tokenizer(formatting.render_chat(session.tokenizer, whole, True),
                                                add_special_tokens=False)["input_ids"])


def test_clear_empties_history_and_notes(chat_model_dir):
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=4)
    session.send("hello")
    session.notes.append("something")
    session.clear()
    assert session.history == [] and session.notes == []


def _never_end(tokenizer, model, delay: float = 0.004):
    """A hook on the head: the stop tokens can never be sampled (so only max_new_tokens or Stop ends a reply),
    and each forward pass sleeps a little so the streaming thread gets to react."""
    stop_ids = generation.stop_token_ids(tokenizer)

    def hook(module, inputs, output):
        time.sleep(delay)
        output = output.clone()
        output[..., stop_ids] = float("-inf")
        return output
    return model.lm_head.register_forward_hook(hook)


def test_stop_ends_the_reply_early(chat_model_dir, monkeypatch):
    session = loaded(chat_model_dir, temperature=1.0, max_new_tokens=50)
    handle = _never_end(session.tokenizer, session.model)
    calls = record_generate(monkeypatch)
    try:
        torch.manual_seed(0)
        unstopped = session.send("tell me a joke")
        pieces = []

        def stop_on_first(piece):
            pieces.append(piece)
            if len(pieces) == 1:
                session.stop()
        torch.manual_seed(0)
        stopped = session.send("tell me a joke", stop_on_first)
    finally:
        handle.remove()
    assert calls[0][1] == 50                                 # without Stop, the reply runs to max_new_tokens
    assert len(pieces) >= 1                                  # the first piece arrived, so Stop was pressed
    assert calls[1][1] < 50                                  # ... and generation ended early
    assert len(stopped) < len(unstopped)
    assert session.history[-1] == {"role": "assistant", "content": stopped}
    # Stop does not stick: the next message is answered in full
    handle = _never_end(session.tokenizer, session.model, delay=0.0)
    try:
        session.send("again")
    finally:
        handle.remove()
    assert calls[2][1] == 50


@pytest.mark.hostile
def test_very_long_message_is_truncated_to_fit_the_context(chat_model_dir, monkeypatch):
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=16, max_context_tokens=64)
    calls = record_generate(monkeypatch)
    message = " ".join(f"word{i} tell me about the road to paris" for i in range(60))[:2000]
    assert len(message) == 2000
    reply = session.send(message)
    assert isinstance(reply, str)
    assert any("cut from the left" in note.lower() for note in session.notes)
    assert calls[0][0] + 16 <= 64                            # the rendered prompt fits the budget
    assert session.history[0]["content"] != message and len(session.history) == 2
    assert message.rstrip().endswith(session.history[0]["content"].strip()[-40:])   # the newest part is kept


@pytest.mark.hostile
def test_long_non_ascii_message_also_fits_the_context(chat_model_dir, monkeypatch):
    message = ("Crème brûlée à la française, s'il vous plaît; über Müller naïve! " * 40)[:2000]
    for context in range(60, 68):                 # different cut points: some fall inside a 2-byte character
        session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=4, max_context_tokens=context)
        calls = record_generate(monkeypatch)
        session.send(message)
        assert calls[0][0] + 4 <= context, f"prompt of {calls[0][0]} tokens for a budget of {context - 4}"
        assert not session.history[0]["content"].startswith("\ufffd")


def test_older_turns_are_dropped_before_the_new_message_is_cut(chat_model_dir, monkeypatch):
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=8, max_context_tokens=90)
    calls = record_generate(monkeypatch)
    session.send("hello there")
    session.send("how are you today")
    session.send("tell me a joke why did the chicken cross the road to get to the other side be brief")
    assert any("dropped" in note.lower() for note in session.notes)
    assert all(prompt + 8 <= 90 for prompt, _ in calls)
    assert session.history[-2]["content"].startswith("tell me a joke")


@pytest.mark.hostile
def test_render_escapes_html(chat_model_dir):
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=4)
    session.send("<b>x</b> & <script>alert(1)</script>")
    html = session.render()
    assert "&lt;b&gt;x&lt;/b&gt; &amp; &lt;script&gt;" in html
    assert "<b>x</b>" not in html and "<script>" not in html
    assert "<b>You:</b>" in html and "<b>Assistant:</b>" in html


def test_chat_widget_drives_like_a_user(chat_model_dir, output_dir):
    pytest.importorskip("ipywidgets")
    cfg = config.get_config("smoke")
    shutil.copytree(chat_model_dir, output_dir / "checkpoints" / "smoke" / "sft_masked")
    session = chat.ChatSession(temperature=0.0, max_new_tokens=8)
    box, c = chat.build_chat_widget(cfg, session)
    assert list(c["checkpoint"].options) == ["sft_masked", "(path below)"]
    assert c["checkpoint"].value == "sft_masked"
    assert session.model is not None and "ready" in c["status"].value           # loaded at once

    c["temperature"].value, c["max_new_tokens"].value = 0.0, 8
    c["message"].value = "hello there friend"      # what pressing Enter in the box does: the reply starts...
    session.wait(60)                                # ...in a background thread (the kernel stays free for Stop)
    conversation = c["conversation"].value
    assert "hello there friend" in conversation and "<b>Assistant:</b>" in conversation
    assert c["message"].value == ""                                              # the box was emptied
    assert [m["role"] for m in session.history] == ["user", "assistant"]

    c["message"].value = "   "                                                   # empty: nothing happens
    c["do_send"]()
    assert c["conversation"].value == conversation and len(session.history) == 2

    c["do_clear"]()
    assert c["conversation"].value == "" and session.history == []

    c["path"].value = str(output_dir / "no_such_model")
    c["checkpoint"].value = "(path below)"        # the observer loads at once; do_load again like the path's Enter
    c["do_load"]()
    status = c["status"].value
    assert "No checkpoint" in status and "no_such_model" in status and "Traceback" not in status


def test_chat_widget_stop_clear_and_switch_act_while_a_reply_streams(chat_model_dir, output_dir):
    """The callbacks return at once (the kernel stays free), and each control acts on a reply still streaming: Stop
    ends it within a second, Clear empties the conversation, a checkpoint switch loads the new model."""
    pytest.importorskip("ipywidgets")
    cfg = config.get_config("smoke")
    for name in ("sft_masked", "sft_unmasked"):
        shutil.copytree(chat_model_dir, output_dir / "checkpoints" / "smoke" / name)
    session = chat.ChatSession(temperature=1.0)
    _, c = chat.build_chat_widget(cfg, session)
    c["max_new_tokens"].value = 1024

    def start_long_reply():
        session.model.lm_head._forward_hooks.clear()
        _never_end(session.tokenizer, session.model, delay=0.02)      # 1024 tokens: at least 20 s
        started = time.perf_counter()
        c["message"].value = "tell me a long story"
        assert time.perf_counter() - started < 0.5 and session.busy     # Enter returned; the reply runs on
        deadline = time.perf_counter() + 30
        while "Assistant:" not in c["conversation"].value and time.perf_counter() < deadline:
            time.sleep(0.02)
        assert "generating" in c["status"].value and "Assistant:" in c["conversation"].value

    start_long_reply()
    c["message"].value = "a second message"                            # refused while busy, and kept
    assert "press Stop" in c["status"].value and c["message"].value == "a second message"
    pressed = time.perf_counter()
    c["stop"].click()
    session.wait(5)
    assert time.perf_counter() - pressed < 1.0 and not session.busy
    assert "stopped after" in c["status"].value and session.stopped
    reply = session.history[-1]["content"]
    assert 0 < len(session.tokenizer(reply)["input_ids"]) < 1024         # ended in the middle
    c["message"].value = ""

    start_long_reply()
    c["clear"].click()
    assert not session.busy and c["conversation"].value == "" and session.history == []
    assert "ready" in c["status"].value

    start_long_reply()
    c["checkpoint"].value = "sft_unmasked"
    assert not session.busy and session.model_name.endswith("sft_unmasked") and c["conversation"].value == ""
    assert "ready" in c["status"].value and "sft_unmasked" in c["status"].value


def test_chat_widget_without_checkpoints_asks_for_one(output_dir):
    pytest.importorskip("ipywidgets")
    session = chat.ChatSession()
    _, c = chat.build_chat_widget(config.get_config("smoke"), session)
    assert list(c["checkpoint"].options) == ["(path below)"]
    c["message"].value = "hello"
    c["do_send"]()
    assert "Load a checkpoint first" in c["status"].value and session.history == []


def test_side_by_side_answers_or_explains(chat_model_dir, output_dir):
    cfg = config.get_config("smoke")
    shutil.copytree(chat_model_dir, output_dir / "checkpoints" / "smoke" / "sft_masked")
    answers = chat.side_by_side(cfg, "hello", max_new_tokens=6)
    assert set(answers) == {"sft_masked", "sft_unmasked"}
    assert answers["sft_unmasked"].startswith("No checkpoint")
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=6)
    assert answers["sft_masked"] == session.send("hello")


def test_chat_cli_one_prompt(chat_model_dir):
    out = io.StringIO()
    assert chat.chat_cli(str(chat_model_dir), "hi", temperature=0.0, max_new_tokens=8, stream=out) == 0
    written = out.getvalue()
    assert written.endswith("\n") and written.strip()
    session = loaded(chat_model_dir, temperature=0.0, max_new_tokens=8)
    assert written.strip() == session.send("hi")


@pytest.mark.hostile
def test_chat_cli_missing_model(tmp_path, capsys):
    out = io.StringIO()
    assert chat.chat_cli(str(tmp_path / "missing"), "hi", stream=out) == 2
    assert "No checkpoint" in capsys.readouterr().err and out.getvalue() == ""


def test_chat_cli_interactive(chat_model_dir):
    lines = iter(["hello", "/reset", "", "quit", "never read"])
    prompts = []

    def read(prompt):
        prompts.append(prompt)
        return next(lines)
    out = io.StringIO()
    assert chat.chat_cli(str(chat_model_dir), None, temperature=0.0, max_new_tokens=6, stream=out, read=read) == 0
    text = out.getvalue()
    assert "(history cleared)" in text and text.count("assistant> ") == 1
    assert prompts == ["you> "] * 4                           # stops reading at "quit"


def test_chat_cli_interactive_ends_on_eof(chat_model_dir):
    def read(prompt):
        raise EOFError
    assert chat.chat_cli(str(chat_model_dir), None, stream=io.StringIO(), read=read) == 0
