"""Chat formatting and the loss mask — one render path for masked and unmasked SFT: `build_sft_example` turns
a conversation into input_ids and labels, with the prompt's weight the only difference. Imports: data, modeling."""
from __future__ import annotations

from .data import SkipCounter, conversation_problem, objects
from .modeling import IM_END


def render_chat(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it (for reading; `encode_chat` turns it into token ids)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# A message's text stands in the template as a marker (private-use characters no text contains), so the rendering
# splits into the template's own pieces and the messages' texts, each encoded its own way.
_MARK = "\ue000{}\ue001"
CHARS_PER_TOKEN_CAP = 32    # no BPE token here is longer: cut a huge text to max_tokens × this before encoding it


def _template_piece(tokenizer, text: str, closes_assistant: bool) -> tuple[list[int], list[bool]]:
    """A piece of the template itself (its special tokens are real); after an assistant turn it must open with the
    turn's <|im_end|>, which masked SFT trains so the model learns to stop."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if closes_assistant and (not ids or tokenizer.convert_ids_to_tokens(ids[0]) != IM_END):
        raise ValueError("chat template does not close assistant turns with <|im_end|>; cannot build the loss mask")
    return ids, [closes_assistant and i == 0 for i in range(len(ids))]


def encode_chat(tokenizer, messages, add_generation_prompt: bool = False, max_tokens: int | None = None):
    """Token ids of a conversation, and per token whether masked SFT trains it (assistant text + its <|im_end|>).

    Message text is content, never control: it is encoded with `split_special_tokens=True`, so "<|im_end|>" typed by
    a user — or written by a model, or found in a dataset — stays those characters and cannot close a turn or open a
    fake one. Only the template's own pieces carry special tokens. `max_tokens` stops early (a 1 MB message is not
    tokenized in full to keep 1,024 tokens of it).
    """
    limit = max_tokens if max_tokens is not None else float("inf")
    text = render_chat(tokenizer, [dict(m, content=_MARK.format(i)) for i, m in enumerate(messages)],
                       add_generation_prompt)
    ids, trained, pos, after_assistant = [], [], 0, False
    for i, message in enumerate(messages):
        at = text.find(_MARK.format(i), pos)
        if at < 0:
            raise ValueError("the chat template changed a message's text; cannot encode it safely")
        piece_ids, piece_trained = _template_piece(tokenizer, text[pos:at], after_assistant)
        content = message["content"]
        if max_tokens is not None:        # enough characters for what is left of the budget, not the whole text
            content = content[:max(0, max_tokens - len(ids) - len(piece_ids)) * CHARS_PER_TOKEN_CAP]
        body = tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        after_assistant = message["role"] == "assistant"
        ids += piece_ids + body
        trained += piece_trained + [after_assistant] * len(body)
        pos = at + len(_MARK.format(i))
        if len(ids) >= limit:
            return ids[:max_tokens], trained[:max_tokens]
    piece_ids, piece_trained = _template_piece(tokenizer, text[pos:], after_assistant)
    ids, trained = ids + piece_ids, trained + piece_trained
    return (ids[:max_tokens], trained[:max_tokens]) if max_tokens is not None else (ids, trained)


def encode_prompt(tokenizer, messages) -> list[int]:
    """Token ids of a prompt with the assistant header after it: what generation continues from."""
    return encode_chat(tokenizer, messages, add_generation_prompt=True)[0]


def fit_prompts(tokenizer, conversations, max_tokens: int) -> tuple[list[bool], int]:
    """Which prompts (message lists) fit in `max_tokens` once rendered with the assistant header, and how many do
    not: RLOO, on-policy sampling and evaluation leave the long ones out (counted) instead of sampling on 4k-token
    prompts or cutting a question in half."""
    fits = [len(encode_chat(tokenizer, c, True, max_tokens + 1)[0]) <= max_tokens for c in conversations]
    return fits, fits.count(False)


def build_sft_example(tokenizer, messages, max_length: int, prompt_loss_weight: float = 0.0) -> dict | None:
    """input_ids, attention_mask and (unshifted) labels for one conversation; None if nothing is left to train.

    Masked (weight 0): every token up to and including `<|im_start|>assistant\\n` gets label -100 — in the
    single-turn case exactly `labels[:len(prompt_ids)] = -100` — and each assistant turn's content plus its
    closing `<|im_end|>` is trained (the model must learn to stop). Unmasked (weight 1): every token is trained.
    In between, all tokens get labels and `loss_weights` carries 1 for response tokens and the weight elsewhere.
    Message text never becomes control tokens (`encode_chat`).
    """
    if not 0.0 <= prompt_loss_weight <= 1.0:
        raise ValueError(f"prompt_loss_weight must be in [0, 1], got {prompt_loss_weight}")
    input_ids, is_response = encode_chat(tokenizer, messages, max_tokens=max_length)
    # position 0 is never predicted (labels shift by one inside the loss), so it cannot carry the only loss
    if not any(is_response[1:]):
        return None
    example = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
    if prompt_loss_weight == 0.0:
        example["labels"] = [t if r else -100 for t, r in zip(input_ids, is_response)]
    else:
        example["labels"] = list(input_ids)
        example["response"] = [int(r) for r in is_response]     # for a loss normalised by response tokens
        if prompt_loss_weight < 1.0:
            example["loss_weights"] = [1.0 if r else prompt_loss_weight for r in is_response]
    return example


def build_sft_dataset(tokenizer, conversations, max_length: int, prompt_loss_weight: float = 0.0,
                      name: str = "sft") -> tuple[list[dict], SkipCounter]:
    """Tokenize conversations once; malformed or fully truncated ones are skipped and counted, never trained."""
    skips, examples = SkipCounter(name), []
    for i, row in objects(conversations, skips):
        problem = conversation_problem(row.get("messages"))
        if problem is None and next(m["role"] for m in row["messages"] if m["role"] != "system") != "user":
            problem = "conversation does not start with a user message"
        if problem:
            skips.skip(i, problem)
            continue
        example = build_sft_example(tokenizer, row["messages"], max_length, prompt_loss_weight)
        if example is None:
            skips.skip(i, f"no trainable token left after truncation to {max_length}")
            continue
        examples.append(example)
    return examples, skips


def build_lm_example(tokenizer, text: str, max_length: int) -> dict | None:
    """Plain text (pre-training): every token is trained; ends with <|endoftext|> like a document."""
    ids = tokenizer(text[:max_length * CHARS_PER_TOKEN_CAP], add_special_tokens=False,
                    split_special_tokens=True)["input_ids"][:max_length - 1] + [tokenizer.pad_token_id]
    if len(ids) < 2:
        return None
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def show_mask(tokenizer, example: dict, width: int = 100) -> str:
    """The tokens of an example, trained ones in [brackets] (with their weight when fractional)."""
    parts = []
    weights = example.get("loss_weights")
    for i, (tok_id, label) in enumerate(zip(example["input_ids"], example["labels"])):
        piece = tokenizer.decode([tok_id]).replace("\n", "\\n")
        if label == -100:
            parts.append(piece)
        elif weights is not None and weights[i] < 1:
            parts.append(f"[{piece}]{weights[i]:g}")
        else:
            parts.append(f"[{piece}]")
    line, lines = "", []
    for part in parts:
        if len(line) + len(part) + 1 > width:
            lines.append(line)
            line = ""
        line += part + "·"
    return "\n".join(lines + [line])


def render_chat_plain(messages) -> str:
    """Conversation text without special tokens: only so the tokenizer's merges cover the chat's words."""
    return "system\nYou are a helpful assistant.\n" + "\n".join(f"{m['role']}\n{m['content']}" for m in messages)
