"""Generation: batched greedy or sampled responses to chat prompts (left padding, KV cache, stop at
<|im_end|>, LoRA merged for the duration, a repeated prompt's cache computed once), and k samples per prompt drawn
from the policy itself, with their exact token ids, for RLOO and RFT (finished rows leave the batch); plain-text
continuations for a base model's prompts (self-instruct).
Prompts are encoded with `encode_chat`: text in a message never becomes a control token.
Imports: modeling, formatting, batching."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import time

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


def kv_bytes_per_token(model) -> int:
    """Bytes one token takes in the KV cache: layers × (keys and values) × KV heads × head size × `cache_dtype`."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * cache_dtype(model).itemsize


def free_gpu_bytes(device) -> int | None:
    """Free memory of a CUDA device in bytes — the driver's free memory plus what PyTorch's allocator holds unused
    (freed activations it keeps cached); None for any other device."""
    if torch.device(device).type != "cuda":
        return None
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


def memory_rows(model, row_tokens: int, memory_share: float | None) -> int | None:
    """How many rows of `row_tokens` (prompt + new tokens) one sampling call may hold in `memory_share` of the GPU's
    free memory: each row's KV cache and its step's fp32 logits, softmax and probabilities (3 × vocab × 4 bytes).
    Decoding a 0.5B model is launch-bound — a step costs about as much for 512 rows as for 64 — so the widest call
    that fits takes the fewest steps. None off CUDA or without a share: the configured sizes hold (tiny's samples
    stay the ones they were)."""
    free = None if memory_share is None else free_gpu_bytes(model_device(model))
    if free is None:
        return None
    per_row = row_tokens * kv_bytes_per_token(model) + 3 * 4 * model.config.vocab_size
    return max(1, int(free * memory_share // per_row))


def rollout_prompts(model, tokenizer, prompts, k: int, max_new_tokens: int, memory_share: float | None) -> int | None:
    """Prompts per sampling call of RLOO's and RFT's rollouts (k rows each): as many as `memory_share` of the free
    GPU memory holds at the longest prompt; None off CUDA or without a share (one micro-batch a call, as before)."""
    if memory_share is None or free_gpu_bytes(model_device(model)) is None:
        return None
    longest = max((len(encode_prompt(tokenizer, p)) for p in prompts), default=0)
    return max(1, memory_rows(model, longest + max_new_tokens, memory_share) // k)


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


def real_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted over real tokens only, as `generate` counts them under left padding."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def cache_dtype(model) -> torch.dtype:
    """The KV cache's dtype: bf16 where generation runs under CUDA's bf16 autocast — attention casts its keys and
    values to bf16 there anyway, so storing them so changes no result and halves the cache (RoPE's fp32 cos/sin
    would make the keys fp32) — else the weights' own (the CPU: nothing changes)."""
    return torch.bfloat16 if model_device(model).type == "cuda" else next(model.parameters()).dtype


@functools.cache
def casting_layer(base: type) -> type:
    """A cache layer class that stores what it is given in its `dtype` (its keys' and values' dtypes may differ)."""
    class Casting(base):
        def update(self, key_states, value_states, *args, **kwargs):
            return super().update(key_states.to(self.dtype_kept), value_states.to(self.dtype_kept), *args, **kwargs)
    Casting.__name__ = f"Casting{base.__name__}"
    return Casting


def cast_cache(cache, dtype: torch.dtype):
    """`cache` with its (dynamic or static) layers storing keys and values in `dtype`."""
    from transformers.cache_utils import DynamicLayer, StaticLayer
    for layer in cache.layers:
        if type(layer) in (DynamicLayer, StaticLayer):
            layer.__class__, layer.dtype_kept = casting_layer(type(layer)), dtype
    return cache


def new_cache(model):
    """An empty DynamicCache storing keys and values in `cache_dtype`."""
    return cast_cache(DynamicCache(config=model.config), cache_dtype(model))


def prefilled_cache(model, ids: torch.Tensor, mask: torch.Tensor):
    """The KV cache of `ids` (left-padded rows), computed in one forward pass."""
    cache = new_cache(model)
    if ids.shape[1]:
        model(input_ids=ids, attention_mask=mask, position_ids=real_positions(mask), past_key_values=cache,
              use_cache=True, logits_to_keep=1)
    return cache


def shared_prompt_cache(model, enc: dict):
    """The KV cache of every prompt row but its last token, computed once per distinct prompt and copied to the
    rows that repeat it: k samples of one prompt cost one prompt's forward, not k (the prefill of 8 samples of a
    122-token prompt was a third of an RLOO sampling call). None when no row repeats another. The last prompt token
    is then fed with the first decoding step."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    distinct: dict[tuple, int] = {}
    rows = [distinct.setdefault(tuple(row.tolist()), len(distinct)) for row in ids]
    if len(distinct) == len(rows) or ids.shape[1] < 2:
        return None
    first = [rows.index(j) for j in range(len(distinct))]
    cache = prefilled_cache(model, ids[first, :-1], mask[first, :-1])
    cache.batch_select_indices(torch.tensor(rows, device=ids.device))
    return cache


@torch.no_grad()
def generate_responses(model, tokenizer, conversations, batch_size: int = 32, max_new_tokens: int = 64,
                       temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                       progress: bool = True, token_budget: int = GENERATION_TOKENS,
                       memory_share: float | None = None, compiled: bool = False) -> list[str]:
    """Responses to chat prompts (lists of messages): batched with left padding and the KV cache, greedy unless
    temperature > 0, stopping at <|im_end|> / <|endoftext|>, special tokens stripped. Batches are the longest
    prompts first, sized by `token_budget` (and at most `batch_size` rows); results come back in input order.
    Plain temperature sampling (top_p 1, top_k 0: DPO's on-policy samples) is drawn by `sample_policy`, the same
    samples as `generate`'s without running finished rows; the rest by `generate`. On CUDA with `memory_share`, a
    call holds as many rows of the longest prompt as that share of free memory does (`memory_rows`) instead."""
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if temperature > 0:
        torch.manual_seed(seed)
    prompts = [encode_prompt(tokenizer, c) for c in conversations]
    row = max(map(len, prompts), default=0) + max_new_tokens
    rows = memory_rows(model, row, memory_share)
    if rows is not None:
        batch_size, token_budget = rows, rows * row
    batches = token_budget_batches([len(p) + max_new_tokens for p in prompts], token_budget, max_rows=batch_size)

    def decode(some) -> dict[int, list[int]]:      # {prompt index: new token ids} of these batches
        out = {}
        for idx in progress_bar(some, desc="generate", disable=not progress):
            enc = left_padded([prompts[i] for i in idx], tokenizer.pad_token_id, model_device(model))
            if temperature > 0 and top_p == 1.0 and top_k == 0:
                tokens = sample_policy(model, enc, max_new_tokens, temperature, stop_token_ids(tokenizer), compiled)
            else:
                generated = model.generate(**enc, max_new_tokens=max_new_tokens,
                                           eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                           past_key_values=shared_prompt_cache(model, enc) or new_cache(model),
                                           **sampling)
                tokens = generated[:, enc["input_ids"].shape[1]:].tolist()
            out.update(zip(idx, tokens))              # both paths give a list of token-id lists, in idx's order
        return out

    with generation_mode(model):
        split = temperature == 0 and len(batches) > 1 and model_device(model).type == "cpu"
        tokens = in_two_processes(decode, batches) if split else decode(batches)
    return [tokenizer.decode(tokens[i], skip_special_tokens=True).strip() for i in range(len(prompts))]


# how long the parent waits for the child once its own half is done: this many seconds plus this multiple of the time
# its half took; past that the child counts as stuck, is killed, and its batches are decoded by the parent
CHILD_PATIENCE = (60.0, 10.0)


def in_two_processes(decode, batches: list) -> dict:
    """`decode(batches)` with the odd batches in a forked process, both processes at one thread — on a CPU of two or
    more threads. A 1.8M-parameter model's decoding steps are too small to split over threads (a second thread
    gains 1.1×), so two one-thread processes decode ~1.6× as many rows (docs/LOG.md). Each batch is the one a single
    process decodes, so the answers are a one-thread run's. Greedy only: a sample would draw from another random
    stream. Where the child fails or is stuck (`CHILD_PATIENCE`), its batches are decoded here: never a hang."""
    threads = torch.get_num_threads()
    if threads < 2 or not hasattr(os, "fork"):
        return decode(batches)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: its half, sent back as JSON, then gone
        try:
            os.close(read)
            torch.set_num_threads(1)
            payload = json.dumps(list(decode(batches[1::2]).items())).encode()
            with os.fdopen(write, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)                             # no atexit handlers, no flushing the parent's buffers
    os.close(write)
    torch.set_num_threads(1)
    try:
        started = time.monotonic()
        out = decode(batches[0::2])
        wait, times = CHILD_PATIENCE
        received = read_until(read, time.monotonic() + wait + times * (time.monotonic() - started))
        try:
            out.update({int(i): tokens for i, tokens in json.loads(received)})
        except ValueError:                          # nothing or a part came: the child failed or is stuck
            pass
        missing = [idx for idx in batches[1::2] if any(i not in out for i in idx)]
        return {**out, **decode(missing)} if missing else out
    finally:
        os.close(read)
        torch.set_num_threads(threads)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)            # gone already (it exits once it has written), or stuck
        os.waitpid(pid, 0)


def read_until(fd: int, deadline: float) -> bytes:
    """All a pipe holds until its writer closes it — or b"" if that has not happened by `deadline` (monotonic)."""
    chunks = []
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return b""


def continue_texts(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float, top_p: float,
                   seed: int = 0, batch_size: int = 8, stop_strings: tuple = ()) -> list[str]:
    """Sampled plain-text continuations — no chat template: how a base model is prompted (self-instruct's lists of
    tasks). Text never becomes a control token (`split_special_tokens`); no top-k, as the papers' APIs had none;
    `stop_strings` end a row early (the text up to them is returned with them)."""
    torch.manual_seed(seed)
    ids = [tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] for t in texts]
    out = [""] * len(texts)
    with generation_mode(model):
        for start in range(0, len(ids), batch_size):
            enc = left_padded(ids[start:start + batch_size], tokenizer.pad_token_id, model_device(model))
            rows = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                  top_p=top_p, top_k=0, eos_token_id=stop_token_ids(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, stop_strings=list(stop_strings) or None,
                                  tokenizer=tokenizer if stop_strings else None)
            for row, tokens in enumerate(rows[:, enc["input_ids"].shape[1]:]):
                out[start + row] = tokenizer.decode(tokens, skip_special_tokens=True)
    return out


def generate_eval(model, tokenizer, conversations, eval_cfg, **sampling) -> list[str]:
    """`generate_responses` with the profile's evaluation settings (rows, new tokens, token budget); greedy unless
    `sampling` says otherwise (temperature, top_p, top_k, seed); on CUDA as wide as `sampling_memory` allows."""
    return generate_responses(model, tokenizer, conversations, eval_cfg.batch_size, eval_cfg.max_new_tokens,
                              progress=False, token_budget=eval_cfg.generation_tokens,
                              memory_share=eval_cfg.sampling_memory, compiled=eval_cfg.compiled_sampling, **sampling)


@torch.no_grad()
def sample_policy(model, enc: dict, max_new_tokens: int, temperature: float, stops: list[int],
                  compiled: bool = False) -> list[list[int]]:
    """Temperature sampling from the model's own distribution π — no other logits processing, as the policy
    gradient assumes — token by token with the KV cache, each row up to and including its stop token.

    A row that stops leaves the batch: in an RLOO batch most samples stop long before the longest one (~21 of 64
    tokens), and `generate` would run every row to the end. Every step still draws for every row, finished or not,
    as `generate` does, so the random stream — and with it every sample — is the one `generate` would give.
    `compiled` (eval.compiled_sampling): the static-cache step instead, compiled on CUDA (`sample_policy_static`)."""
    if compiled:
        return sample_policy_static(model, enc, max_new_tokens, temperature, stops, compiled=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    rows, device = ids.shape[0], ids.device
    cache = shared_prompt_cache(model, enc)
    cache = prefilled_cache(model, ids[:, :-1], mask[:, :-1]) if cache is None else cache
    active, tokens = torch.arange(rows, device=device), ids[:, -1:]
    positions = mask.long().sum(-1, keepdim=True) - 1
    stop, responses = torch.tensor(stops, device=device), [[] for _ in range(rows)]
    for _ in range(max_new_tokens):
        logits = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        probs = torch.ones(rows, logits.shape[-1], device=device)     # finished rows: drawn for, then ignored
        probs[active] = torch.softmax(logits / temperature, dim=-1)
        drawn = torch.multinomial(probs, num_samples=1)[active]
        for row, token in zip(active.tolist(), drawn[:, 0].tolist()):
            responses[row].append(token)
        going = ~torch.isin(drawn[:, 0], stop)
        if not going.any():
            break
        if not going.all():
            keep = going.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            active, drawn, mask, positions = active[keep], drawn[keep], mask[keep], positions[keep]
        tokens, positions = drawn, positions + 1
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], 1)
    return responses


def static_cache(model, length: int):
    """A StaticCache of `length` positions, rounded up to a multiple of 256 so that calls of nearby lengths share a
    compiled step, storing keys and values in `cache_dtype`."""
    from transformers import StaticCache
    return cast_cache(StaticCache(config=model.config, max_cache_len=-(-length // 256) * 256), cache_dtype(model))


def decoding_step(model, compiled: bool):
    """The model's forward for one decoding step on a static cache: under torch.compile with CUDA graphs on CUDA when
    `compiled` (captured once per shape, kept on the model), the eager forward otherwise — the same code path."""
    if not (compiled and model_device(model).type == "cuda"):
        return model.forward
    if getattr(model, "_compiled_step", None) is None:
        model._compiled_step = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
    return model._compiled_step


@torch.no_grad()
def sample_policy_static(model, enc: dict, max_new_tokens: int, temperature: float, stops: list[int],
                         compiled: bool = False) -> list[list[int]]:
    """`sample_policy` on a static KV cache (fixed shapes, so a compiled step can be captured once): every row runs
    every step — a finished one is drawn for and ignored, as in `sample_policy` — and the mask covers the whole cache
    from the start (the causal mask hides what is not yet written). The same random stream, so the same samples
    wherever the logits agree (tests/test_generation.py checks it eagerly on the CPU)."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    (rows, width), device = ids.shape, ids.device
    cache = static_cache(model, width + max_new_tokens)
    full = torch.cat([mask, mask.new_ones(rows, cache.get_max_length() - width)], 1)    # as long as the cache
    if width > 1:
        model(input_ids=ids[:, :-1], attention_mask=full, position_ids=real_positions(mask[:, :-1]),
              past_key_values=cache, cache_position=torch.arange(width - 1, device=device), use_cache=True,
              logits_to_keep=1)
    step, tokens = decoding_step(model, compiled), ids[:, -1:]
    positions = mask.long().sum(-1, keepdim=True) - 1
    stop, active, responses = torch.tensor(stops, device=device), torch.ones(rows, dtype=torch.bool, device=device), \
        [[] for _ in range(rows)]
    for t in range(max_new_tokens):
        logits = step(input_ids=tokens, attention_mask=full, position_ids=positions, past_key_values=cache,
                      cache_position=torch.tensor([width - 1 + t], device=device), use_cache=True,
                      logits_to_keep=1).logits[:, -1].float()
        probs = torch.ones(rows, logits.shape[-1], device=device)
        probs[active] = torch.softmax(logits[active] / temperature, dim=-1)
        drawn = torch.multinomial(probs, num_samples=1)
        for row in active.nonzero()[:, 0].tolist():
            responses[row].append(int(drawn[row, 0]))
        active = active & ~torch.isin(drawn[:, 0], stop)
        if not active.any():
            break
        tokens, positions = drawn, positions + 1
    return responses


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, k: int, max_new_tokens: int, temperature: float,
                       compiled: bool = False):
    """k samples per prompt, all in one batch (left padding, KV cache, stop at <|im_end|>/<|endoftext|>), drawn by
    `sample_policy`.

    Returns the sampled token ids themselves (not re-tokenized text), so the policy-gradient step scores exactly
    what was sampled: a list of {"prompt_ids", "response_ids", "text"} of length len(prompts) * k, prompt-major.
    `compiled`: as `sample_policy`'s.
    """
    with generation_mode(model):
        enc = left_padded([encode_prompt(tokenizer, p) for p in prompts for _ in range(k)], tokenizer.pad_token_id,
                          model_device(model))
        responses = sample_policy(model, enc, max_new_tokens, temperature, stop_token_ids(tokenizer), compiled)
    samples = []
    for row, response in enumerate(responses):
        prompt_row = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        samples.append({"prompt_ids": prompt_row, "response_ids": response,
                        "text": tokenizer.decode(response, skip_special_tokens=True).strip()})
    return samples


def next_token(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> int:
    """One token from a row of logits: the most likely at temperature 0; else sampled at `temperature` from the
    smallest set of tokens whose probability reaches `top_p` (nucleus sampling, Holtzman et al. 2020)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p      # the tokens after the nucleus is full
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, num_samples=1))


@torch.no_grad()
def stream_tokens(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                  stops=(), should_stop=lambda: False):
    """One reply, token by token (a generator), with the KV cache: what the chat streams. It ends at a stop token
    (not yielded), at `max_new_tokens`, or as soon as `should_stop()` says so — checked before every token, so Stop
    ends a reply within one token. It runs in the caller's thread: no thread is left running a model when the
    caller stops reading (a closed pipe, Ctrl-C)."""
    device = model_device(model)
    with generation_mode(model):
        cache, tokens = DynamicCache(config=model.config), torch.tensor([prompt_ids], device=device)
        for _ in range(max_new_tokens):
            if should_stop():
                return
            logits = model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
            token = next_token(logits, temperature, top_p)
            if token in stops:
                return
            yield token
            tokens = torch.tensor([[token]], device=device)


def stream_text(model, tokenizer, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                top_p: float = 1.0, should_stop=lambda: False):
    """`stream_tokens` as text pieces: the reply so far is decoded whole each time and its new end yielded, held
    back while it ends inside a character (a multi-byte character spans several byte-level tokens)."""
    ids, shown = [], ""
    for token in stream_tokens(model, prompt_ids, max_new_tokens, temperature, top_p, stop_token_ids(tokenizer),
                               should_stop):
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(shown):
            continue
        piece, shown = text[len(shown):], text
        if piece:
            yield piece
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text.startswith(shown) and text != shown:
        yield text[len(shown):]
