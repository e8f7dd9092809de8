"""Batching without waste: dynamic padding (to the longest row of a batch), length-grouped training batches, and
no-grad batches sized by a token budget. Imports: modeling (the device and autocast)."""
from __future__ import annotations

import random

import torch

from .modeling import autocast_context, model_device


def collate(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad to the longest sequence of this batch (never to a fixed max_length)."""
    longest = max(len(e["input_ids"]) for e in examples)
    batch = {}
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100, "loss_weights": 0.0, "response": 0}
    for key, pad in pad_values.items():
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            fill = [pad] * (longest - len(e[key]))
            rows.append(fill + list(e[key]) if padding_side == "left" else list(e[key]) + fill)
        batch[key] = torch.tensor(rows, dtype=torch.float32 if key == "loss_weights" else torch.long)
    return batch


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True):
    """One epoch's batches as index lists: shuffled, then sorted by length inside windows of 50 batches.

    Similar lengths share a batch (little padding) while the order stays random; a pure function of the seed.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w:w + window], key=lambda j: -lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


# Tokens (rows × padded length) in one no-grad batch: held-out loss, reference log-probs, reward scores. A row count
# would let a handful of long rows (smoltalk has 4,000-token conversations) blow the memory of an evaluation pass.
NO_GRAD_TOKENS = 16_384


def token_budget_batches(lengths: list[int], max_tokens: int = NO_GRAD_TOKENS, max_rows: int | None = None):
    """Index batches, longest rows first, each batch's padded size (rows × its longest row) at most `max_tokens`
    (and at most `max_rows` rows); a row longer than the budget goes alone. Deterministic: ties keep their order."""
    batches, current = [], []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        full = current and ((len(current) + 1) * lengths[current[0]] > max_tokens
                            or (max_rows is not None and len(current) >= max_rows))
        if full:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def score_in_batches(model, items: list, lengths: list[int], score_batch, token_budget: int = NO_GRAD_TOKENS) -> list:
    """`score_batch(model, [item, …])` → one value per item, run over token-budget batches in eval mode without
    gradients (bf16 autocast on CUDA). Results come back in the items' order; the model's mode is restored."""
    was_training, results = model.training, [None] * len(items)
    model.eval()
    try:
        with autocast_context(model_device(model)):
            for idx in token_budget_batches(lengths, token_budget):
                for i, value in zip(idx, score_batch(model, [items[i] for i in idx])):
                    results[i] = value
    finally:
        model.train(was_training)
    return results
