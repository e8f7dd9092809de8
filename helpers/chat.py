"""Chat: the widget's logic as a small class (testable without a browser), the ipywidgets widget, side-by-side
answers and the terminal chat. Imports: config, modeling, formatting, generation."""
from __future__ import annotations

import sys
from pathlib import Path

from .config import Config, STAGES, device, out_path
from .modeling import load_model, load_tokenizer
from .formatting import render_chat
from .generation import stop_token_ids


class ChatSession:
    """A multi-turn chat over one checkpoint, with streaming, Stop and Clear; the widget and the CLI drive it."""

    def __init__(self, max_context_tokens: int = 2048, system_prompt: str = "You are a helpful assistant.",
                 temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 128):
        import threading
        self.max_context_tokens, self.system_prompt = max_context_tokens, system_prompt
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.model = self.tokenizer = self.model_name = None
        self.history: list[dict] = []
        self.notes: list[str] = []
        self._stop = threading.Event()

    def load(self, path) -> str | None:
        """Load a checkpoint; returns None, or a clear message when it is missing or broken (never raises)."""
        self.model = self.tokenizer = self.model_name = None   # a failed load must not leave the old model
        if not str(path).strip():
            return "No checkpoint chosen: pick one or type the path of a model directory."
        path = Path(str(path)).expanduser()
        if not path.exists():
            return f"No checkpoint at {path}."
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            return f"{path} is not a Hugging Face model directory (no config.json)."
        try:
            tokenizer, model = load_tokenizer(path), load_model(path).to(device()).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            return f"Could not load {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        self.tokenizer, self.model, self.model_name = tokenizer, model, str(path)
        return None

    def clear(self) -> None:
        self.history, self.notes = [], []

    def stop(self) -> None:
        self._stop.set()

    def _messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        return system + self.history

    def _fit_context(self) -> None:
        """Drop the oldest turns (and, last, cut the newest message from the left) until the prompt fits."""
        budget = self.max_context_tokens - self.max_new_tokens
        count = lambda: len(self.tokenizer(render_chat(self.tokenizer, self._messages(), True),
                                           add_special_tokens=False)["input_ids"])
        while count() > budget and len(self.history) > 1:
            self.history.pop(0)
            self.notes.append("Older turns were dropped to fit the context window.")
        if count() > budget:
            ids = self.tokenizer(self.history[-1]["content"], add_special_tokens=False)["input_ids"]
            keep = len(ids)
            while count() > budget and keep > 1:   # re-check: a cut inside a character re-encodes longer
                keep = max(1, keep - (count() - budget))
                self.history[-1]["content"] = self.tokenizer.decode(ids[-keep:]).lstrip("\ufffd")
            self.notes.append(f"The message was truncated from the left to its last {keep} tokens.")

    def send(self, text: str, on_token=None) -> str | None:
        """Add a user message and stream the reply (on_token(piece) for each piece); empty messages are ignored."""
        import threading
        from transformers import TextIteratorStreamer
        if not isinstance(text, str) or not text.strip():
            return None
        if self.model is None:
            raise RuntimeError("no model loaded: call load() first")
        self.history.append({"role": "user", "content": text.strip()})
        self._fit_context()
        self._stop.clear()
        enc = self.tokenizer(render_chat(self.tokenizer, self._messages(), True), return_tensors="pt",
                             add_special_tokens=False).to(next(self.model.parameters()).device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopFlag(StoppingCriteria):
            def __init__(self, event):
                self.event = event

            def __call__(self, input_ids, scores, **kwargs):
                return self.event.is_set()

        sampling = (dict(do_sample=True, temperature=self.temperature, top_p=self.top_p) if self.temperature > 0
                    else dict(do_sample=False, temperature=None, top_p=None))
        thread = threading.Thread(target=self.model.generate, kwargs=dict(
            **enc, max_new_tokens=self.max_new_tokens, streamer=streamer, eos_token_id=stop_token_ids(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([_StopFlag(self._stop)]),
            top_k=None, **sampling))
        thread.start()
        reply = ""
        for piece in streamer:
            reply += piece
            if on_token:
                on_token(piece)
        thread.join()
        self.history.append({"role": "assistant", "content": reply.strip()})
        return reply.strip()

    def render(self) -> str:
        """The conversation as HTML (escaped: model output is untrusted)."""
        import html
        parts = [f"<p><i>{html.escape(n)}</i></p>" for n in self.notes]
        for m in self.history:
            who = "You" if m["role"] == "user" else "Assistant"
            parts.append(f"<p><b>{who}:</b> {html.escape(m['content']).replace(chr(10), '<br>')}</p>")
        return "\n".join(parts)


def available_checkpoints(cfg: Config) -> dict[str, Path]:
    """Chat-able checkpoints of the profile, in pipeline order (final first); the reward model is not one."""
    order = ["final", *STAGES, "rloo_instructions"]
    root = out_path("checkpoints", cfg)
    found = [p for p in root.glob("*") if p.name in order and
             ((p / "config.json").exists() or (p / "adapter_config.json").exists())]
    return {p.name: p for p in sorted(found, key=lambda p: order.index(p.name))}


def build_chat_widget(cfg: Config, session: ChatSession | None = None):
    """The ipywidgets chat; returns (widget, controls) so a notebook or test can drive it like a user."""
    import ipywidgets as W
    session = session or ChatSession()
    choices = available_checkpoints(cfg)
    c = {"checkpoint": W.Dropdown(options=list(choices) + ["(path below)"], description="checkpoint"),
         "path": W.Text(placeholder="any Hugging Face model directory", description="path"),
         "system": W.Textarea(value=session.system_prompt, description="system"),
         "temperature": W.FloatSlider(value=session.temperature, min=0.0, max=1.5, step=0.05,
                                     description="temperature"),
         "top_p": W.FloatSlider(value=session.top_p, min=0.05, max=1.0, step=0.05, description="top_p"),
         "max_new_tokens": W.IntSlider(value=session.max_new_tokens, min=8, max=1024, step=8, description="max tokens"),
         "message": W.Text(placeholder="type a message, Enter sends", description="you"),
         "send": W.Button(description="Send", button_style="primary"), "stop": W.Button(description="Stop"),
         "clear": W.Button(description="Clear"), "status": W.HTML(), "conversation": W.HTML()}

    def load(_=None):
        name = c["checkpoint"].value
        path = c["path"].value.strip() if name == "(path below)" else choices.get(name)
        error = session.load(path or "")
        session.clear()
        c["conversation"].value = ""
        c["status"].value = f"<span style='color:#b00'>{error}</span>" if error else f"loaded <code>{path}</code>"

    def send(_=None):
        text = c["message"].value
        if not text.strip():
            return
        if session.model is None:
            c["status"].value = "<span style='color:#b00'>Load a checkpoint first.</span>"
            return
        session.system_prompt, session.temperature = c["system"].value, c["temperature"].value
        session.top_p, session.max_new_tokens = c["top_p"].value, c["max_new_tokens"].value
        c["message"].value = ""
        streamed = []

        def on_token(piece):
            streamed.append(piece)
            c["conversation"].value = session.render() + f"<p><b>Assistant:</b> {''.join(streamed)}</p>"
        session.send(text, on_token)
        c["conversation"].value = session.render()

    def clear(_=None):
        session.clear()
        c["conversation"].value = ""

    c["checkpoint"].observe(lambda change: load() if change["name"] == "value" else None, names="value")
    c["path"].on_submit(load)
    c["send"].on_click(send)
    c["message"].on_submit(send)
    c["stop"].on_click(lambda _: session.stop())
    c["clear"].on_click(clear)
    if choices:
        load()
    box = W.VBox([W.HBox([c["checkpoint"], c["path"]]), c["system"],
                  W.HBox([c["temperature"], c["top_p"], c["max_new_tokens"]]), c["status"], c["conversation"],
                  W.HBox([c["message"], c["send"], c["stop"], c["clear"]])])
    return box, {**c, "session": session, "do_send": send, "do_clear": clear, "do_load": load}


def side_by_side(cfg: Config, prompt: str, names=("sft_masked", "sft_unmasked"), max_new_tokens: int = 64) -> dict:
    """The same prompt answered greedily by two checkpoints."""
    answers = {}
    for name in names:
        session = ChatSession(temperature=0.0, max_new_tokens=max_new_tokens)
        error = session.load(out_path("checkpoints", cfg, name))
        answers[name] = error or session.send(prompt)
    return answers


def chat_cli(model_dir: str, prompt: str | None = None, temperature: float = 0.7, max_new_tokens: int = 256,
             stream=None, read=input) -> int:
    """`python -m helpers chat --model DIR [PROMPT]`: one answer and exit, or a loop (quit/exit, /reset)."""
    stream = stream or sys.stdout
    session = ChatSession(temperature=temperature, max_new_tokens=max_new_tokens)
    error = session.load(model_dir)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write = lambda piece: (stream.write(piece), stream.flush())
    if prompt is not None:
        session.send(prompt, write)
        stream.write("\n")
        return 0
    stream.write(f"Chatting with {model_dir}. 'quit' or 'exit' leaves, '/reset' clears the history.\n")
    while True:
        try:
            text = read("you> ")
        except (EOFError, KeyboardInterrupt):
            break
        if text.strip().lower() in ("quit", "exit"):
            break
        if text.strip() == "/reset":
            session.clear()
            stream.write("(history cleared)\n")
            continue
        if not text.strip():
            continue
        stream.write("assistant> ")
        session.send(text, write)
        for note in session.notes:
            stream.write(f"\n({note})")
        session.notes = []
        stream.write("\n")
    return 0
