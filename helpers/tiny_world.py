"""The tiny world: offline instruction tasks with exact answers, preference pairs, solver-proved Countdown tasks,
WarmStart completions and pre-training text — a pure function of `DataConfig`. Imports: config, countdown."""
from __future__ import annotations

import random

from .config import DataConfig
from .countdown import countdown_completion, countdown_prompt, countdown_text, solve_countdown


WORDS = ("apple river stone cloud tiger window garden silver planet candle forest rabbit orange pencil "
         "mirror bottle castle dragon yellow purple winter summer basket rocket monkey guitar island "
         "jacket ladder marble needle ocean pepper quiet rainbow saddle tomato violet wagon zebra anchor "
         "bridge copper desert engine falcon glider harbor insect jungle kettle lemon meadow nickel "
         "button camel dinner eagle feather ginger hammer igloo jelly koala lizard magnet noodle otter "
         "parrot quartz salmon turtle umbrella velvet walnut yogurt zipper acorn bamboo cactus "
         "dolphin emerald fossil goblin hazel ivory jasmine kitten lantern mango nectar olive panda").split()


_FAMILY_TEMPLATES = {
    "add": ["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."],
    "max": ["Which number is the largest: {xs}?", "Find the maximum of {xs}."],
    "first": ["What is the first letter of {w}?", "Which letter does {w} start with?"],
    "last": ["What is the last letter of {w}?", "Which letter does {w} end with?"],
    "next": ["What number comes after {n}?", "Which number follows {n}?"],
    "count": ["How many letters are in the word {w}?", "Count the letters of {w}."],
}


FAMILIES = tuple(_FAMILY_TEMPLATES)


def make_instruction_task(family: str, rng: random.Random) -> dict:
    """One instruction task with its single correct answer and a plausible wrong one (for preference pairs).

    Short answers keyed on a word or a few digits keep the tasks learnable by a few-million-parameter model in
    minutes on a CPU (copying or reversing whole words was not: see docs/LOG.md, what did not work).
    """
    template = rng.choice(_FAMILY_TEMPLATES[family])
    w = rng.choice(WORDS)
    if family == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        prompt, answer, wrong = template.format(a=a, b=b), str(a + b), str(a + b + rng.choice([-1, 1]))
    elif family == "max":
        xs = rng.sample(range(1, 10), 3)
        prompt, answer, wrong = template.format(xs=", ".join(map(str, xs))), str(max(xs)), str(sorted(xs)[1])
    elif family == "first":
        prompt, answer, wrong = template.format(w=w), w[0], next(c for c in w if c != w[0])
    elif family == "last":
        prompt, answer, wrong = template.format(w=w), w[-1], next(c for c in reversed(w) if c != w[-1])
    elif family == "next":
        n = rng.randint(1, 98)
        prompt, answer, wrong = template.format(n=n), str(n + 1), str(n - 1)
    elif family == "count":
        prompt, answer, wrong = template.format(w=w), str(len(w)), str(len(w) + rng.choice([-1, 1]))
    else:
        raise ValueError(f"unknown task family {family!r}")
    return {"family": family, "prompt": prompt, "answer": answer, "wrong": wrong}


def make_countdown_task(rng: random.Random, count: int, max_value: int) -> dict:
    """Numbers and a target proven reachable by the solver (target = a random combination's value)."""
    while True:
        nums = [rng.randint(1, max_value) for _ in range(count)]
        a, b, c = nums[0], nums[1], nums[2] if count > 2 else None
        candidates = {a + b, a * b, abs(a - b)} if c is None else {
            a + b + c, a * b + c, a * b - c, (a + b) * c, a * (b - c), a + b - c, a * b * c}
        target = rng.choice(sorted(t for t in candidates if t > 0) or [1])
        if solve_countdown(nums, target) is not None:
            return {"target": target, "nums": nums}


def build_tiny_world(cfg: DataConfig) -> dict[str, dict[str, list]]:
    """All tiny-world datasets, {name: {split: rows}}; a pure function of cfg (same seed, same rows).

    Splits are disjoint by prompt: a test prompt never appears in any training set (SFT, preference,
    pre-training text).
    """
    rng = random.Random(cfg.seed)
    # instruction tasks: test prompts first, then training tasks with any test prompt excluded
    test_tasks, seen = [], set()
    while len(test_tasks) < cfg.instruction_test + cfg.preference_test:
        task = make_instruction_task(FAMILIES[len(test_tasks) % len(FAMILIES)], rng)
        if task["prompt"] not in seen:
            seen.add(task["prompt"])
            test_tasks.append(task)
    train_tasks = []     # repeats allowed inside training (the families are small), test prompts never
    while len(train_tasks) < cfg.instruction_train + cfg.preference_train:
        task = make_instruction_task(rng.choice(FAMILIES), rng)
        if task["prompt"] not in seen:
            train_tasks.append(task)
    conversation = lambda t: {"messages": [{"role": "user", "content": t["prompt"]},
                                           {"role": "assistant", "content": t["answer"]}],
                              "source": f"tiny/{t['family']}", "reference": t["answer"]}
    pair = lambda t: {"prompt": [{"role": "user", "content": t["prompt"]}], "chosen": t["answer"],
                      "rejected": t["wrong"], "source": f"tiny/{t['family']}"}
    n_sft_test = cfg.instruction_test
    instructions = {"train": [conversation(t) for t in train_tasks[:cfg.instruction_train]],
                    "test": [conversation(t) for t in test_tasks[:n_sft_test]]}
    preferences = {"train": [pair(t) for t in train_tasks[cfg.instruction_train:]],
                   "test": [pair(t) for t in test_tasks[n_sft_test:]]}

    # Countdown: a fixed held-out test set, then disjoint training tasks
    # a training task may not be a reordering of a test task (same numbers, same target)
    test_rows, test_keys, train_rows, train_seen = [], set(), [], set()
    attempts = 0

    def draw():
        nonlocal attempts
        attempts += 1
        if attempts > 100 * (cfg.countdown_test + cfg.countdown_train):   # a small space of tasks runs dry
            raise ValueError(f"cannot draw countdown_test={cfg.countdown_test} + countdown_train="
                             f"{cfg.countdown_train} distinct Countdown tasks from {cfg.countdown_numbers} numbers "
                             f"<= {cfg.countdown_max_value}: lower the counts or raise countdown_max_value")
        return make_countdown_task(rng, cfg.countdown_numbers, cfg.countdown_max_value)

    while len(test_rows) < cfg.countdown_test:
        task = draw()
        key = (tuple(sorted(task["nums"])), task["target"])
        if key not in test_keys:
            test_keys.add(key)
            test_rows.append(task)
    while len(train_rows) < cfg.countdown_train:
        task = draw()
        ordered = (tuple(task["nums"]), task["target"])
        if (tuple(sorted(task["nums"])), task["target"]) not in test_keys and ordered not in train_seen:
            train_seen.add(ordered)
            train_rows.append(task)
    countdown = {"test": test_rows, "train": train_rows}
    warmstart = {"train": [{"messages": countdown_prompt(t["nums"], t["target"], cfg.countdown_format)
                            + [{"role": "assistant", "content": countdown_completion(t["nums"], t["target"])}],
                            "source": "tiny/warmstart", "target": t["target"], "nums": t["nums"]}
                           for t in countdown["train"][:cfg.warmstart_rows]]}

    # plain (non-chat) text for pre-training the base model: the world's facts, never its test prompts
    pretrain = []
    for t in train_tasks:       # the answer on its own line: the very token a chat answer starts with (see ANSWER)
        pretrain.append({"text": f"Question: {t['prompt']}\nAnswer:\n{t['answer']}\n"})
    for t in countdown["train"]:
        _, steps = solve_countdown(t["nums"], t["target"])
        pretrain.append({"text": countdown_text(t["nums"], t["target"], steps) + "\n"})
    rng.shuffle(pretrain)

    # more preference pairs, drawn last: test prompts still excluded
    while len(preferences["train"]) < cfg.preference_train + cfg.preference_train_extra:
        task = make_instruction_task(rng.choice(FAMILIES), rng)
        if task["prompt"] not in seen:
            preferences["train"].append(pair(task))
    pretrain = pretrain[:cfg.pretrain_rows]
    if cfg.pretrain_countdown_fresh:      # drawn after everything else: no other dataset changes
        pretrain = mixed_in(pretrain, fresh_countdown_text(rng, cfg, test_keys), rng)
    if cfg.pretrain_facts:
        pretrain = mixed_in(pretrain, fact_text(rng, cfg.pretrain_facts), rng)
    return {"instructions": instructions, "preferences": preferences, "countdown": countdown,
            "warmstart": warmstart, "pretrain": {"train": pretrain}}


def fresh_countdown_text(rng: random.Random, cfg: DataConfig, test_keys: set) -> list[dict]:
    """Pre-training lines in the Countdown phrasing ("Numbers [57, 83] make 140: 57 + 83 = 140.") for tasks drawn
    afresh, with numbers up to `pretrain_countdown_max_value`: far more tasks than a model can memorise, so the base
    model learns to copy the numbers it is given instead of recalling a training task's line. Held-out test tasks
    are never among them."""
    lines = []
    while len(lines) < cfg.pretrain_countdown_fresh:
        task = make_countdown_task(rng, cfg.countdown_numbers, cfg.pretrain_countdown_max_value)
        if (tuple(sorted(task["nums"])), task["target"]) in test_keys:
            continue
        _, steps = solve_countdown(task["nums"], task["target"])
        lines.append({"text": countdown_text(task["nums"], task["target"], steps) + "\n"})
    return lines


def fact_text(rng: random.Random, count: int) -> list[dict]:
    """Plain text stating the world's facts that its instruction tasks ask about — a dictionary entry per word (its
    first and last letter and length), the sums of two digits — never in a question's words: the base model learns
    what is true in pre-training, and SFT teaches it to answer questions about it (as a real model's knowledge comes
    from pre-training, not from its instruction data). Byte-level BPE gives a word after a space (" lizard", as in
    every question) and at a line's start ("lizard") different tokens, and the same for an answer ("t" after a
    newline, as a chat answer starts, vs " t"): so each fact names its word after a space, as a question does, and
    puts its answer on its own line, as a chat answer does. (Facts about "lizard" at a line's start left the
    letter questions to the base models that happened to link the two tokens: 16 to 46 of 66 right after DPO,
    docs/LOG.md.)"""
    facts = [f"word: {w}\nfirst letter:\n{w[0]}\nlast letter:\n{w[-1]}\nletters:\n{len(w)}" for w in WORDS]
    facts += [f"total of {a} plus {b}:\n{a + b}" for a in range(1, 10) for b in range(1, 10)]
    return [{"text": rng.choice(facts) + "\n"} for _ in range(count)]


def mixed_in(rows: list[dict], extra: list[dict], rng: random.Random) -> list[dict]:
    """`extra` spread through `rows` at random places, the order of `rows` kept."""
    slots = set(rng.sample(range(len(rows) + len(extra)), len(extra)))
    rows_left, extra_left = iter(rows), iter(extra)
    return [next(extra_left) if i in slots else next(rows_left) for i in range(len(rows) + len(extra))]
