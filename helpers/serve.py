"""Serving a checkpoint behind an OpenAI-compatible chat-completions endpoint: transformers' own server (`transformers
serve`, the `serving` extra) pinned to one local checkpoint, with a guard in front that turns bad requests into one
clear 4xx line. Imports: config, generation."""
from __future__ import annotations

import json
from pathlib import Path

from .config import ProjectError
from .generation import stop_token_ids

# what the guard lets through to transformers' server; the rest of its routes (/load_model loads any folder or hub
# id, /reset unloads the model, /v1/responses, audio, …) are not part of this endpoint
ROUTES = {("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")}
ROLES = ("system", "user", "assistant")
MAX_BODY_BYTES = 1_000_000       # a request larger than this is refused before it is parsed
MAX_NEW_TOKENS = 1024            # the most a request may ask for (max_tokens / max_completion_tokens)
REFUSED_FIELDS = ("generation_config", "tools", "logit_bias")   # arbitrary generate() settings, tool templates, biases


class ServeError(ProjectError, RuntimeError):
    """The server cannot start: the serving extra is missing or the checkpoint is not a model folder."""


def control_tokens(tokenizer) -> list[str]:
    """Every string the tokenizer reads as a special token (<|im_start|>, <|im_end|>, <|endoftext|>, …): in a
    message's text one would open or close a turn — transformers' server tokenizes the rendered chat whole."""
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return sorted(set(tokenizer.all_special_tokens) | set(added), key=len, reverse=True)


def message_texts(message: dict) -> list[str] | None:
    """A message's text: its content string, or the text parts of a content list; None if it holds anything else."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return [p["text"] for p in content]
    return None


def request_problem(raw: bytes, name: str, served: set[str], controls: list[str]) -> tuple[str | None, dict | None]:
    """Why a chat-completions request body is refused (one line naming the field), or (None, the parsed body).
    `name`/`served`: the model's name and every name it may be asked by; `controls`: the special-token strings."""
    if len(raw) > MAX_BODY_BYTES:
        return f"the request body is {len(raw):,} bytes; at most {MAX_BODY_BYTES:,} are accepted", None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return f"the request body is not valid JSON ({type(err).__name__}: {' '.join(str(err).split())})", None
    if not isinstance(body, dict):
        return f"the request body must be a JSON object, not {type(body).__name__}", None
    if body.get("model") not in served:
        return f"unknown model {body.get('model')!r}: this server serves {name!r} (GET /v1/models)", None
    refused = [f for f in REFUSED_FIELDS if f in body]
    if refused:
        return f"field {refused[0]!r} is not accepted by this server", None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects", None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages[{i}]: 'role' must be one of {', '.join(ROLES)}", None
        texts = message_texts(message)
        if texts is None:
            return f"messages[{i}].content must be text (a string, or a list of {{type: text, text}} parts)", None
        for text in texts:
            token = next((t for t in controls if t in text), None)
            if token is not None:
                return (f"messages[{i}].content holds the control token {token!r}: message text cannot open or "
                        "close a turn — remove it"), None
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= MAX_NEW_TOKENS):
            return f"{field} = {value!r}: must be a whole number in 1 … {MAX_NEW_TOKENS}", None
    for field, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            return f"{field} = {value!r}: must be a number in [{low:g}, {high:g}]", None
    if not isinstance(body.get("stream", False), bool):
        return "stream must be true or false", None
    return None, body


async def send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def guarded(app, model_id: str, name: str, controls: list[str]):
    """The server behind an ASGI guard: only ROUTES pass; /v1/models names the one model (transformers' own lists
    the hub cache); a chat request is read whole, checked (`request_problem`) and refused with 400 and its line, or
    passed on with `model` set to the pinned checkpoint. A request may name the model `name` or its full path."""
    served = {name, model_id}

    async def guard(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        route = (scope["method"], scope["path"])
        if route not in ROUTES:
            allowed = ", ".join(f"{m} {p}" for m, p in sorted(ROUTES))
            return await send_json(send, 404, {"error": f"{route[0]} {route[1]} is not served here ({allowed})"})
        if route == ("GET", "/v1/models"):
            return await send_json(send, 200, {"object": "list", "data": [{"id": name, "object": "model",
                                                                           "owned_by": "local", "root": model_id}]})
        if route != ("POST", "/v1/chat/completions"):
            return await app(scope, receive, send)
        raw, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            raw += message.get("body", b"")
            more = message.get("more_body", False)
            if len(raw) > MAX_BODY_BYTES:
                break
        problem, body = request_problem(raw, name, served, controls)
        if problem:
            return await send_json(send, 400, {"error": {"message": problem, "type": "invalid_request_error"}})
        replay = json.dumps({**body, "model": model_id}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(replay)).encode()))
        sent = False

        async def replayed():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": replay, "more_body": False}
        return await app({**scope, "headers": headers}, replayed, send)
    return guard


def build_app(model_dir, device: str = "cpu"):
    """transformers' chat-completions server (the wiring of its `Serve` command, without the CLI), pinned to
    `model_dir` and preloaded, generation stopping where the project's does (<|im_end|> or <|endoftext|>), behind
    `guarded`. Returns (ASGI app, the model's served name)."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise ServeError(f"{model_dir} is not a model folder (no config.json): serve a checkpoint such as "
                         "checkpoints/<profile>/final")
    try:
        from transformers.cli.serving.chat_completion import ChatCompletionHandler
        from transformers.cli.serving.completion import CompletionHandler
        from transformers.cli.serving.model_manager import ModelManager
        from transformers.cli.serving.response import ResponseHandler
        from transformers.cli.serving.server import build_server
        from transformers.cli.serving.systemone import SystemOneHandler
        from transformers.cli.serving.transcription import TranscriptionHandler
        from transformers.cli.serving.utils import GenerationState
    except ImportError as err:
        raise ServeError(f"serving needs transformers' serving extra ({err.name} is missing): "
                         "pip install 'transformers[serving]'") from None
    model_id = str(model_dir)
    manager = ModelManager(device=device, dtype="auto", force_model=model_id)     # loads it now
    # a text model's processor is its tokenizer: the one the server renders and decodes with
    model, tokenizer = manager.load_model_and_processor(manager.process_model_name(model_id))
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    state = GenerationState(continuous_batching=False, compile=False, cb_config=None)
    handlers = dict(model_manager=manager, generation_state=state)
    app = build_server(manager, ChatCompletionHandler(**handlers), completion_handler=CompletionHandler(**handlers),
                       response_handler=ResponseHandler(**handlers),
                       transcription_handler=TranscriptionHandler(manager, state),
                       systemone_handler=SystemOneHandler(**handlers), generation_state=state)
    name = model_dir.name
    return guarded(app, model_id, name, control_tokens(tokenizer)), name


def serve(model_dir, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    """`python -m helpers serve --model DIR`: the endpoint on host:port until Ctrl-C."""
    import uvicorn
    app, name = build_app(model_dir, device)
    print(f"serving {name!r} ({Path(model_dir).resolve()}) at http://{host}:{port}/v1/chat/completions "
          "(OpenAI chat completions; Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
