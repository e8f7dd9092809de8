"""Held-out scores of one model: exact match and ROUGE-L, greedy Countdown accuracy, the losses, pass@k and
best-of-n. Imports: config, countdown, data, sft, generation."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from .config import Config, config_dict, device, out_path, quality_metric, write_atomic
from .countdown import countdown_reward, countdown_text
from .data import countdown_tasks, write_jsonl
from .modeling import load_model, load_tokenizer, model_device
from .checkpoints import start_fingerprint
from .formatting import fit_prompts
from .sft import evaluate_loss, heldout_loss_examples, sft_mixture
from .generation import generate_eval, generation_mode, left_padded


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
    tasks = countdown_tasks(cfg, "test", rows or cfg.eval.countdown_rows)
    prompts, head = [t["prompt"] for t in tasks], curve_rows(cfg)
    # the first `curve_rows` tasks in a call of their own: batched as a curve point batches them, so a stage's
    # evaluation gives its curve's last point exactly (RLOO and RFT reuse it)
    answers = [a for part in (prompts[:head], prompts[head:]) if part
               for a in generate_eval(model, tokenizer, part, cfg.eval)]
    return tasks, answers, [countdown_reward(a, t["target"], t["nums"]) for a, t in zip(answers, tasks)]


def yes_no(answer: str) -> str:
    """A judgmental answer as a class: "yes", "no", or "neither" (anything else — it counts as wrong)."""
    word = answer.strip().lower().rstrip(".!")
    return word if word in ("yes", "no") else "neither"


def yes_no_metrics(answers: list[str], references: list[str]) -> dict:
    """Judgmental questions measured as a classifier (the brief's `003_…`), "yes" the positive class: accuracy,
    precision, recall and F1, and the confusion matrix {reference: {predicted: count}} with "neither" as its own
    predicted column (an answer that is neither yes nor no is wrong whichever the reference)."""
    confusion = {r: {p: 0 for p in ("yes", "no", "neither")} for r in ("yes", "no")}
    for answer, reference in zip(answers, references):
        if yes_no(reference) == "neither":
            raise ValueError(f"reference {reference!r} of a judgmental question is not yes or no")
        confusion[yes_no(reference)][yes_no(answer)] += 1
    tp, fp, fn = confusion["yes"]["yes"], confusion["no"]["yes"], confusion["yes"]["no"] + confusion["yes"]["neither"]
    total = sum(sum(row.values()) for row in confusion.values())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": (tp + confusion["no"]["no"]) / total if total else 0.0, "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "confusion": confusion}


def instruction_test_rows(cfg: Config, tokenizer, rows: int) -> list[dict]:
    """The first `rows` held-out instruction conversations whose prompt fits `max_prompt_tokens`."""
    test = sft_mixture(cfg, "test")
    fits, _ = fit_prompts(tokenizer, [r["messages"][:-1] for r in test], cfg.data.max_prompt_tokens)
    return [r for r, ok in zip(test, fits) if ok][:rows]


def greedy_instructions(model, tokenizer, cfg: Config):
    """Greedy answers to the held-out instruction tasks, scored (exact match, or ROUGE-L on the hub):
    (prompts, answers, references, scores)."""
    rows = instruction_test_rows(cfg, tokenizer, cfg.eval.instruction_rows)
    prompts = [r["messages"][:-1] for r in rows]
    references = [r.get("reference", r["messages"][-1]["content"]) for r in rows]
    answers = generate_eval(model, tokenizer, prompts, cfg.eval)
    scorer = rouge_l if quality_metric(cfg) == "rouge_l" else exact_match
    return prompts, answers, references, [scorer(a, r) for a, r in zip(answers, references)]


def track_scores(model, tokenizer, cfg: Config) -> dict:
    """Both tracks, greedy, on the held-out sets: Countdown accuracy and mean reward (on the first
    `cfg.eval.curve_rows` tasks), and instruction quality — what RLOO and RFT are evaluated on while they train (no
    losses: those are `evaluate_model`'s)."""
    scores = greedy_instructions(model, tokenizer, cfg)[3]
    return {**countdown_accuracy(model, tokenizer, cfg, curve_rows(cfg)),
            quality_metric(cfg): sum(scores) / max(1, len(scores))}


def curve_rows(cfg: Config) -> int:
    """How many held-out Countdown tasks a training curve's point scores: `curve_rows`, at most all that are scored."""
    return min(cfg.eval.curve_rows, cfg.eval.countdown_rows)


def evaluate_model(model, tokenizer, cfg: Config, responses_path: Path | None = None,
                   records: list | None = None) -> dict:
    """Held-out response-only loss / perplexity, whole-sequence loss, instruction quality, Countdown score.
    The greedy responses go to `responses_path` (jsonl) and/or are appended to `records`."""
    held = heldout_loss_examples(cfg, tokenizer)
    pad, budget = tokenizer.pad_token_id, cfg.eval.token_budget
    response_loss = evaluate_loss(model, held["response"], pad, budget)
    metrics = {"response_loss": response_loss, "response_ppl": math.exp(min(response_loss, 50)),
               "sequence_loss": evaluate_loss(model, held["sequence"], pad, budget)}
    prompts, answers, references, scores = greedy_instructions(model, tokenizer, cfg)
    metric = quality_metric(cfg)
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


EVALUATION_VERSION = 2     # raised when the same weights and settings give other answers (2: the curve's Countdown rows
                           # in a call of their own): a cached evaluation of an older method is computed again


def evaluate_checkpoint(cfg: Config, name: str) -> tuple[dict, list[dict]]:
    """`evaluate_model` of checkpoints/<profile>/<name>, computed once and reused by every later notebook until the
    checkpoint's weights (their fingerprint), the evaluation settings or the data change: (metrics, greedy records).
    Only a finished checkpoint is evaluated (CheckpointError otherwise, naming the fix). The greedy responses are
    saved to outputs/<profile>/<name>/responses.jsonl."""
    folder = out_path("checkpoints", cfg, name)
    manifests = sorted(out_path("data", cfg).glob("*/manifest.json"))
    key = {"checkpoint": start_fingerprint(folder, name), "eval": config_dict(cfg.eval), "method": EVALUATION_VERSION,
           "data": [json.loads(p.read_text())["content_hash"] for p in manifests],
           "max_length": cfg.sft.max_length, "max_prompt_tokens": cfg.data.max_prompt_tokens}
    cached = out_path("outputs", cfg, name, "greedy_evaluation.json")
    try:
        saved = json.loads(cached.read_text()) if cached.exists() else {}
    except (OSError, ValueError):           # a truncated cache is computed again
        saved = {}
    if isinstance(saved, dict) and saved.get("key") == key:
        return saved["metrics"], saved["records"]
    tokenizer, model = load_tokenizer(folder), load_model(folder).to(device())
    records: list = []
    metrics = evaluate_model(model, tokenizer, cfg, out_path("outputs", cfg, name, "responses.jsonl"), records)
    write_atomic(cached, json.dumps({"key": key, "metrics": metrics, "records": records}, default=str))
    return metrics, records


_EQUATION = re.compile(r"\s*(\d+) ([-+*/]) (\d+) = ")


@torch.no_grad()
def base_copying(model, tokenizer, cfg: Config, rows: int | None = None) -> dict:
    """Can a base model (no chat format yet) copy a task's numbers? Each held-out Countdown task in the tiny world's
    pre-training phrasing, up to its restatement (`Using the numbers [17, 2], create an equation that equals 34.
    Numbers [17, 2] make 34:`), continued greedily: the share of equations that use both numbers ("copies") and the
    share that are also right ("solves"). Every later stage's Countdown rests on this skill, and it is what varies
    most from one base model to another (docs/LOG.md)."""
    tasks = countdown_tasks(cfg, "test", rows or cfg.eval.countdown_rows)
    texts = [countdown_text(t["nums"], t["target"], []).rsplit(":", 1)[0] + ":" for t in tasks]
    copies = solves = 0
    with generation_mode(model):
        for start in range(0, len(texts), cfg.eval.batch_size):
            part = texts[start:start + cfg.eval.batch_size]
            enc = left_padded([tokenizer(t, add_special_tokens=False)["input_ids"] for t in part],
                              tokenizer.pad_token_id, model_device(model))
            out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for task, row in zip(tasks[start:], out[:, enc["input_ids"].shape[1]:]):
                found = _EQUATION.match(tokenizer.decode(row, skip_special_tokens=True))
                if found and sorted([int(found[1]), int(found[3])]) == sorted(task["nums"]):
                    copies += 1
                    solves += countdown_reward(f"<answer> {found[1]} {found[2]} {found[3]} </answer>", task["target"],
                                               task["nums"]) == 1.0
    return {"copies": copies / len(tasks), "solves": solves / len(tasks)}


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
