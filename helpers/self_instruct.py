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
from .generation import continue_texts
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
STOP = ("\n\nTask",)                   # the next task's number: one new task per request (the paper stops at "16.")


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
    """The paper's prompt, plain text for a language model to continue: a line on what the tasks are, the
    in-context tasks (all of `kind`), numbered, and the next number's "Instruction:" for the model to fill in."""
    answer = ", answered yes or no, the answer first" if kind == "judgmental" else ", with its short answer"
    head = f"Tasks about a small domain: a statement (Instruction) and a question about it (Input){answer} (Output)."
    shown = [show_task(t, i + 1) for i, t in enumerate(tasks)]
    return "\n\n".join([head, *shown, f"Task {len(tasks) + 1}\nInstruction:"])


_FIELD = re.compile(r"^\**(Instruction|Input|Output)\**:\**\s*(.*)$")      # "Input:", "**Input:**" (markdown)


def parse_tasks(text: str, kind: str) -> list[dict]:
    """Every whole task in a reply (fields on their own lines, in any order; "Task N" lines and blank lines
    separate tasks). A block with a field missing is not a task."""
    tasks, found = [], {}

    def close():
        if all(field in found for field in FIELDS):
            tasks.append({**{f: found[f] for f in FIELDS}, "type": kind})
        found.clear()
    for line in text.strip().splitlines():
        line = line.strip()
        match = _FIELD.match(line)
        if line.startswith("Task ") or not line or (match and match.group(1).lower() in found):
            close()                               # a new task begins (or a field repeats: so does a task)
        if match:
            found[match.group(1).lower()] = match.group(2).strip()
    close()
    return tasks


def parse_task(text: str, kind: str, shown: list[dict] = (), cut: bool = False) -> dict | None:
    """The reply's first task that is not one of the tasks it was shown (a model often copies the list first); a
    copy where it wrote nothing else (the ROUGE-L filter removes it); None where the reply holds no whole task.
    `cut`: the reply ran out of tokens, so its last line may be cut short and is not read."""
    if cut:
        text = text.rsplit("\n", 1)[0] if "\n" in text.strip() else ""
    tasks = parse_tasks(text, kind)
    seen = {(t["instruction"], t["input"]) for t in shown}
    fresh = [t for t in tasks if (t["instruction"], t["input"]) not in seen]
    return (fresh or tasks or [None])[0]


def candidate(text: str, kind: str, shown: list[dict], cut: bool) -> dict:
    """What the filters see of one reply: its new task (or None) and whether it was truncated — cut short with no
    whole task before the cut."""
    task = parse_task(text, kind, shown, cut)
    return {"task": task, "truncated": cut and task is None}


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
    room = getattr(model.config, "max_position_embeddings", 32_768) - max_new_tokens   # what a prompt may take
    for start in range(0, requests, batch_size):
        kinds = [TYPES[i % 2] for i in range(start, min(requests, start + batch_size))]
        prompts, shown_lists = [], []
        for kind in kinds:
            own = [t for t in seeds if t["type"] == kind]
            made = [t for t in pool if t["type"] == kind]
            shown = rng.sample(made, min(GENERATED_IN_PROMPT, len(made)))
            shown += rng.sample(own, min(PROMPT_TASKS - len(shown), len(own)))
            rng.shuffle(shown)
            while len(shown) > 1 and prompt_tokens(tokenizer, encode_prompt(shown, kind)) > room:
                shown.pop()                     # a model with a short context sees fewer in-context tasks
            prompts.append(encode_prompt(shown, kind))
            shown_lists.append(shown)
        texts = continue_texts(model, tokenizer, prompts, max_new_tokens, TEMPERATURE, TOP_P, seed=seed + start,
                               batch_size=batch_size, stop_strings=STOP)
        # the model goes on from "Instruction:"; a reply that stopped at the next task's number was not cut short
        candidates = [candidate("Instruction:" + text, kind, shown,
                                prompt_tokens(tokenizer, text) >= max_new_tokens - 1 and not text.endswith(STOP))
                      for text, kind, shown in zip(texts, kinds, shown_lists)]
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
