"""Token log-probabilities without the full [batch, positions, vocabulary] logits: the decoder's hidden states are
projected onto the vocabulary only at the positions that count (response tokens, where only they count), in chunks
whose logits are recomputed in the backward pass instead of kept. SFT's loss, held-out loss, and log π(y|x) for
DPO, the reward model's pairs and RLOO all go through here — including the shared-prompt path that runs a prompt
once and repeats its KV cache for every response. Imports nothing from the package."""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# Logits per chunk: 2**24 fp32 numbers = 64 MiB — 110 positions of Qwen2.5's 151,936-word vocabulary, 16,384 of the
# tiny model's 1,024 (one chunk for any tiny batch). A chunk costs ~2× that without gradients (logits + logsumexp's
# temporary) and ~4× with (recomputed logits, temporaries, gradient: `make bench-memory`). The whole-batch
# [batch, positions, vocabulary] tensor it replaces is 8 × 1024 × 151,936 fp32 numbers = 4.6 GiB, and its backward
# keeps more copies of that size.
CHUNK_LOGITS = 2 ** 24


def causal_lm_parts(model):
    """(decoder, lm_head) of a causal LM, through a PEFT wrapper: the decoder gives hidden states (LoRA layers and
    gradient checkpointing act inside it as in a full forward pass); the head is applied only where needed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _chunk_logps(head, hidden, targets):
    logits = head(hidden).float()
    # gather − logsumexp: no second vocabulary-sized copy (log_softmax would make one)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def selected_logps(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_logits: int | None = None):
    """log p(targets[i] | hidden[i]) for N selected positions (hidden [N, H], targets [N]).

    The projection runs chunk by chunk. With gradients on and more than one chunk, each chunk sits under activation
    checkpointing: only its hidden states are kept, and its logits are recomputed in backward — so the peak is one
    chunk of logits, however many positions are scored. A single chunk is kept as is: the same peak, without the
    recomputation (8 % of a tiny SFT step). Values and gradients equal the unchunked computation (tests/test_logprobs).
    """
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    rows = max(1, (chunk_logits or CHUNK_LOGITS) // vocab)
    grad = torch.is_grad_enabled() and len(targets) > rows
    parts = [checkpoint(_chunk_logps, head, hidden[s:s + rows], targets[s:s + rows], use_reentrant=False) if grad
             else _chunk_logps(head, hidden[s:s + rows], targets[s:s + rows]) for s in range(0, len(targets), rows)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def weighted_token_logps(model, batch, weights: torch.Tensor):
    """log p(label_{t+1} | x_≤t) at every position whose next token has weight > 0 (weights [B, T-1], aligned with
    the shifted labels; labels are unshifted, as in Hugging Face). Returns (logps [N], row index [N], weight [N])
    of those positions, in row-major order."""
    decoder, head = causal_lm_parts(model)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False).last_hidden_state[:, :-1]
    keep = weights > 0
    targets = batch["labels"][:, 1:][keep]
    return selected_logps(head, hidden[keep], targets), keep.nonzero()[:, 0], weights[keep]


def trained_weights(batch) -> torch.Tensor:
    """Per shifted position: the loss weight of the next token (0 where its label is -100)."""
    labels = batch["labels"][:, 1:]
    return batch["loss_weights"][:, 1:] if "loss_weights" in batch else (labels != -100).float()


def sequence_logps(model, batch) -> torch.Tensor:
    """log π(y|x) per row: log-probs of the trained (response) tokens summed — the same mask as SFT."""
    labels = batch["labels"][:, 1:]
    logps, rows, _ = weighted_token_logps(model, batch, (labels != -100).float())
    return torch.zeros(len(labels), device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)


# The prompt once: chosen and rejected (DPO, reward model) or the k samples of RLOO share their prompt, so it is
# run once and its KV cache repeated — the same numbers as the concatenated sequences, for far fewer positions.
def can_share_prompt(model) -> bool:
    """Gradient checkpointing turns the KV cache off while training; such a model scores the full sequences."""
    return not (getattr(model, "is_activation_checkpointing", False) and model.training)


def shared_prompt_forward(module, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Each prompt run once, its KV cache repeated for its k = len(responses) / len(prompts) responses, which run
    on top. Returns (prompt outputs, response outputs, response ids, response mask).

    Prompts are left-padded (RoPE scores depend only on distances, so the shift changes nothing), responses
    right-padded. `module` is a decoder (hidden states at every position) or a sequence-classification model
    (whose head then reads the last response token).
    """
    k, dev = len(responses) // len(prompts), next(module.parameters()).device
    width, length = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=dev)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    prompt_out = module(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    cache = prompt_out.past_key_values
    cache.batch_repeat_interleave(k)
    response_ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in responses], device=dev)
    response_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in responses], device=dev)
    response_out = module(input_ids=response_ids, past_key_values=cache,
                          attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1))
    return prompt_out, response_out, response_ids, response_mask


def shared_prompt_logps(model, samples: list[dict], k: int, pad_id: int) -> torch.Tensor:
    """log π(y|x) of every sample ({"prompt_ids", "response_ids"}, optional 0/1 "trained" per response token),
    the prompt run once per group of k — the same numbers as `sequence_logps` on the concatenated sequences: k
    samples of a prompt of P tokens with answers of R cost P + kR positions instead of k(P + R)."""
    decoder, head = causal_lm_parts(model)
    prompt_out, out, response_ids, response_mask = shared_prompt_forward(
        decoder, [s["prompt_ids"] for s in samples[::k]], [s["response_ids"] for s in samples], pad_id)
    # the prompt's last position predicts the first response token; response position t predicts t + 1
    hidden = torch.cat([prompt_out.last_hidden_state[:, -1:].repeat_interleave(k, 0),
                        out.last_hidden_state[:, :-1]], 1)
    trained = torch.tensor([s.get("trained", [1] * len(s["response_ids"])) + [0] * (response_ids.shape[1] - len(
        s["response_ids"])) for s in samples], device=response_mask.device).bool() & response_mask.bool()
    logps = selected_logps(head, hidden[trained], response_ids[trained])
    rows = trained.nonzero()[:, 0]
    return torch.zeros(len(samples), device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)


def pair_samples(pairs: list[dict]) -> list[dict]:
    """Each tokenized pair as two samples (chosen, rejected) sharing one prompt: the tokens before the first trained
    one and before the two differ, so no trained token is left out of the response."""
    samples = []
    for pair in pairs:
        c, r = pair["chosen"], pair["rejected"]
        first_trained = next(i for i, label in enumerate(c["labels"]) if label != -100)
        common = next((i for i, (a, b) in enumerate(zip(c["input_ids"], r["input_ids"])) if a != b),
                      min(len(c["input_ids"]), len(r["input_ids"])))
        split = max(1, min(first_trained, common, len(c["input_ids"]) - 1, len(r["input_ids"]) - 1))
        samples += [{"prompt_ids": e["input_ids"][:split], "response_ids": e["input_ids"][split:],
                     "trained": [int(label != -100) for label in e["labels"][split:]]} for e in (c, r)]
    return samples
