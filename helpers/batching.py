"""Batching without waste: dynamic padding (to the longest row of a batch) and length-grouped batches.
Imports nothing from the package."""
from __future__ import annotations

import random

import torch


def collate(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad to the longest sequence of this batch (never to a fixed max_length)."""
    longest = max(len(e["input_ids"]) for e in examples)
    batch = {}
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100, "loss_weights": 0.0}
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
