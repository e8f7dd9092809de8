"""Chat: the widget's logic as a small class (testable without a browser), the ipywidgets widget, side-by-side
answers and the terminal chat. Imports: config, modeling, formatting, generation."""
from __future__ import annotations

import atexit
import contextlib
import html
import os
import sys
import threading
import time
import weakref
from pathlib import Path

from .config import Config, ProjectError, STAGES, device, out_path
from .modeling import IM_END, load_model, load_tokenizer
from .checkpoints import verify_checkpoint
from .formatting import encode_prompt
from .generation import stream_text

STREAM_POLL_SECONDS = 0.1    # how often a waiting reader checks that the generation thread is still alive
RENDER_EVERY_SECONDS = 0.1   # the widget redraws a streaming reply at most this often: each redraw sends the whole
                             # conversation to the browser, and a fast model would otherwise flood it


TEMPLATE_SECONDS = 10.0      # a chat template that renders longer than this is stopped (a checkpoint's template is
                             # code from its folder: one that loops 10^5 × 10^5 times would hang the chat)


class ChatError(ProjectError, RuntimeError):
    """Generation failed (bad settings, out of memory, a broken model): the message says what happened."""
    exit_code = 1


class _CallerFailed(Exception):
    """Carries an exception raised by the caller's on_token (its __cause__) through `send`'s own error handling."""


def text_problem(text: str, what: str = "the message") -> str | None:
    """Why `text` cannot be sent (characters that are not Unicode text, such as a lone surrogate from undecodable
    input), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"{what} holds characters that are not valid text ({err.reason} at position {err.start}: "
                f"{text[err.start:err.end]!r}); it was not sent — retype it or check the terminal's encoding")
    return None


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raise ChatError when the Python code inside runs longer than `seconds`: a trace function checks the clock at
    every line it runs (a Jinja chat template compiles to Python, so this stops one that loops for ever, in this
    thread, without another thread left spinning)."""
    deadline = time.monotonic() + seconds

    def check(frame, event, arg):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        return check
    previous = sys.gettrace()
    sys.settrace(check)
    try:
        yield
    except TimeoutError:
        raise ChatError(f"{what} took longer than {seconds:g} s: stopped (a checkpoint whose chat template loops?)") \
            from None
    finally:
        sys.settrace(previous)


class ChatSession:
    """A multi-turn chat over one checkpoint, with streaming, Stop and Clear; the widget and the CLI drive it.

    Model output and user text are untrusted: text is encoded so it never becomes control tokens, and `render`
    escapes everything it shows as HTML.
    """

    def __init__(self, max_context_tokens: int | None = None, system_prompt: str = "You are a helpful assistant.",
                 temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 128):
        self.max_context_tokens, self.system_prompt = max_context_tokens, system_prompt
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.model = self.tokenizer = self.model_name = None
        self.history: list[dict] = []
        self.notes: list[str] = []
        self.stopped = False         # whether the last reply was ended by Stop
        self.interrupted = False     # whether it was Ctrl-C (a terminal's Stop)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def load(self, path) -> str | None:
        """Load a checkpoint; returns None, or a clear message when it is missing or broken. Never raises: a
        checkpoint folder is untrusted input, and a failed load leaves no model (not the previous one)."""
        self.model = self.tokenizer = self.model_name = None
        if not str(path).strip():
            return "No checkpoint chosen: pick one or type the path of a model directory."
        path = Path(str(path)).expanduser()
        if not path.exists():
            return f"No checkpoint at {path}."
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            return f"{path} is not a Hugging Face model directory (no config.json)."
        try:
            verify_checkpoint(path)          # a file changed since it was saved (checksums): named, with the fix
            tokenizer, model = load_tokenizer(path), load_model(path).to(device()).eval()
        except Exception as err:      # SafetensorError, UnpicklingError, TypeError on a garbled config.json, …
            return f"Could not load {path}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        problem = tokenizer_problem(tokenizer, model)
        if problem:
            return f"Could not load {path}: {problem}"
        try:
            with time_limit(TEMPLATE_SECONDS, "rendering its chat template for one message"):
                encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
        except Exception as err:     # ChatError (too slow) or any error the template raises
            return f"Could not load {path}: {(str(err).splitlines() or [''])[0][:200]}"
        self.tokenizer, self.model, self.model_name = tokenizer, model, str(path)
        return None

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def clear(self) -> None:
        self.history, self.notes = [], []

    def stop(self) -> None:
        self._stop.set()

    def _messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        return system + self.history

    def context_tokens(self) -> int:
        """The prompt budget: the session's setting, never more than the model's position embeddings."""
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        return min(self.max_context_tokens or limit, limit)

    def _fit_context(self, reply_tokens: int) -> None:
        """Drop the oldest turns (and, last, cut the newest message from the left) until the prompt fits beside a
        reply of `reply_tokens`; each cut is said in `notes`."""
        budget = self.context_tokens() - reply_tokens
        count = lambda: len(encode_prompt(self.tokenizer, self._messages()))
        while count() > budget and len(self.history) > 1:
            self.history.pop(0)
            self.notes.append("Older turns were dropped to fit the context window.")
        if count() > budget:
            ids = self.tokenizer(self.history[-1]["content"], add_special_tokens=False,
                                 split_special_tokens=True)["input_ids"]
            keep = len(ids)
            while count() > budget and keep > 1:   # re-check: a cut inside a character re-encodes longer
                keep = max(1, keep - (count() - budget))
                self.history[-1]["content"] = self.tokenizer.decode(ids[-keep:]).lstrip("\ufffd")
            self.notes.append(f"The message was cut from the left to its last {keep} of {len(ids)} tokens to fit "
                              f"the {self.context_tokens()}-token context beside a {reply_tokens}-token reply.")
            if count() > budget:
                raise ChatError(f"the prompt does not fit the model's {self.context_tokens()}-token context even "
                                "with the message cut to one token (a long system prompt?)")

    def reply_budget(self) -> int:
        """New tokens a reply may take: `max_new_tokens`, but never more than half the context, so the reply
        budget cannot eat the room for the message (a 256-token reply in a 256-token context would cut the
        message to nothing)."""
        return max(1, min(self.max_new_tokens, self.context_tokens() // 2))

    def send(self, text: str, on_token=None) -> str | None:
        """Add a user message and stream the reply (on_token(piece) for each piece); empty messages are ignored.

        Everything from encoding the message to decoding the reply runs inside one guarded path in this thread:
        any failure raises ChatError with one line and takes the turn back, so the next message starts clean.
        Stop (or Ctrl-C, in a terminal) ends the reply and keeps what was said so far."""
        if not isinstance(text, str) or not text.strip():
            return None
        if self.model is None:
            raise ChatError("no model loaded: choose a checkpoint first")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ChatError(f"max_new_tokens must be a whole number ≥ 1, got {self.max_new_tokens!r}")
        if not 0 <= self.temperature <= 10 or not 0 < self.top_p <= 1:
            raise ChatError(f"temperature must be in [0, 10] and top_p in (0, 1], got {self.temperature}, "
                            f"{self.top_p}")
        problem = text_problem(text) or text_problem(self.system_prompt, "the system prompt")
        if problem:
            raise ChatError(problem)
        history, notes = list(self.history), list(self.notes)
        self.history.append({"role": "user", "content": text.strip()})
        self._stop.clear()
        self.interrupted = False
        reply = ""
        try:
            budget = self.reply_budget()
            if budget < self.max_new_tokens:
                self.notes.append(f"Replies are capped at {budget} tokens: half of this model's "
                                  f"{self.context_tokens()}-token context, so that the message keeps the other half.")
            with time_limit(TEMPLATE_SECONDS, "rendering the chat template"):
                self._fit_context(budget)
                prompt = encode_prompt(self.tokenizer, self._messages())
            try:
                for piece in stream_text(self.model, self.tokenizer, prompt, budget, self.temperature, self.top_p,
                                         self._stop.is_set):
                    reply += piece
                    if on_token:
                        try:
                            on_token(piece)
                        except Exception as err:      # the caller's own failure (a closed pipe): passed on as it is
                            raise _CallerFailed() from err
            except KeyboardInterrupt:          # Ctrl-C in a terminal: the reply ends, the session goes on
                self._stop.set()
                self.interrupted = True
        except ChatError:
            self.history, self.notes = history, notes      # the turn never happened
            raise
        except _CallerFailed as failed:
            self.history, self.notes = history, notes
            raise failed.__cause__ from None
        except Exception as err:              # tokenizer, template, model or device: one line, the turn taken back
            self.history, self.notes = history, notes
            raise ChatError(f"generation failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}") \
                from None
        self.stopped = self._stop.is_set()
        self.history.append({"role": "assistant", "content": reply.strip()})
        return reply.strip()

    def start(self, text: str, on_token=None, on_done=None) -> bool:
        """`send` in a background thread, so the caller (a widget callback) returns at once and Stop, Clear and
        switching checkpoints are handled while the reply streams. on_done(reply, error) is called at the end.
        Returns False (and starts nothing) while a reply is still streaming."""
        if self.busy:
            return False

        def run():
            try:
                reply, error = self.send(text, on_token), None
            except ChatError as err:
                reply, error = None, str(err)
            if on_done:
                on_done(reply, error)
        self._worker = threading.Thread(target=run, daemon=True)
        _replying(self)
        self._worker.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self._worker is not None:
            self._worker.join(timeout)

    def render(self, streaming: str | None = None) -> str:
        """The conversation as HTML — every text escaped (model output and user text are untrusted), the reply
        being streamed included."""
        parts = [f"<p><i>{html.escape(n)}</i></p>" for n in self.notes]
        turns = self.history + ([{"role": "assistant", "content": streaming}] if streaming is not None else [])
        for m in turns:
            who = "You" if m["role"] == "user" else "Assistant"
            parts.append(f"<p><b>{who}:</b> {html.escape(m['content']).replace(chr(10), '<br>')}</p>")
        return "\n".join(parts)


# Sessions whose reply thread may still run: at exit each is stopped and waited for (Stop acts within a token), so
# the interpreter never ends with a thread inside a forward pass — that aborts the process (distributed.finish).
_REPLYING: "weakref.WeakSet[ChatSession]" = weakref.WeakSet()


def _stop_replies_at_exit() -> None:
    for session in list(_REPLYING):
        session.stop()
        session.wait(timeout=10)


def _replying(session) -> None:
    """Track a session whose reply runs in a thread; the exit hook is registered with the first (not at import)."""
    if not _REPLYING:
        atexit.unregister(_stop_replies_at_exit)
        atexit.register(_stop_replies_at_exit)
    _REPLYING.add(session)


def tokenizer_problem(tokenizer, model) -> str | None:
    """Why this tokenizer cannot drive this model (files missing, another vocabulary), or None."""
    rows = model.get_input_embeddings().weight.shape[0]
    if IM_END not in tokenizer.get_vocab() or tokenizer.chat_template is None:
        return "its tokenizer has no ChatML template or <|im_end|> token (tokenizer files missing or foreign?)"
    if len(tokenizer) > rows:
        return f"its tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows"
    return None


def available_checkpoints(cfg: Config) -> dict[str, Path]:
    """Chat-able checkpoints of the profile, in pipeline order (final first); the reward model is not one."""
    order = ["final", *STAGES]
    root = out_path("checkpoints", cfg)
    found = [p for p in root.glob("*") if p.name in order and
             ((p / "config.json").exists() or (p / "adapter_config.json").exists())]
    return {p.name: p for p in sorted(found, key=lambda p: order.index(p.name))}


def status_html(text: str, error: bool = False) -> str:
    """The widget's status line, escaped (it shows typed paths and error messages)."""
    return f"<span style='color:{'#b00' if error else '#555'}'>{html.escape(text)}</span>"


def build_chat_widget(cfg: Config, session: ChatSession | None = None):
    """The ipywidgets chat; returns (widget, controls) so a notebook or test can drive it like a user.

    Send (or Enter in the message box) starts the reply in a background thread and returns. A callback that
    generated the whole reply would hold Stop's click until the reply was over (ipykernel 6 handles widget messages
    one at a time), and Clear could not wait for it to end. So Stop ends the thread's reply within a token, and
    Clear and a checkpoint switch stop it and wait for it, so nothing it draws lands after them. The status line
    says what is happening: loading, generating (for how long), stopped or answered."""
    import ipywidgets as W
    session = session or ChatSession()
    choices = available_checkpoints(cfg)
    c = {"checkpoint": W.Dropdown(options=list(choices) + ["(path below)"], description="checkpoint"),
         "path": W.Text(placeholder="any Hugging Face model directory", description="path", continuous_update=False),
         "system": W.Textarea(value=session.system_prompt, description="system"),
         "temperature": W.FloatSlider(value=session.temperature, min=0.0, max=1.5, step=0.05,
                                      description="temperature"),
         "top_p": W.FloatSlider(value=session.top_p, min=0.05, max=1.0, step=0.05, description="top_p"),
         "max_new_tokens": W.IntSlider(value=session.max_new_tokens, min=8, max=1024, step=8, description="max tokens"),
         # continuous_update=False: the box sends its text when Enter is pressed (or it loses focus), and that
         # change is what sends the message — the widget's separate "submit" event can overtake the text
         "message": W.Text(placeholder="type a message, Enter sends", description="you", continuous_update=False),
         "send": W.Button(description="Send", button_style="primary"), "stop": W.Button(description="Stop"),
         "clear": W.Button(description="Clear"), "status": W.HTML(), "conversation": W.HTML()}
    for name in ("message", "status", "conversation"):
        c[name].add_class(f"chat-{name}")        # what a browser test (or a stylesheet) finds them by
    ready = lambda: status_html(f"ready · {session.model_name}") if session.model is not None else ""

    def load(_=None):
        session.stop()
        session.wait()
        name = c["checkpoint"].value
        path = c["path"].value.strip() if name == "(path below)" else choices.get(name)
        c["status"].value = status_html(f"loading {path or '…'}")
        error = session.load(path or "")
        session.clear()
        c["conversation"].value = ""
        c["status"].value = status_html(error, error=True) if error else ready()

    def send(_=None):
        text = c["message"].value
        if not text.strip():
            return
        if session.model is None:
            c["status"].value = status_html("Load a checkpoint first.", error=True)
            return
        if session.busy:
            c["status"].value = status_html("Still answering: press Stop, then Send.", error=True)
            return
        session.system_prompt, session.temperature = c["system"].value, c["temperature"].value
        session.top_p, session.max_new_tokens = c["top_p"].value, c["max_new_tokens"].value
        c["message"].value = ""
        streamed: list[str] = []
        started, drawn = time.perf_counter(), [0.0]

        def on_token(piece):              # in the generation thread; widget updates are thread-safe messages
            streamed.append(piece)
            now = time.perf_counter()
            if now - drawn[0] >= RENDER_EVERY_SECONDS:
                drawn[0] = now
                c["conversation"].value = session.render(streaming="".join(streamed))
                c["status"].value = status_html(f"generating… {now - started:.1f} s (Stop ends the reply)")

        def on_done(reply, error):
            c["conversation"].value = session.render()
            seconds = time.perf_counter() - started
            done = f"stopped after {seconds:.1f} s" if session.stopped else f"answered in {seconds:.1f} s"
            c["status"].value = status_html(error, error=True) if error else status_html(
                f"{done} · {session.model_name}")
        c["status"].value = status_html("generating…")
        session.start(text, on_token, on_done)

    def clear(_=None):
        session.stop()
        session.wait()
        session.clear()
        c["conversation"].value = ""
        c["status"].value = ready()

    c["checkpoint"].observe(lambda change: load(), names="value")
    c["path"].observe(lambda change: load() if c["checkpoint"].value == "(path below)" else None, names="value")
    c["send"].on_click(send)
    c["message"].observe(lambda change: send() if change["new"].strip() else None, names="value")
    c["stop"].on_click(lambda _: session.stop())
    c["clear"].on_click(clear)
    if choices:
        load()
    # the message box and Stop above the conversation: a long reply grows downwards without pushing Stop away
    box = W.VBox([W.HBox([c["checkpoint"], c["path"]]), c["system"],
                  W.HBox([c["temperature"], c["top_p"], c["max_new_tokens"]]),
                  W.HBox([c["message"], c["send"], c["stop"], c["clear"]]), c["status"], c["conversation"]])
    return box, {**c, "session": session, "do_send": send, "do_clear": clear, "do_load": load}


def side_by_side(cfg: Config, prompt: str, names=("sft_masked", "sft_unmasked"), max_new_tokens: int = 64) -> dict:
    """The same prompt answered greedily by two checkpoints."""
    answers = {}
    for name in names:
        session = ChatSession(temperature=0.0, max_new_tokens=max_new_tokens)
        error = session.load(out_path("checkpoints", cfg, name))
        try:
            answers[name] = error or session.send(prompt)
        except ChatError as err:
            answers[name] = str(err)
    return answers


def chat_cli(model_dir: str, prompt: str | None = None, temperature: float = 0.7, max_new_tokens: int = 256,
             stream=None, read=input, errors=None) -> int:
    """`python -m helpers chat --model DIR [PROMPT]`: one answer and exit, or a loop (quit/exit, /reset).

    Exit codes: 0 done; 1 generation failed; 2 bad arguments or an unloadable model; 130 a one-shot reply stopped
    by Ctrl-C. In the loop, Ctrl-C ends the reply and the session goes on (at the prompt it leaves). A closed stdout
    (a pipe into `head`) or stdin ends quietly, never with a traceback. Notes (a message cut to fit, a capped
    reply) go to stderr."""
    stream, errors = stream or sys.stdout, errors or sys.stderr
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        print(f"error: --max-new-tokens must be ≥ 1, got {max_new_tokens}", file=errors)
        return 2
    if prompt is not None and not prompt.strip():
        print("error: the prompt is empty: give a message, or leave it out to chat interactively", file=errors)
        return 2
    session = ChatSession(temperature=temperature, max_new_tokens=max_new_tokens)
    error = session.load(model_dir)
    if error:
        print(f"error: {error}", file=errors)
        return 2
    write = lambda piece: (stream.write(piece), stream.flush())

    def answer(text: str) -> None:
        session.send(text, write)
        stream.write("\n")
        if session.interrupted:
            stream.write("(stopped)\n")
        stream.flush()
        for note in session.notes:
            print(f"({note})", file=errors)
        session.notes = []
    try:
        if prompt is not None:
            answer(prompt)
            return 130 if session.interrupted else 0
        stream.write(f"Chatting with {model_dir}. 'quit' or 'exit' leaves, '/reset' clears the history, "
                     "Ctrl-C stops a reply.\n")
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
            try:
                answer(text)
            except ChatError as err:       # this turn failed; the session goes on
                print(f"\nerror: {err}", file=errors)
        return 0
    except ChatError as err:
        print(f"\nerror: {err}", file=errors)
        return 1
    except (BrokenPipeError, ValueError, OSError) as err:    # stdout closed under us (ValueError: I/O on closed file)
        if isinstance(err, ValueError) and "closed file" not in str(err):
            raise
        if stream is sys.stdout:          # or Python's own flush at exit would print the broken pipe again
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
