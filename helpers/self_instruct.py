"""Self-instruct (Wang et al. 2022) on a small domain, as the brief's `002_…` uses it: a seed library of tasks —
instruction = a statement segment, input = a question about it, output = the answer; judgmental (yes/no) or open —
prompts of 8 in-context tasks (6 seeds, 2 already generated), sampled at the paper's settings, then filtered:
invalid instances, truncated generations, length limits, ROUGE-L ≥ 0.7 against the pool, and the same input with
different outputs. The funnel counts what each filter removed. Imports: config, data, generation, scoring."""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from .config import REPO_ROOT
from .data import CONTROL_TOKENS, SkipCounter
from .generation import generate_responses
from .scoring import rouge_l

SEED_LIBRARY = REPO_ROOT / "assets" / "domain_seeds.json"
FIELDS = ("instruction", "input", "output")
TYPES = ("judgmental", "open")
ANSWERS = ("yes", "no")                  # a judgmental task's only outputs
# the paper's settings (self_instruct/bootstrap_instructions.py): 8 tasks in a prompt, 2 of them generated;
# temperature 0.7, top_p 0.5; a new task ROUGE-L > 0.7 to one in the pool is dropped; 3 < words ≤ 150
PROMPT_TASKS, GENERATED_IN_PROMPT = 8, 2
TEMPERATURE, TOP_P, ROUGE_LIMIT = 0.7, 0.5, 0.7
MIN_WORDS, MAX_WORDS = 4, 150


def task_problem(row) -> str | None:
    """Why a seed or generated row cannot be a task (None: it can): a missing or non-string field, an empty one,
    text that spells a control token (it would be trained on as text that looks like a turn's end), an unknown type,
    a judgmental task whose output is not yes or no, an output that repeats the input."""
    if not isinstance(row, dict):
        return "not an object"
    for field in (*FIELDS, "type"):
        if not isinstance(row.get(field), str):
            return f"{field} missing or not text"
        if not row[field].strip():
            return f"{field} empty"
    if any(token in row[field] for field in FIELDS for token in CONTROL_TOKENS):
        return "text spells a control token"
    if row["type"] not in TYPES:
        return f"type {row['type']!r} is not one of {', '.join(TYPES)}"
    if row["type"] == "judgmental" and row["output"].strip().lower() not in ANSWERS:
        return "a judgmental task's output is not yes or no"
    if row["output"].strip().lower() == row["input"].strip().lower():
        return "output equals input"
    return None


def load_seed_library(path: Path = SEED_LIBRARY) -> tuple[list[dict], list[dict], SkipCounter]:
    """(seed tasks, held-out tasks, skips): malformed rows are skipped and counted, never trained on."""
    library = json.loads(Path(path).read_text())
    skips, parts = SkipCounter(f"seed library {Path(path).name}"), {}
    for part in ("seeds", "held_out"):
        rows = library.get(part) if isinstance(library, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: '{part}' must be a list of tasks")
        parts[part] = []
        for i, row in enumerate(rows):
            problem = task_problem(row)
            if problem:
                skips.skip(f"{part}[{i}]", problem)
            else:
                parts[part].append({field: row[field].strip() for field in (*FIELDS, "type")})
    return parts["seeds"], parts["held_out"], skips


def show_task(task: dict, index: int) -> str:
    """A task as the prompt lists it. Judgmental tasks put the output first (the paper's output-first generation for
    classification: the label is chosen, then an input that fits it); the others the input first."""
    parts = [f"Task {index}", f"Instruction: {task['instruction']}"]
    if task["type"] == "judgmental":
        return "\n".join(parts + [f"Output: {task['output']}", f"Input: {task['input']}"])
    return "\n".join(parts + [f"Input: {task['input']}", f"Output: {task['output']}"])


def encode_prompt(tasks: list[dict], kind: str) -> str:
    """The request for one new task of `kind`, after the in-context tasks (all of that kind)."""
    head = ("Come up with new yes/no questions about statements of the same domain. Give the answer first."
            if kind == "judgmental" else "Come up with new questions about statements of the same domain, each with "
            "its short answer.")
    shown = [show_task(t, i + 1) for i, t in enumerate(tasks)]
    return "\n\n".join([head, *shown, f"Task {len(tasks) + 1}\nInstruction:"])


_FIELD = re.compile(r"^(Instruction|Input|Output):\s*(.*)$")


def parse_task(text: str, kind: str) -> dict | None:
    """The first task in a continuation of `encode_prompt` ("<statement>\nOutput: …\nInput: …"), or None where a
    field is missing. Text after the task (a next "Task" line) is ignored."""
    body = text.strip()
    if body.startswith("Task "):              # the model repeated the task's number
        body = body.split("\n", 1)[1] if "\n" in body else ""
    if not body.startswith("Instruction:"):    # it went on after the prompt's "Instruction:"
        body = "Instruction: " + body
    found = {}
    for line in body.splitlines():
        if line.startswith("Task "):
            break
        match = _FIELD.match(line.strip())
        if match and match.group(1).lower() not in found:
            found[match.group(1).lower()] = match.group(2).strip()
    if not all(field in found for field in FIELDS):
        return None
    return {**found, "type": kind}


def words(text: str) -> int:
    return len(text.split())


def task_text(task: dict) -> str:
    """What two tasks are compared on: the statement and the question."""
    return f"{task['instruction']} {task['input']}"


def filter_candidates(candidates: list[dict], pool: list[dict], funnel: Counter) -> list[dict]:
    """The candidates that pass every filter, in order, each checked against the pool and the ones kept before it;
    `funnel` counts each removal by its reason. A candidate is {"task": dict | None, "truncated": bool}."""
    kept, texts = [], [task_text(t) for t in pool]
    for candidate in candidates:
        task = candidate["task"]
        funnel["generated"] += 1
        if candidate["truncated"]:
            funnel["removed: truncated generation"] += 1
        elif task is None:
            funnel["removed: not a task (a field missing)"] += 1
        elif (problem := task_problem(task)) is not None:
            funnel[f"removed: invalid ({problem})"] += 1
        elif not MIN_WORDS <= words(task["instruction"]) <= MAX_WORDS or not 2 <= words(task["input"]) <= MAX_WORDS:
            funnel["removed: too short or too long"] += 1
        elif texts and max(rouge_l(task_text(task), other) for other in texts) > ROUGE_LIMIT:
            funnel[f"removed: ROUGE-L > {ROUGE_LIMIT} to a task in the pool"] += 1
        else:
            kept.append(task)
            texts.append(task_text(task))
    return kept


def drop_conflicts(tasks: list[dict], funnel: Counter) -> list[dict]:
    """Every task whose input also appears with another output (the paper's invalid instances): none of them can be
    trusted, so all are removed."""
    outputs: dict[str, set] = {}
    for t in tasks:
        outputs.setdefault(t["input"].strip().lower(), set()).add(t["output"].strip().lower())
    kept = [t for t in tasks if len(outputs[t["input"].strip().lower()]) == 1]
    if len(kept) < len(tasks):
        funnel["removed: the same input with different outputs"] += len(tasks) - len(kept)
    return kept


def self_instruct(model, tokenizer, seeds: list[dict], requests: int, seed: int = 0, max_new_tokens: int = 96,
                  batch_size: int = 16) -> tuple[list[dict], Counter]:
    """`requests` prompts, half for judgmental tasks and half for open ones; each lists 8 tasks of its kind (6 seeds,
    up to 2 generated so far, shuffled; fewer where the model's context is too short for them) and asks for one
    more. Returns (the generated tasks kept, the funnel)."""
    rng, pool, funnel = random.Random(seed), [], Counter()
    # what the prompt may take of the context: the new tokens and the chat template's own (16) left over
    room = getattr(model.config, "max_position_embeddings", 32_768) - max_new_tokens - 16
    for start in range(0, requests, batch_size):
        kinds = [TYPES[i % 2] for i in range(start, min(requests, start + batch_size))]
        prompts = []
        for kind in kinds:
            own = [t for t in seeds if t["type"] == kind]
            made = [t for t in pool if t["type"] == kind]
            shown = rng.sample(made, min(GENERATED_IN_PROMPT, len(made)))
            shown += rng.sample(own, min(PROMPT_TASKS - len(shown), len(own)))
            rng.shuffle(shown)
            while len(shown) > 1 and prompt_tokens(tokenizer, encode_prompt(shown, kind)) > room:
                shown.pop()                     # a model with a short context sees fewer in-context tasks
            prompts.append([{"role": "user", "content": encode_prompt(shown, kind)}])
        texts = generate_responses(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   temperature=TEMPERATURE, top_p=TOP_P, seed=seed + start, progress=False)
        candidates = [{"task": parse_task(text, kind),
                       "truncated": len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1}
                      for text, kind in zip(texts, kinds)]
        pool += filter_candidates(candidates, seeds + pool, funnel)
    pool = drop_conflicts(pool, funnel)
    funnel["kept"] = len(pool)
    return pool, funnel


def prompt_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def funnel_lines(funnel: Counter) -> list[str]:
    """The funnel as lines: generated, then each filter's removals, then kept."""
    removed = sorted((k for k in funnel if k.startswith("removed")), key=lambda k: -funnel[k])
    return ([f"generated: {funnel['generated']}"] + [f"  {k}: {funnel[k]}" for k in removed]
            + [f"kept: {funnel['kept']}"])
