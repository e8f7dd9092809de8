"""MoDS (Du, Zong & Zhang 2023): choose instruction data by quality, coverage and necessity. Quality keeps the
examples a reward model scores above a threshold; coverage picks a diverse seed set by k-center greedy over
embeddings (here: the policy's hidden states, mean-pooled over the example's tokens); necessity fine-tunes on the
seed set, lets that model answer the rest, and adds the examples whose answers the reward model scores low — again
k-center greedy over them. `raw_pool` makes the candidates a selection is tested on: clean rows with wrong
answers, near-duplicates and an over-represented easy family mixed in at stated rates. Imports: none of the
project's (the pieces take rows, tensors and scores)."""
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


@torch.no_grad()
def mean_pooled_embeddings(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """One vector per text: the model's last hidden states averaged over the text's tokens (padding left out) —
    the coverage step's notion of "similar". Text never becomes a control token."""
    was_training, rows = model.training, []
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), batch_size):
            ids = [tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] or
                   [tokenizer.pad_token_id] for t in texts[start:start + batch_size]]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids], device=device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
            hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            rows.append(((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def mods_select(rows: list, score, embed, fine_tune_and_score, quality_threshold: float, seed_size: int,
                necessity_threshold: float, necessity_size: int, progress=print) -> dict:
    """MoDS' three steps over candidate rows, each saying what it kept and why:
    1. quality — `score(rows)` (the reward model's score of each row's own answer) above `quality_threshold`;
    2. coverage — `seed_size` of those by k-center greedy over `embed(rows)`: the seed set;
    3. necessity — `fine_tune_and_score(seed rows, other rows)`: a model fine-tuned on the seed set answers the
       others and the reward model scores its answers; those at or below `necessity_threshold` are what it still
       needs, and k-center greedy picks `necessity_size` of them.
    Returns {"quality": indices, "seeds": indices, "necessary": indices, "selected": seeds + necessary}."""
    scores = score(rows)
    _, good = quality_filter(rows, scores, quality_threshold)
    progress(f"quality: {len(good)} of {len(rows)} rows score above {quality_threshold:g} by the reward model")
    vectors = embed([rows[i] for i in good])              # once: the necessity step's rows are among them
    at = {row: k for k, row in enumerate(good)}
    seeds = [good[i] for i in k_center_greedy(vectors, min(seed_size, len(good)))]
    progress(f"coverage: {len(seeds)} seeds by k-center greedy over the embeddings of those {len(good)}")
    chosen = set(seeds)
    others = [i for i in good if i not in chosen]
    needed = [others[i] for i in necessity_pool(fine_tune_and_score([rows[i] for i in seeds],
                                                                     [rows[i] for i in others]), necessity_threshold)]
    progress(f"necessity: the seed-trained model answers {len(needed)} of the other {len(others)} at or below "
             f"{necessity_threshold:g}")
    picked = (k_center_greedy(vectors[[at[i] for i in needed]], min(necessity_size, len(needed))) if needed
              else [])
    necessary = [needed[i] for i in picked]
    progress(f"selected: {len(seeds)} seeds + {len(necessary)} necessary = {len(seeds) + len(necessary)} rows")
    return {"quality": good, "seeds": seeds, "necessary": necessary, "selected": seeds + necessary}


def raw_pool(rows: list[dict], wrong: float, near_duplicates: float, easy_family: str, easy_share: float,
             seed: int = 0) -> list[dict]:
    """A candidate pool with the defects real pools have, at stated rates, from clean SFT conversations
    ({"messages", "source", "reference"}): a share `wrong` answered with another task's answer of the same family
    (plausible, wrong); `near_duplicates` more rows that repeat one with its question's case and spacing changed; and
    rows of `easy_family` repeated until they are `easy_share` of the pool. Each row's "defect" says which (None:
    clean) — for reporting what a selection kept, never read by the selection itself."""
    import random
    rng = random.Random(seed)
    pool = [dict(r, defect=None) for r in rows]
    by_family: dict[str, list[str]] = {}
    for r in rows:
        by_family.setdefault(r["source"], []).append(r["messages"][-1]["content"])
    for i in rng.sample(range(len(pool)), round(wrong * len(pool))):
        right = pool[i]["messages"][-1]["content"]
        others = [a for a in by_family[pool[i]["source"]] if a != right]
        if others:
            answer = rng.choice(others)
            pool[i] = dict(pool[i], defect="wrong answer",
                           messages=pool[i]["messages"][:-1] + [{"role": "assistant", "content": answer}])
    for i in rng.sample(range(len(rows)), round(near_duplicates * len(rows))):
        question = pool[i]["messages"][0]["content"]
        changed = question.lower() if question != question.lower() else question.capitalize()
        pool.append(dict(pool[i], defect="near-duplicate",
                         messages=[{"role": "user", "content": changed + " "}] + pool[i]["messages"][1:]))
    easy = [r for r in rows if r["source"] == easy_family]
    if not easy:
        raise ValueError(f"no rows of the family {easy_family!r} to over-represent")
    while sum(r["source"] == easy_family for r in pool) < easy_share * len(pool):
        pool.append(dict(rng.choice(easy), defect="over-represented family"))
    rng.shuffle(pool)
    return pool
