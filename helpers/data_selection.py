"""MoDS (Du, Zong & Zhang 2023): choose instruction data by quality, coverage and necessity. Quality keeps the
examples a reward model scores above a threshold; coverage picks a diverse seed set by k-center greedy over
embeddings (here: the policy's hidden states, mean-pooled over the example's tokens); necessity fine-tunes on the
seed set, lets that model answer the rest, and adds the examples whose answers the reward model scores low — again
k-center greedy over them. Imports: none of the project's (the pieces take tensors and scores)."""
from __future__ import annotations

import torch


def quality_filter(examples: list, scores: list[float], threshold: float) -> tuple[list, list[int]]:
    """The examples whose reward-model score is above `threshold`, and their indices (order kept)."""
    keep = [i for i, s in enumerate(scores) if s > threshold]
    return [examples[i] for i in keep], keep


def k_center_greedy(embeddings: torch.Tensor, k: int, start: list[int] | None = None) -> list[int]:
    """k indices that cover the rows of `embeddings` (n × d): repeatedly add the row farthest (Euclidean) from its
    nearest chosen row — a 2-approximation of the best k centres (Gonzalez 1985). `start`: rows already chosen
    (necessity adds to the seed set); with none, the first row is the first centre. Ties go to the lowest index."""
    n = embeddings.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k = {k}: must be between 0 and the {n} rows")
    chosen = list(start or [])
    if not chosen and k:
        chosen = [0]
    nearest = torch.full((n,), float("inf"))
    for c in chosen:
        nearest = torch.minimum(nearest, (embeddings - embeddings[c]).norm(dim=1))
    picked = []
    while len(picked) < k - (1 if not start else 0) and len(chosen) < n:
        far = int(torch.argmax(nearest))
        if nearest[far] <= 0:               # every row coincides with a chosen one: nothing left to cover
            break
        picked.append(far)
        chosen.append(far)
        nearest = torch.minimum(nearest, (embeddings - embeddings[far]).norm(dim=1))
    return ([] if start else chosen[:1]) + picked


def necessity_pool(scores: list[float], threshold: float) -> list[int]:
    """MoDS' necessity: the indices of examples the seed-trained model answers poorly (reward-model score of its own
    answer at or below `threshold`) — what it still needs to be taught."""
    return [i for i, s in enumerate(scores) if s <= threshold]
