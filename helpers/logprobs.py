"""Sequence log-probabilities log π(y|x) for DPO, the reward model and RLOO — including the shared-prompt path
that runs a prompt once and repeats its KV cache for every response. Imports nothing from the package."""
from __future__ import annotations

import torch


def sequence_logps(model, batch) -> torch.Tensor:
    """log π(y|x) per row: log-probs of the trained (response) tokens summed — the same mask as SFT."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    # gather − logsumexp: no second vocabulary-sized copy (log_softmax would make one; 151,936 columns on Qwen)
    token_logps = torch.gather(logits, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * (labels != -100)).sum(-1)


# The prompt once: chosen and rejected (DPO, reward model) or the k samples of RLOO share their prompt, so it is
# run once and its KV cache repeated — the same numbers as the concatenated sequences, for far fewer positions.
def can_share_prompt(model) -> bool:
    """Gradient checkpointing turns the KV cache off; such a model scores the full sequences instead."""
    return not getattr(model, "is_activation_checkpointing", False)


def shared_prompt_forward(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Each prompt run once, its KV cache repeated for its k = len(responses) / len(prompts) responses, which run
    on top. Returns (prompt outputs, response outputs, response ids, response mask).

    Prompts are left-padded (RoPE scores depend only on distances, so the shift changes nothing), responses
    right-padded. Works for a causal LM (logits at every position) and for a sequence-classification model,
    whose head then reads the last response token.
    """
    k, dev = len(responses) // len(prompts), next(model.parameters()).device
    width, length = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=dev)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    cache = prompt_out.past_key_values
    cache.batch_repeat_interleave(k)
    response_ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in responses], device=dev)
    response_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in responses], device=dev)
    response_out = model(input_ids=response_ids, past_key_values=cache,
                         attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1))
    return prompt_out, response_out, response_ids, response_mask


def shared_prompt_logps(model, samples: list[dict], k: int, pad_id: int) -> torch.Tensor:
    """log π(y|x) of every sample ({"prompt_ids", "response_ids"}, optional 0/1 "trained" per response token),
    the prompt run once per group of k — the same numbers as `sequence_logps` on the concatenated sequences.

    A tiny Countdown prompt is ~125 tokens and its answer ~27, so k = 8 samples cost 341 instead of 1,216 positions.
    """
    prompt_out, out, response_ids, response_mask = shared_prompt_forward(
        model, [s["prompt_ids"] for s in samples[::k]], [s["response_ids"] for s in samples], pad_id)
    # the prompt's last position predicts the first response token; response position t predicts t + 1
    logits = torch.cat([prompt_out.logits[:, -1:].repeat_interleave(k, 0), out.logits[:, :-1]], 1).float()
    token_logps = torch.gather(logits, 2, response_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    trained = torch.tensor([s.get("trained", [1] * len(s["response_ids"])) + [0] * (response_ids.shape[1] - len(
        s["response_ids"])) for s in samples], device=response_mask.device) * response_mask
    return (token_logps * trained).sum(-1)


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
