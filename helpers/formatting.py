"""Chat formatting and the loss mask — one render path for masked and unmasked SFT: `build_sft_example` turns
a conversation into input_ids and labels, with the prompt's weight the only difference. Imports: data, modeling."""
from __future__ import annotations

from .data import SkipCounter, conversation_problem
from .modeling import IM_END


def render_chat(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn's content + <|im_end|>."""
    text = render_chat(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        target = message["content"] + IM_END
        if not text.startswith(prefix) or text[len(prefix):len(prefix) + len(target)] != target:
            raise ValueError("chat template does not render assistant turns as '<|im_start|>assistant\\n"
                             "…<|im_end|>' after the prompt; cannot build the loss mask")
        spans.append((len(prefix), len(prefix) + len(target)))
    return text, spans


def fit_prompts(tokenizer, conversations, max_tokens: int) -> tuple[list[bool], int]:
    """Which prompts (message lists) fit in `max_tokens` once rendered with the assistant header, and how many do
    not: RLOO, on-policy sampling and evaluation leave the long ones out (counted) instead of sampling on 4k-token
    prompts or cutting a question in half."""
    texts = [render_chat(tokenizer, c, add_generation_prompt=True) for c in conversations]
    fits = [len(ids) <= max_tokens for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    return fits, fits.count(False)


def build_sft_example(tokenizer, messages, max_length: int, prompt_loss_weight: float = 0.0) -> dict | None:
    """input_ids, attention_mask and (unshifted) labels for one conversation; None if nothing is left to train.

    Masked (weight 0): every token up to and including `<|im_start|>assistant\\n` gets label -100 — in the
    single-turn case exactly `labels[:len(prompt_ids)] = -100` — and each assistant turn's content plus its
    closing `<|im_end|>` is trained (the model must learn to stop). Unmasked (weight 1): every token is trained.
    In between, all tokens get labels and `loss_weights` carries 1 for response tokens and the weight elsewhere.
    """
    if not 0.0 <= prompt_loss_weight <= 1.0:
        raise ValueError(f"prompt_loss_weight must be in [0, 1], got {prompt_loss_weight}")
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"][:max_length]
    offsets = encoded["offset_mapping"][:max_length]
    is_response = [any(s <= start < e for s, e in spans) for start, _ in offsets]
    # position 0 is never predicted (labels shift by one inside the loss), so it cannot carry the only loss
    if not any(is_response[1:]):
        return None
    example = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
    if prompt_loss_weight == 0.0:
        example["labels"] = [t if r else -100 for t, r in zip(input_ids, is_response)]
    else:
        example["labels"] = list(input_ids)
        if prompt_loss_weight < 1.0:
            example["loss_weights"] = [1.0 if r else prompt_loss_weight for r in is_response]
    return example


def build_sft_dataset(tokenizer, conversations, max_length: int, prompt_loss_weight: float = 0.0,
                      name: str = "sft") -> tuple[list[dict], SkipCounter]:
    """Tokenize conversations once; malformed or fully truncated ones are skipped and counted, never trained."""
    skips, examples = SkipCounter(name), []
    for i, row in enumerate(conversations):
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
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length - 1] + [tokenizer.pad_token_id]
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
