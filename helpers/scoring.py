"""Held-out scores of one model: exact match and ROUGE-L, greedy Countdown accuracy, the losses, pass@k and
best-of-n. Imports: config, countdown, data, sft, generation."""
from __future__ import annotations

import math
from pathlib import Path

from .config import Config
from .countdown import countdown_prompt, countdown_reward
from .data import load_split, write_jsonl
from .sft import evaluate_loss, heldout_loss_examples, sft_mixture
from .generation import generate_responses


def exact_match(response: str, reference: str) -> float:
    return float(response.strip() == reference.strip())


def rouge_l(response: str, reference: str) -> float:
    """ROUGE-L F1 on whitespace tokens (longest common subsequence), for open-ended answers."""
    a, b = response.split(), reference.split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def greedy_countdown(model, tokenizer, cfg: Config, rows: int | None = None):
    """Greedy answers to the fixed held-out Countdown tasks and their rule-based rewards: (tasks, answers, rewards)."""
    tasks = load_split(cfg, "countdown", "test")[:rows or cfg.eval.countdown_rows]
    answers = generate_responses(model, tokenizer, [countdown_prompt(t["nums"], t["target"]) for t in tasks],
                                 cfg.eval.batch_size, cfg.eval.max_new_tokens, progress=False)
    return tasks, answers, [countdown_reward(a, t["target"], t["nums"]) for a, t in zip(answers, tasks)]


def evaluate_model(model, tokenizer, cfg: Config, responses_path: Path | None = None,
                   progress: bool = False, records: list | None = None) -> dict:
    """Held-out response-only loss / perplexity, whole-sequence loss, instruction quality, Countdown score.
    The greedy responses go to `responses_path` (jsonl) and/or are appended to `records`."""
    held = heldout_loss_examples(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    response_loss = evaluate_loss(model, held["response"], pad)
    metrics = {"response_loss": response_loss, "response_ppl": math.exp(min(response_loss, 50)),
               "sequence_loss": evaluate_loss(model, held["sequence"], pad)}
    rows = sft_mixture(cfg, "test")[:cfg.eval.instruction_rows]
    prompts = [r["messages"][:-1] for r in rows]
    references = [r.get("reference", r["messages"][-1]["content"]) for r in rows]
    answers = generate_responses(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                                 progress=progress)
    scorer, metric = (rouge_l, "rouge_l") if cfg.profile == "qwen" else (exact_match, "exact_match")
    scores = [scorer(a, r) for a, r in zip(answers, references)]
    metrics[metric] = sum(scores) / len(scores)
    tasks, cd_answers, rewards = greedy_countdown(model, tokenizer, cfg)
    metrics["countdown_reward"] = sum(rewards) / len(rewards)
    metrics["countdown_accuracy"] = sum(r == 1.0 for r in rewards) / len(rewards)
    greedy = ([{"task": "instruction", "prompt": p, "response": a, "reference": r, metric: s, "greedy": True}
               for p, a, r, s in zip(prompts, answers, references, scores)]
              + [{"task": "countdown", "nums": t["nums"], "target": t["target"], "response": a, "reward": w,
                  "greedy": True} for t, a, w in zip(tasks, cd_answers, rewards)])
    if records is not None:
        records.extend(greedy)
    if responses_path is not None:
        write_jsonl(responses_path, greedy)
    return metrics


def countdown_accuracy(model, tokenizer, cfg: Config, rows: int | None = None) -> dict:
    """Greedy Countdown accuracy and mean reward on the fixed held-out test set."""
    _, _, rewards = greedy_countdown(model, tokenizer, cfg, rows)
    return {"countdown_accuracy": sum(r == 1.0 for r in rewards) / len(rewards),
            "countdown_reward": sum(rewards) / len(rewards)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k) / C(n, k) for c correct among n samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def best_of_n(scores: list[list[float]], correct: list[list[float]], n: int) -> float:
    """Accuracy when, per prompt, the sample with the highest score among the first n is kept (first on ties)."""
    picks = [row_correct[max(range(n), key=lambda i: row_scores[i])]
             for row_scores, row_correct in zip(scores, correct)]
    return sum(picks) / len(picks)
