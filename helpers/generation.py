"""Generation: batched greedy or sampled responses to chat prompts (left padding, KV cache, stop at
<|im_end|>, LoRA merged for the duration, a repeated prompt's cache computed once), and k samples per prompt with
their exact token ids for RLOO.
Prompts are encoded with `encode_chat`: text in a message never becomes a control token.
Imports: modeling, formatting, batching."""
from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache

from .modeling import ENDOFTEXT, IM_END, autocast_context, merged_adapters, model_device
from .formatting import encode_prompt
from .batching import collate, token_budget_batches
from .logger import progress_bar


def stop_token_ids(tokenizer) -> list[int]:
    """Generation stops at <|im_end|> or <|endoftext|> — whichever the tokenizer calls eos (base vs instruct)."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in (IM_END, ENDOFTEXT) if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


# Tokens (rows × (prompt + new tokens)) of one generate call. The KV cache and the per-step logits grow with it;
# 65,536 is ~0.8 GiB of Qwen2.5-0.5B bf16 cache. `batch_size` caps the rows as well.
GENERATION_TOKENS = 65_536


@contextlib.contextmanager
def generation_mode(model):
    """Eval mode, LoRA merged into the weights and bf16 autocast on CUDA — restored afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        with merged_adapters(model), autocast_context(model_device(model)):
            yield
    finally:
        model.train(was_training)


def left_padded(prompt_ids: list[list[int]], pad_id: int, device) -> dict:
    """Prompts padded on the left: generation continues from the right edge of every row."""
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in prompt_ids]
    return {k: v.to(device) for k, v in collate(rows, pad_id, padding_side="left").items()}


def shared_prompt_cache(model, enc: dict):
    """The KV cache of every prompt row but its last token, computed once per distinct prompt and copied to the
    rows that repeat it: k samples of one prompt cost one prompt's forward, not k (the prefill of 8 samples of a
    122-token prompt was a third of an RLOO sampling call). None when no row repeats another. `generate` then
    feeds only the last prompt token; positions count real tokens, as `generate` counts them under left padding."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    distinct: dict[tuple, int] = {}
    rows = [distinct.setdefault(tuple(row.tolist()), len(distinct)) for row in ids]
    if len(distinct) == len(rows) or ids.shape[1] < 2:
        return None
    first = [rows.index(j) for j in range(len(distinct))]
    once_ids, once_mask = ids[first, :-1], mask[first, :-1]
    positions = (once_mask.long().cumsum(-1) - 1).masked_fill(once_mask == 0, 0)
    cache = DynamicCache(config=model.config)
    model(input_ids=once_ids, attention_mask=once_mask, position_ids=positions, past_key_values=cache,
          use_cache=True, logits_to_keep=1)
    cache.batch_select_indices(torch.tensor(rows, device=ids.device))
    return cache


@torch.no_grad()
def generate_responses(model, tokenizer, conversations, batch_size: int = 32, max_new_tokens: int = 64,
                       temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                       progress: bool = True, token_budget: int = GENERATION_TOKENS) -> list[str]:
    """Responses to chat prompts (lists of messages): batched with left padding and the KV cache, greedy unless
    temperature > 0, stopping at <|im_end|> / <|endoftext|>, special tokens stripped. Batches are the longest
    prompts first, sized by `token_budget` (and at most `batch_size` rows); results come back in input order."""
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if temperature > 0:
        torch.manual_seed(seed)
    prompts = [encode_prompt(tokenizer, c) for c in conversations]
    batches = token_budget_batches([len(p) + max_new_tokens for p in prompts], token_budget, max_rows=batch_size)
    responses = [None] * len(prompts)
    with generation_mode(model):
        for idx in progress_bar(batches, desc="generate", disable=not progress):
            enc = left_padded([prompts[i] for i in idx], tokenizer.pad_token_id, model_device(model))
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                                 pad_token_id=tokenizer.pad_token_id, past_key_values=shared_prompt_cache(model, enc),
                                 **sampling)
            for row, i in enumerate(idx):
                responses[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1]:],
                                                skip_special_tokens=True).strip()
    return responses


def generate_eval(model, tokenizer, conversations, eval_cfg, **sampling) -> list[str]:
    """`generate_responses` with the profile's evaluation settings (rows, new tokens, token budget); greedy unless
    `sampling` says otherwise (temperature, top_p, top_k, seed)."""
    return generate_responses(model, tokenizer, conversations, eval_cfg.batch_size, eval_cfg.max_new_tokens,
                              progress=False, token_budget=eval_cfg.generation_tokens, **sampling)


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, k: int, max_new_tokens: int, temperature: float):
    """k samples per prompt in one batched generate call (left padding, KV cache, stop at <|im_end|>/<|endoftext|>).

    Returns the sampled token ids themselves (not re-tokenized text), so the policy-gradient step scores exactly
    what was sampled: a list of {"prompt_ids", "response_ids", "text"} of length len(prompts) * k, prompt-major.
    """
    stops = stop_token_ids(tokenizer)
    with generation_mode(model):
        enc = left_padded([encode_prompt(tokenizer, p) for p in prompts for _ in range(k)], tokenizer.pad_token_id,
                          model_device(model))
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                             past_key_values=shared_prompt_cache(model, enc))
    width = enc["input_ids"].shape[1]
    samples = []
    for row in range(out.shape[0]):
        prompt_row = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        response = out[row, width:].tolist()
        cut = next((i + 1 for i, t in enumerate(response) if t in stops), len(response))  # keep the stop token
        samples.append({"prompt_ids": prompt_row, "response_ids": response[:cut],
                        "text": tokenizer.decode(response[:cut], skip_special_tokens=True).strip()})
    return samples
