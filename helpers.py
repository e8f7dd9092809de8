"""Shared mechanics for the notebooks, in pipeline order.

    python helpers.py data  --profile tiny                      # 00_data as a script
    python helpers.py train --stage sft_masked --profile tiny   # any training stage as a script
    python helpers.py chat  --model checkpoints/tiny/sft_masked [PROMPT]

Sections: 1 config and profiles · 2 the Countdown task (prompt, solver, reward) · 3 the tiny world ·
4 real-dataset converters and manifests · 5 tokenizer and model helpers · 6 chat formatting and the loss mask ·
7 batching · 8 logging · 9 the training loop · 10 SFT · 11 generation and evaluation · 12 the SFT comparison ·
13 command line.

Nothing here runs on import: no seeds set, no global state changed.
"""
from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 1. Config and profiles
# ════════════════════════════════════════════════════════════════════════════════════════════════
@dataclass
class DataConfig:
    seed: int = 0                     # every generator and split is a pure function of this seed
    instruction_train: int = 3000     # tiny: instruction-task conversations for SFT (smol-smoltalk stand-in)
    instruction_test: int = 200       # tiny: held-out instruction tasks, disjoint prompts
    countdown_train: int = 2000       # Countdown prompts for RLOO / on-policy DPO
    countdown_test: int = 200         # fixed held-out Countdown test set (>= 200 for a readable accuracy)
    countdown_numbers: int = 3        # how many numbers each Countdown task gives
    countdown_max_value: int = 9      # small values keep the tiny Countdown learnable on a CPU
    warmstart_rows: int = 1500        # solver-written completions for WarmStart SFT
    preference_train: int = 1500      # tiny: (chosen = correct, rejected = plausible wrong) pairs
    preference_test: int = 100
    pretrain_rows: int = 6000         # tiny: plain-text documents the base model is pre-trained on
    max_rows: int | None = None       # qwen: cap on rows taken from each hub dataset (None = all)


@dataclass
class ModelConfig:
    name: str = "tiny"                # hub id or local dir; "tiny" = the model 00_data builds locally
    vocab_size: int = 1024            # tiny: BPE vocabulary trained on the tiny world
    hidden_size: int = 192            # tiny: a few million parameters, fast on 2 CPU cores
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2             # grouped-query attention, as in Qwen2.5
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    lora: dict | None = None          # peft.LoraConfig fields, or None for full fine-tuning
    quant: int | None = None          # 4 or 8 (bitsandbytes, CUDA only), None = full precision
    gradient_checkpointing: bool = False  # trade compute for memory on long sequences


@dataclass
class TrainConfig:
    """Knobs of the one training loop; every stage's config extends this."""
    seed: int = 0                     # data order and initialisation; same seed -> same numbers on CPU
    max_steps: int = 300              # optimizer steps
    batch_size: int = 16              # sequences per micro-batch
    grad_accum: int = 1               # micro-batches per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20            # linear warmup, then cosine decay to 10% of lr
    max_grad_norm: float = 1.0        # gradient clipping
    max_length: int = 256             # tokens; longer examples are truncated (or dropped if nothing is left to train)
    group_by_length: bool = True      # batch similar lengths together: less padding, same data per epoch
    eval_every: int = 50              # steps between held-out evaluations
    save_every: int = 100             # steps between resumable checkpoints
    log_every: int = 10               # steps between TensorBoard scalars


@dataclass
class PretrainConfig(TrainConfig):
    max_steps: int = 1200             # tiny: long enough to learn the world's facts, not the chat format
    lr: float = 3e-3
    batch_size: int = 32


@dataclass
class SFTConfig(TrainConfig):
    prompt_loss_weight: float = 0.0   # 0 = masked (response only), 1 = unmasked (whole sequence)
    countdown_share: float = 0.5      # fraction of the SFT mixture taken from WarmStart Countdown rows
    sweep_weights: tuple = (0.0, 0.01, 0.1, 1.0)  # the prompt-loss-weight sweep of the comparison
    sweep_seeds: tuple = (0, 1, 2)    # >= 3 seeds per weight, to tell a difference from seed noise
    sweep_steps: int = 100            # shorter runs for the sweep (the main runs use max_steps): CPU budget


@dataclass
class EvalConfig:
    batch_size: int = 64              # prompts per generate call
    max_new_tokens: int = 64          # enough for every tiny answer, including Countdown reasoning
    instruction_rows: int = 200       # held-out instruction tasks scored by exact match
    countdown_rows: int = 200         # held-out Countdown tasks scored by the rule-based reward
    loss_rows: int = 200              # held-out conversations for response-only / whole-sequence loss


@dataclass
class Config:
    profile: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    new_tokens: tuple = ()            # domain words added to the vocabulary (see the vocabulary section)


def _tiny() -> Config:
    return Config(profile="tiny")


def _smoke() -> Config:
    """tiny, shrunk to seconds: for tests and a quick look at every notebook."""
    cfg = Config(profile="smoke")
    cfg.data = DataConfig(instruction_train=120, instruction_test=24, countdown_train=60, countdown_test=16,
                          warmstart_rows=60, preference_train=40, preference_test=16, pretrain_rows=200)
    cfg.model = ModelConfig(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_position_embeddings=256)
    cfg.pretrain = PretrainConfig(max_steps=6, batch_size=8, eval_every=3, save_every=3, log_every=1)
    cfg.sft = SFTConfig(max_steps=6, batch_size=8, eval_every=3, save_every=3, log_every=1, warmup_steps=2,
                        sweep_weights=(0.0, 1.0), sweep_seeds=(0, 1), sweep_steps=3)
    cfg.eval = EvalConfig(batch_size=16, max_new_tokens=12, instruction_rows=12, countdown_rows=8, loss_rows=16)
    return cfg


def _qwen() -> Config:
    """Qwen/Qwen2.5-0.5B and the real hub datasets, for a user's GPU machine."""
    cfg = Config(profile="qwen")
    cfg.data = DataConfig(countdown_train=20000, countdown_test=500, max_rows=20000)
    cfg.model = ModelConfig(name="Qwen/Qwen2.5-0.5B", max_position_embeddings=32768,
                            lora=dict(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"]),
                            gradient_checkpointing=True)
    cfg.sft = SFTConfig(max_steps=2000, batch_size=8, grad_accum=4, lr=2e-4, warmup_steps=100, max_length=1024,
                        eval_every=200, save_every=200, sweep_seeds=(0,), sweep_weights=(0.0, 1.0))
    cfg.eval = EvalConfig(batch_size=32, max_new_tokens=512, instruction_rows=500, countdown_rows=500,
                          loss_rows=500)
    return cfg


PROFILES = {"tiny": _tiny, "smoke": _smoke, "qwen": _qwen}


def get_config(profile: str | None = None, **overrides) -> Config:
    """The preset of `profile` (default: $PROFILE, else "tiny"), with `section__field=value` overrides."""
    profile = profile or os.environ.get("PROFILE", "tiny")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    cfg = PROFILES[profile]()
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        target = cfg if not name else getattr(cfg, section, None)
        name = name or section
        if target is None or not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
            raise ValueError(f"unknown config field {key!r} for profile {profile!r}")
        setattr(target, name, value)
    return cfg


def replace_config(section, **changes):
    """dataclasses.replace with an error that names the unknown field."""
    known = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {type(section).__name__}")
    return dataclasses.replace(section, **changes)


def config_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def output_root() -> Path:
    """Every output lives under $OUTPUT_DIR (default: the repo root), so tests can point it at a temp dir."""
    return Path(os.environ.get("OUTPUT_DIR", REPO_ROOT))


def out_path(kind: str, cfg: Config, *parts) -> Path:
    """`<OUTPUT_DIR>/<kind>/<profile>/<parts…>`, e.g. out_path("checkpoints", cfg, "initial")."""
    return output_root() / kind / cfg.profile / Path(*map(str, parts)) if parts else output_root() / kind / cfg.profile


def assets_dir(cfg: Config) -> Path:
    """assets/ for the committed tiny results; assets/<profile>/ for any other profile."""
    return output_root() / "assets" if cfg.profile == "tiny" else output_root() / "assets" / cfg.profile


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
    return rows


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 2. The Countdown task: prompt builder, solver and reward live together (TinyZero's format)
# ════════════════════════════════════════════════════════════════════════════════════════════════
COUNTDOWN_SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in the mind "
                    "and then provide the user with the answer.")


def countdown_prompt(nums, target) -> list[dict]:
    """The TinyZero Countdown prompt as chat messages; `countdown_reward` parses the answer it asks for."""
    user = (f"Using the numbers {list(nums)}, create an equation that equals {target}. You can use basic "
            "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
            "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
            "<answer> (1 + 2) / 3 </answer>.")
    return [{"role": "system", "content": COUNTDOWN_SYSTEM}, {"role": "user", "content": user}]


_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MAX_EXPRESSION_CHARS = 200          # an honest answer to a Countdown task is a few dozen characters
_ALLOWED_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                   ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _evaluate_arithmetic(node, numbers: list):
    """Evaluate a whitelisted arithmetic AST (+ - * / and non-negative int literals); collect the literals."""
    if isinstance(node, ast.Expression):
        return _evaluate_arithmetic(node.body, numbers)
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_BINOPS:
        left, right = _evaluate_arithmetic(node.left, numbers), _evaluate_arithmetic(node.right, numbers)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError("division by zero")
        return _ALLOWED_BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        numbers.append(node.value)
        return node.value
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def countdown_reward(completion: str, target, nums) -> float:
    """TinyZero's tiered reward: 0.0 no <answer>; 0.1 answer present but wrong; 1.0 correct.

    Correct = uses each given number exactly once and equals the target within 1e-5. The *last* <answer> counts,
    wherever it is in the text. Model output is untrusted: it is parsed with `ast` and only + - * /, parentheses
    and non-negative integers are evaluated — never eval/exec — and the function never raises.
    """
    if not isinstance(completion, str):
        return 0.0
    answers = _ANSWER_RE.findall(completion)
    if not answers:
        return 0.0
    expression = answers[-1].strip()
    if not expression or len(expression) > _MAX_EXPRESSION_CHARS:
        return 0.1
    try:
        used: list = []
        value = _evaluate_arithmetic(ast.parse(expression, mode="eval"), used)
        if sorted(used) != sorted(int(n) for n in nums):
            return 0.1
        return 1.0 if abs(value - float(target)) < 1e-5 else 0.1
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError, TypeError):
        return 0.1


def solve_countdown(nums, target):
    """All ways to combine every number once with + - * / (exact fractions); returns (expression, steps) or None.

    `steps` are the intermediate equations a WarmStart completion narrates, e.g. ["7 - 2 = 5", "5 * 3 = 15"].
    """
    from fractions import Fraction
    start = [(Fraction(n), str(n), []) for n in nums]

    def search(items):
        if len(items) == 1:
            value, expr, steps = items[0]
            return (expr, steps) if value == target else None
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (a, ea, sa), (b, eb, sb) = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                for op in "+-*/":
                    if op in "+*" and i > j:
                        continue      # commutative: one order is enough
                    if op == "/" and b == 0:
                        continue
                    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
                    wrap = lambda e, simple: e if simple else f"({e})"
                    expr = f"{wrap(ea, len(sa) == 0)} {op} {wrap(eb, len(sb) == 0)}"
                    step = f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(value)}"
                    found = search(rest + [(value, expr, sa + sb + [step])])
                    if found:
                        return found
        return None

    return search(start)


def _fmt(x) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def countdown_completion(nums, target) -> str | None:
    """A WarmStart-style completion written by the solver: reasoning in <think>, expression in <answer>."""
    solved = solve_countdown(nums, target)
    if solved is None:
        return None
    expression, steps = solved
    return f"<think> {', '.join(steps)} </think>\n<answer> {expression} </answer>"


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 3. The tiny world: offline tasks with exact answers
# ════════════════════════════════════════════════════════════════════════════════════════════════
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
    minutes on a CPU (copying or reversing whole words was not: see the README's log of what did not work).
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
        prompt, answer, wrong = template.format(w=w), w[0], w[1]
    elif family == "last":
        prompt, answer, wrong = template.format(w=w), w[-1], w[-2]
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
    count_rows, cd_seen = [], set()
    while len(count_rows) < cfg.countdown_test + cfg.countdown_train:
        task = make_countdown_task(rng, cfg.countdown_numbers, cfg.countdown_max_value)
        key = (tuple(task["nums"]), task["target"])
        if key not in cd_seen:
            cd_seen.add(key)
            count_rows.append(task)
    countdown = {"test": count_rows[:cfg.countdown_test], "train": count_rows[cfg.countdown_test:]}
    warmstart = {"train": [{"messages": countdown_prompt(t["nums"], t["target"])
                            + [{"role": "assistant", "content": countdown_completion(t["nums"], t["target"])}],
                            "source": "tiny/warmstart", "target": t["target"], "nums": t["nums"]}
                           for t in countdown["train"][:cfg.warmstart_rows]]}

    # plain (non-chat) text for pre-training the base model: the world's facts, never its test prompts
    pretrain = []
    for t in train_tasks:
        pretrain.append({"text": f"Question: {t['prompt']}\nAnswer: {t['answer']}\n"})
    for t in countdown["train"]:
        _, steps = solve_countdown(t["nums"], t["target"])
        pretrain.append({"text": f"Numbers {t['nums']} make {t['target']}: {', '.join(steps)}.\n"})
    rng.shuffle(pretrain)
    return {"instructions": instructions, "preferences": preferences, "countdown": countdown,
            "warmstart": warmstart, "pretrain": {"train": pretrain[:cfg.pretrain_rows]}}


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 4. Real datasets: converters into three record types, and manifests
#    conversation {"messages"} · preference pair {"prompt", "chosen", "rejected"} · verifiable {"target", "nums"}
# ════════════════════════════════════════════════════════════════════════════════════════════════
HUB_SOURCES = {   # name: (hub id, {our split: hub split}, converter name)
    "smoltalk": ("HuggingFaceTB/smol-smoltalk", {"train": "train", "test": "test"}, "convert_smoltalk"),
    "ultrafeedback": ("HuggingFaceH4/ultrafeedback_binarized", {"train": "train_prefs", "test": "test_prefs"},
                      "convert_ultrafeedback"),
    "warmstart": ("Asap7772/cog_behav_all_strategies", {"train": "train"}, "convert_warmstart"),
    "countdown": ("Jiayi-Pan/Countdown-Tasks-3to4", {"train": "train"}, "convert_countdown"),
    "alpaca": ("yahma/alpaca-cleaned", {"train": "train"}, "convert_alpaca"),
}
ROLES = ("system", "user", "assistant")


def conversation_problem(messages) -> str | None:
    """Why a message list cannot be trained on, or None if it is fine."""
    if not isinstance(messages, list) or not messages:
        return "messages missing or empty"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            return f"message {i} has no role"
        if m["role"] not in ROLES:
            return f"message {i} has unknown role {m['role']!r}"
        if not isinstance(m.get("content"), str):
            return f"message {i} content is not a string"
        if m["role"] == "assistant" and not m["content"].strip():
            return f"message {i} is an empty assistant message"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message"
    return None


class SkipCounter:
    """Counts skipped rows by reason and remembers the first few, so nothing is dropped silently."""

    def __init__(self, name: str, show: int = 3):
        self.name, self.show, self.reasons, self.examples = name, show, Counter(), []

    def skip(self, index, reason: str) -> None:
        self.reasons[reason.split(" (")[0]] += 1
        if len(self.examples) < self.show:
            self.examples.append(f"row {index}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> str:
        if not self.total:
            return f"{self.name}: no rows skipped"
        return f"{self.name}: skipped {self.total} rows — " + "; ".join(self.examples)


def convert_smoltalk(rows, skips: SkipCounter) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        problem = conversation_problem(row.get("messages"))
        if problem:
            skips.skip(i, problem)
            continue
        out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                    "source": row.get("source", "smoltalk")})
    return out


def convert_ultrafeedback(rows, skips: SkipCounter) -> list[dict]:
    """chosen/rejected are full message lists (prompt + answer): keep the prompt once, the two answers as text."""
    out = []
    for i, row in enumerate(rows):
        chosen, rejected = row.get("chosen"), row.get("rejected")
        problem = conversation_problem(chosen) or conversation_problem(rejected)
        if problem is None and (chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant"):
            problem = "last message is not the assistant's"
        if problem is None:
            prompt = chosen[:-1]
            if not prompt or not any(m["content"].strip() for m in prompt):
                problem = "empty prompt"
            elif chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
                problem = "chosen identical to rejected"
        if problem:
            skips.skip(i, problem)
            continue
        out.append({"prompt": [dict(role=m["role"], content=m["content"]) for m in chosen[:-1]],
                    "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"],
                    "score_chosen": row.get("score_chosen"), "score_rejected": row.get("score_rejected"),
                    "source": "ultrafeedback"})
    return out


def _text_pair_rows(rows, skips, fields, build):
    out = []
    for i, row in enumerate(rows):
        bad = next((f for f in fields if not isinstance(row.get(f), str)), None)
        if bad:
            skips.skip(i, f"field {bad!r} missing or not a string")
            continue
        messages = build(row)
        problem = conversation_problem(messages)
        if problem:
            skips.skip(i, problem)
            continue
        out.append({"messages": messages})
    return out


def convert_warmstart(rows, skips: SkipCounter) -> list[dict]:
    """cog_behav_all_strategies: `query` is the full Countdown prompt, `completion` the worked answer."""
    return [dict(r, source="warmstart") for r in _text_pair_rows(
        rows, skips, ("query", "completion"),
        lambda r: [{"role": "user", "content": r["query"].strip()},
                   {"role": "assistant", "content": r["completion"].strip()}])]


def convert_alpaca(rows, skips: SkipCounter) -> list[dict]:
    def build(r):
        user = r["instruction"].strip() + (("\n\n" + r["input"].strip()) if r.get("input", "").strip() else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"].strip()}]
    return [dict(r, source="alpaca") for r in _text_pair_rows(rows, skips, ("instruction", "output"), build)]


def convert_countdown(rows, skips: SkipCounter) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        target, nums = row.get("target"), row.get("nums")
        if not isinstance(target, int) or isinstance(target, bool):
            skips.skip(i, "field 'target' missing or not an integer")
        elif not isinstance(nums, list) or not nums or not all(isinstance(n, int) and n >= 0 for n in nums):
            skips.skip(i, "field 'nums' missing or not a list of non-negative integers")
        else:
            out.append({"target": target, "nums": list(nums)})
    return out


def split_holdout(rows: list, test_size: int, seed: int) -> dict[str, list]:
    """A fixed held-out test split carved from a single-split dataset (deterministic for the seed)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test = set(order[:test_size])
    return {"train": [rows[i] for i in order[test_size:]], "test": [rows[i] for i in sorted(test)]}


def content_hash(splits: dict[str, list]) -> str:
    digest = hashlib.sha256()
    for split in sorted(splits):
        for row in splits[split]:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def write_dataset(cfg: Config, name: str, splits: dict[str, list], source: str, revision: str = "local",
                  filters: str = "", skips: SkipCounter | None = None) -> Path:
    """Write data/<profile>/<name>/<split>.jsonl plus manifest.json (source, sizes, filters, drops, hash)."""
    folder = out_path("data", cfg, name)
    for split, rows in splits.items():
        write_jsonl(folder / f"{split}.jsonl", rows)
    manifest = {"name": name, "source": source, "revision": revision, "profile": cfg.profile,
                "seed": cfg.data.seed, "splits": {s: len(r) for s, r in splits.items()}, "filters": filters,
                "dropped": dict(skips.reasons) if skips else {}, "content_hash": content_hash(splits)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def load_split(cfg: Config, name: str, split: str) -> list[dict]:
    path = out_path("data", cfg, name, f"{split}.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebooks/00_data.ipynb (or `python helpers.py data "
                                f"--profile {cfg.profile}`) first")
    return read_jsonl(path)


def download_and_convert(cfg: Config, name: str) -> Path:
    """qwen profile: fetch one hub dataset with `datasets`, convert, write with its manifest."""
    from datasets import load_dataset
    hub_id, split_map, converter = HUB_SOURCES[name]
    skips, splits = SkipCounter(name), {}
    for ours, theirs in split_map.items():
        ds = load_dataset(hub_id, split=theirs)
        if cfg.data.max_rows:
            ds = ds.select(range(min(cfg.data.max_rows, len(ds))))
        splits[ours] = globals()[converter](ds, skips)
    if name == "countdown":
        splits = split_holdout(splits["train"], cfg.data.countdown_test, cfg.data.seed)
    print(skips.report())
    return write_dataset(cfg, name, splits, source=hub_id, revision="main",
                         filters=f"max_rows={cfg.data.max_rows}", skips=skips)


def prepare_data(cfg: Config) -> dict[str, Path]:
    """Build (tiny, smoke) or download (qwen) every dataset of the profile; returns {name: folder}."""
    if cfg.profile == "qwen":
        return {name: download_and_convert(cfg, name) for name in HUB_SOURCES}
    world = build_tiny_world(cfg.data)
    return {name: write_dataset(cfg, name, splits, source="tiny world (helpers.build_tiny_world)",
                                filters=json.dumps(dataclasses.asdict(cfg.data)))
            for name, splits in world.items()}


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 5. Tokenizer and model helpers
# ════════════════════════════════════════════════════════════════════════════════════════════════
# ChatML as Qwen2.5 writes it (without tools); the tiny tokenizer carries the same template and special tokens.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Qwen2's pre-tokenizer: digits split one by one, so arithmetic is learnable digit by digit.
QWEN_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                    r"\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tiny_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on the tiny world, with Qwen's special tokens and ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   bos_token=None, unk_token=None, model_max_length=4096)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer, cfg: ModelConfig, seed: int):
    """A randomly initialised Qwen2ForCausalLM sized by cfg (tied embeddings, like Qwen2.5-0.5B)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                         pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, attention_dropout=0.0)
    return Qwen2ForCausalLM(config)


def load_tokenizer(model_name, trust_remote_code: bool = False):
    """AutoTokenizer with a pad token guaranteed (Qwen: <|endoftext|>); eos is read from the tokenizer, not assumed."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(model_name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = ENDOFTEXT if ENDOFTEXT in vocab else tokenizer.eos_token
    return tokenizer


def as_lora_config(lora_cfg):
    """Accept a peft.LoraConfig or a dict of its fields."""
    from peft import LoraConfig
    if lora_cfg is None or isinstance(lora_cfg, LoraConfig):
        return lora_cfg
    if not isinstance(lora_cfg, dict):
        raise TypeError(f"lora_cfg must be a peft.LoraConfig or a dict, got {type(lora_cfg).__name__}")
    return LoraConfig(**lora_cfg)


def load_model(model_name, quant: int | None = None, lora_cfg=None, dtype=None, trust_remote_code: bool = False):
    """A causal LM from a hub id or local dir; optional 4/8-bit (bitsandbytes, CUDA only) and LoRA adapters.

    A directory holding a LoRA adapter (adapter_config.json) is loaded onto its base model.
    """
    from transformers import AutoModelForCausalLM
    path = Path(str(model_name))
    if path.exists() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path} has neither config.json nor adapter_config.json: not a model directory")
    kwargs = {"trust_remote_code": trust_remote_code}
    if quant is not None:
        if quant not in (4, 8):
            raise ValueError(f"quant must be 4, 8 or None, got {quant!r}")
        if not torch.cuda.is_available():
            raise RuntimeError(f"{quant}-bit loading needs CUDA (bitsandbytes); this machine has no GPU — "
                               "use quant=None")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quant == 4, load_in_8bit=quant == 8, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM
        return AutoPeftModelForCausalLM.from_pretrained(str(path), is_trainable=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(model_name), **kwargs)
    lora = as_lora_config(lora_cfg)
    if lora is not None:
        from peft import get_peft_model, prepare_model_for_kbit_training
        if quant is not None:
            model = prepare_model_for_kbit_training(model)
        model = get_peft_model(model, lora)
    return model


def save_model(model, save_dir, tokenizer=None, merge: bool = False, extra: dict | None = None) -> Path:
    """Hugging Face format (safetensors) with config and tokenizer beside it; LoRA adapters as adapters, or merged.

    `extra` files (name -> JSON-able dict) are written too, e.g. the run config.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(save_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_dir)
    for name, content in (extra or {}).items():
        (save_dir / name).write_text(json.dumps(content, indent=2, default=str))
    return save_dir


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 6. Chat formatting and the loss mask — one render path for masked and unmasked
# ════════════════════════════════════════════════════════════════════════════════════════════════
def render_chat(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn's content + <|im_end|>."""
    text = render_chat(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        target = message["content"] + IM_END
        if not text.startswith(prefix) or text[len(prefix):len(prefix) + len(target)] != target:
            raise ValueError("chat template does not render assistant turns as '<|im_start|>assistant\\n"
                             "…<|im_end|>' after the prompt; cannot build the loss mask")
        spans.append((len(prefix), len(prefix) + len(target)))
    return text, spans


def build_sft_example(tokenizer, messages, max_length: int, prompt_loss_weight: float = 0.0) -> dict | None:
    """input_ids, attention_mask and (unshifted) labels for one conversation; None if nothing is left to train.

    Masked (weight 0): every token up to and including `<|im_start|>assistant\\n` gets label -100 — in the
    single-turn case exactly `labels[:len(prompt_ids)] = -100` — and each assistant turn's content plus its
    closing `<|im_end|>` is trained (the model must learn to stop). Unmasked (weight 1): every token is trained.
    In between, all tokens get labels and `loss_weights` carries 1 for response tokens and the weight elsewhere.
    """
    if not 0.0 <= prompt_loss_weight <= 1.0:
        raise ValueError(f"prompt_loss_weight must be in [0, 1], got {prompt_loss_weight}")
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"][:max_length]
    offsets = encoded["offset_mapping"][:max_length]
    is_response = [any(s <= start < e for s, e in spans) for start, _ in offsets]
    # position 0 is never predicted (labels shift by one inside the loss), so it cannot carry the only loss
    if not any(is_response[1:]):
        return None
    example = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
    if prompt_loss_weight == 0.0:
        example["labels"] = [t if r else -100 for t, r in zip(input_ids, is_response)]
    else:
        example["labels"] = list(input_ids)
        if prompt_loss_weight < 1.0:
            example["loss_weights"] = [1.0 if r else prompt_loss_weight for r in is_response]
    return example


def build_sft_dataset(tokenizer, conversations, max_length: int, prompt_loss_weight: float = 0.0,
                      name: str = "sft") -> tuple[list[dict], SkipCounter]:
    """Tokenize conversations once; malformed or fully truncated ones are skipped and counted, never trained."""
    skips, examples = SkipCounter(name), []
    for i, row in enumerate(conversations):
        problem = conversation_problem(row.get("messages"))
        if problem:
            skips.skip(i, problem)
            continue
        example = build_sft_example(tokenizer, row["messages"], max_length, prompt_loss_weight)
        if example is None:
            skips.skip(i, f"no trainable token left after truncation to {max_length}")
            continue
        examples.append(example)
    return examples, skips


def build_lm_example(tokenizer, text: str, max_length: int) -> dict | None:
    """Plain text (pre-training): every token is trained; ends with <|endoftext|> like a document."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length - 1] + [tokenizer.pad_token_id]
    if len(ids) < 2:
        return None
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def show_mask(tokenizer, example: dict, width: int = 100) -> str:
    """The tokens of an example, trained ones in [brackets] (with their weight when fractional)."""
    parts = []
    weights = example.get("loss_weights")
    for i, (tok_id, label) in enumerate(zip(example["input_ids"], example["labels"])):
        piece = tokenizer.decode([tok_id]).replace("\n", "\\n")
        if label == -100:
            parts.append(piece)
        elif weights is not None and weights[i] < 1:
            parts.append(f"[{piece}]{weights[i]:g}")
        else:
            parts.append(f"[{piece}]")
    line, lines = "", []
    for part in parts:
        if len(line) + len(part) + 1 > width:
            lines.append(line)
            line = ""
        line += part + "·"
    return "\n".join(lines + [line])


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 7. Batching without waste: dynamic padding and length-grouped batches
# ════════════════════════════════════════════════════════════════════════════════════════════════
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


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 8. Logging: one small TensorBoard logger with namespaced keys, and a do-nothing twin
# ════════════════════════════════════════════════════════════════════════════════════════════════
class NullLogger:
    """Logs nothing, so training code never asks whether logging is on."""

    def scalars(self, values: dict, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


def read_tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), …]} from every event file under log_dir (for plots and the report)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    curves: dict[str, list] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in curves.items()}


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 9. The training loop — one loop for every stage; a stage plugs in its loss
# ════════════════════════════════════════════════════════════════════════════════════════════════
class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """lr multiplier: linear warmup to 1, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_context():
    """bf16 autocast on CUDA, plain fp32 on CPU."""
    import contextlib
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.cuda.is_available() else contextlib.nullcontext()


def _save_checkpoint(model, tokenizer, stage_dir: Path, state: dict, optimizer, scheduler, run_config: dict):
    """Atomic: write everything to a temporary sibling, then swap it in, so a crash never leaves half a checkpoint."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir.with_name(stage_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer, extra={"run_config.json": run_config})
    torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}, tmp / "training_state.pt")
    old = stage_dir.with_name(stage_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        stage_dir.rename(old)
    tmp.rename(stage_dir)
    shutil.rmtree(old, ignore_errors=True)


def _load_weights_into(model, ckpt_dir: Path) -> None:
    from safetensors.torch import load_file
    if (ckpt_dir / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(ckpt_dir / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(ckpt_dir.glob("model*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir} does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")


def _resumable_state(stage_dir: Path, run_config: dict) -> dict | None:
    """The saved training state if stage_dir holds an unfinished run of the same config, else None."""
    stage_dir = Path(stage_dir)
    if not stage_dir.exists() and stage_dir.with_name(stage_dir.name + ".old").exists():
        stage_dir = stage_dir.with_name(stage_dir.name + ".old")     # crashed between the two renames
    state_file = stage_dir / "training_state.pt"
    if not state_file.exists():
        return None
    state = torch.load(state_file, weights_only=True)
    saved_config = json.loads((stage_dir / "run_config.json").read_text())
    run_config = json.loads(json.dumps(run_config, default=str))     # tuples -> lists, as saved
    if state.get("finished") or saved_config != run_config:
        return None
    state["dir"] = stage_dir
    return state


def load_history(stage_dir) -> list[dict]:
    """The evaluation history saved with a run's checkpoint."""
    return torch.load(Path(stage_dir) / "training_state.pt", weights_only=True)["history"]


def train(model, tokenizer, examples: list[dict], cfg: TrainConfig, loss_fn, collate_fn, stage_dir,
          eval_fn=None, logger=None, run_config: dict | None = None, resume: bool = True,
          stop_after_steps: int | None = None, desc: str = "train") -> list[dict]:
    """The one training loop. Returns the evaluation history [{step, metric: value, …}].

    loss_fn(model, batch) -> (summed_loss, metrics): the loss summed over the batch's units (trained tokens for
    SFT, pairs for DPO, samples for RLOO); collate_fn puts the unit count in batch["normalizer"]. A step's loss
    is the sum over all its micro-batches divided by the total units of the whole step, so batch 8 × accumulation
    1 and batch 1 × accumulation 8 give the same gradient (the 2024 gradient-accumulation bug).
    `stop_after_steps` simulates an interruption (tests); a later call with resume=True picks up the checkpoint.
    """
    from tqdm.auto import tqdm
    logger = logger or NullLogger()
    run_config = json.loads(json.dumps(run_config or {"train": dataclasses.asdict(cfg)}, default=str))
    stage_dir = Path(stage_dir)
    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.max_steps))
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "finished": False}
    saved = _resumable_state(stage_dir, run_config) if resume else None
    if saved is not None:
        _load_weights_into(model, saved["dir"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        state = {k: saved[k] for k in state}
        print(f"resuming {desc} from step {state['step']} ({saved['dir']})")

    lengths = [len(e["input_ids"]) for e in examples]
    epoch_batches = lambda epoch: length_grouped_batches(lengths, cfg.batch_size, cfg.seed * 1000 + epoch,
                                                         cfg.group_by_length)
    batches = epoch_batches(state["epoch"])

    def next_indices():
        nonlocal batches
        if state["batch_in_epoch"] >= len(batches):
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            batches = epoch_batches(state["epoch"])
        state["batch_in_epoch"] += 1
        return batches[state["batch_in_epoch"] - 1]

    def evaluate():
        if eval_fn is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model)
        model.train()
        state["history"].append({"step": state["step"], **metrics})
        logger.scalars(metrics, state["step"])

    if state["step"] == 0:
        evaluate()
    model.train()
    progress = tqdm(total=cfg.max_steps, initial=state["step"], desc=desc, mininterval=2)
    while state["step"] < cfg.max_steps:
        if stop_after_steps is not None and state["step"] >= stop_after_steps:
            progress.close()
            return state["history"]
        started = time.perf_counter()
        micro_batches = [collate_fn([examples[i] for i in next_indices()]) for _ in range(cfg.grad_accum)]
        total_units = sum(float(b["normalizer"]) for b in micro_batches)
        loss_sum, metric_sums = 0.0, Counter()
        for batch in micro_batches:
            batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast_context():
                summed, metrics = loss_fn(model, batch)
            (summed / total_units).backward()
            loss_sum += float(summed.detach())
            metric_sums.update({k: float(v) / cfg.grad_accum for k, v in metrics.items()})
        loss = loss_sum / total_units
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            progress.close()
            raise TrainingDiverged(f"{desc}: loss={loss} grad_norm={grad_norm} at step {state['step'] + 1}; "
                                   f"stopped, last good checkpoint kept in {stage_dir} (lower the lr?)")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        progress.update(1)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.max_steps:
            seconds = time.perf_counter() - started
            real = sum(float(b["attention_mask"].sum()) for b in micro_batches)
            cells = sum(b["attention_mask"].numel() for b in micro_batches)
            logger.scalars({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                            "train/tokens_per_second": real / seconds, "train/padding_fraction": 1 - real / cells,
                            "train/trained_units": total_units, **dict(metric_sums)}, state["step"])
            progress.set_postfix(loss=f"{loss:.4f}")
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
            evaluate()
        if state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps:
            state["finished"] = state["step"] == cfg.max_steps
            _save_checkpoint(model, tokenizer, stage_dir, state, optimizer, scheduler, run_config)
    progress.close()
    return state["history"]


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 10. SFT (and the tiny base model's pre-training, which is SFT with every token trained)
# ════════════════════════════════════════════════════════════════════════════════════════════════
def sft_loss(model, batch):
    """Σ_t w_t · CE(logits_t, label_{t+1}): labels are unshifted (HF convention), so shift here.

    w_t = 1 on trained tokens and 0 on -100 labels, or the per-token `loss_weights` for 0 < weight < 1.
    The loop divides by Σ w_t over the whole optimizer step (per-token normalisation).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    weights = batch["loss_weights"][:, 1:] if "loss_weights" in batch else (labels != -100).float()
    token_loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.clamp(min=0).reshape(-1),
                                 reduction="none").view_as(labels)
    return (token_loss * weights).sum(), {}


def sft_collate(pad_token_id: int):
    def collate_fn(examples):
        batch = collate(examples, pad_token_id)
        labels = batch["labels"][:, 1:]
        weights = batch["loss_weights"][:, 1:] if "loss_weights" in batch else (labels != -100).float()
        batch["normalizer"] = weights.sum()
        return batch
    return collate_fn


@torch.no_grad()
def evaluate_loss(model, examples: list[dict], pad_token_id: int, batch_size: int = 32) -> float:
    """Mean loss per trained token over `examples` (the mask inside the examples decides which tokens)."""
    was_training = model.training
    model.eval()
    collate_fn, total, units = sft_collate(pad_token_id), 0.0, 0.0
    dev = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(dev) for k, v in collate_fn(examples[i:i + batch_size]).items()}
        with autocast_context():
            summed, _ = sft_loss(model, batch)
        total, units = total + float(summed), units + float(batch["normalizer"])
    model.train(was_training)
    return total / max(units, 1.0)


def build_initial_model(cfg: Config, log: bool = True) -> Path:
    """checkpoints/<profile>/initial — the untouched base model every stage starts from.

    tiny/smoke: train the tokenizer on the tiny world, build a Qwen2 model, pre-train it briefly on plain text
    (facts of the world, never the chat format, never test prompts). qwen: save Qwen/Qwen2.5-0.5B as it is.
    """
    target = out_path("checkpoints", cfg, "initial")
    if cfg.profile == "qwen":
        tokenizer = load_tokenizer(cfg.model.name)
        return save_model(load_model(cfg.model.name), target, tokenizer,
                          extra={"run_config.json": config_dict(cfg)})
    seed_everything(cfg.pretrain.seed)
    texts = [r["text"] for r in load_split(cfg, "pretrain", "train")]
    chats = [render_chat_plain(r["messages"]) for r in load_split(cfg, "instructions", "train")[:200]]
    chats += [render_chat_plain(r["messages"]) for r in load_split(cfg, "warmstart", "train")[:200]]
    tokenizer = train_tiny_tokenizer(texts + chats, cfg.model.vocab_size)
    model = build_tiny_model(tokenizer, cfg.model, cfg.pretrain.seed)
    examples = [e for e in (build_lm_example(tokenizer, t, cfg.pretrain.max_length) for t in texts) if e]
    held_out = examples[: max(8, len(examples) // 20)]
    logger = TensorBoardLogger(out_path("tensorboard_events", cfg, "pretrain")) if log else NullLogger()
    run_config = {"stage": "pretrain", **config_dict(cfg)}
    train(model, tokenizer, examples[len(held_out):], cfg.pretrain, sft_loss, sft_collate(tokenizer.pad_token_id),
          out_path("checkpoints", cfg, "pretrain_run"), logger=logger, run_config=run_config, desc="pretrain",
          eval_fn=lambda m: {"eval/loss": evaluate_loss(m, held_out, tokenizer.pad_token_id)})
    logger.close()
    shutil.rmtree(out_path("checkpoints", cfg, "pretrain_run"), ignore_errors=True)
    return save_model(model, target, tokenizer, extra={"run_config.json": run_config})


def render_chat_plain(messages) -> str:
    """Conversation text without special tokens: only so the tokenizer's merges cover the chat's words."""
    return "system\nYou are a helpful assistant.\n" + "\n".join(f"{m['role']}\n{m['content']}" for m in messages)


def sft_mixture(cfg: Config, split: str = "train") -> list[dict]:
    """The SFT conversations of the profile: instruction following + the Countdown WarmStart set.

    tiny: the tiny world's instruction tasks + solver-written WarmStart completions.
    qwen: smol-smoltalk + cog_behav_all_strategies (the course project's two tracks).
    """
    instruction_name = "smoltalk" if cfg.profile == "qwen" else "instructions"
    instructions = load_split(cfg, instruction_name, split)
    if split != "train":
        return instructions
    warmstart = load_split(cfg, "warmstart", "train")
    share = cfg.sft.countdown_share
    n_warm = min(len(warmstart), int(round(len(instructions) * share / max(1e-9, 1 - share))))
    rows = instructions + warmstart[:n_warm]
    random.Random(cfg.data.seed).shuffle(rows)
    return rows


def run_sft(cfg: Config, stage: str = "sft_masked", prompt_loss_weight: float | None = None,
            seed: int | None = None, max_steps: int | None = None, log: bool = True, quiet: bool = False) -> dict:
    """Train one SFT run from checkpoints/<profile>/initial; returns {"history", "dir", "dropped"}.

    The masked and unmasked runs call this with identical settings except prompt_loss_weight.
    """
    weight = cfg.sft.prompt_loss_weight if prompt_loss_weight is None else prompt_loss_weight
    train_cfg = replace_config(cfg.sft, prompt_loss_weight=weight,
                               seed=cfg.sft.seed if seed is None else seed,
                               max_steps=cfg.sft.max_steps if max_steps is None else max_steps)
    seed_everything(train_cfg.seed)
    initial = out_path("checkpoints", cfg, "initial")
    tokenizer = load_tokenizer(initial)
    model = load_model(initial, lora_cfg=cfg.model.lora, quant=cfg.model.quant).to(device())
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    examples, skips = build_sft_dataset(tokenizer, sft_mixture(cfg), train_cfg.max_length, weight)
    if not quiet:
        print(skips.report())
    held = heldout_loss_examples(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    eval_fn = lambda m: {"eval/response_loss": evaluate_loss(m, held["response"], pad),
                         "eval/sequence_loss": evaluate_loss(m, held["sequence"], pad)}
    stage_dir = out_path("checkpoints", cfg, stage)
    logger = TensorBoardLogger(out_path("tensorboard_events", cfg, stage)) if log else NullLogger()
    run_config = {"stage": stage, "profile": cfg.profile, "sft": dataclasses.asdict(train_cfg),
                  "model": dataclasses.asdict(cfg.model), "data": dataclasses.asdict(cfg.data),
                  "train_examples": len(examples), "dropped": dict(skips.reasons)}
    history = train(model, tokenizer, examples, train_cfg, sft_loss, sft_collate(pad), stage_dir,
                    eval_fn=eval_fn, logger=logger, run_config=run_config, desc=stage)
    logger.close()
    return {"history": history, "dir": stage_dir, "dropped": skips.total, "model": model, "tokenizer": tokenizer}


def heldout_loss_examples(cfg: Config, tokenizer) -> dict[str, list[dict]]:
    """The same held-out conversations, masked (response-only loss) and unmasked (whole-sequence loss)."""
    rows = sft_mixture(cfg, "test")[:cfg.eval.loss_rows]
    max_length = cfg.sft.max_length
    return {"response": build_sft_dataset(tokenizer, rows, max_length, 0.0)[0],
            "sequence": build_sft_dataset(tokenizer, rows, max_length, 1.0)[0]}


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 11. Generation and evaluation
# ════════════════════════════════════════════════════════════════════════════════════════════════
def stop_token_ids(tokenizer) -> list[int]:
    """Generation stops at <|im_end|> or <|endoftext|> — whichever the tokenizer calls eos (base vs instruct)."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in (IM_END, ENDOFTEXT) if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


@torch.no_grad()
def generate_responses(model, tokenizer, conversations, batch_size: int = 32, max_new_tokens: int = 64,
                       temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                       progress: bool = True) -> list[str]:
    """Responses to chat prompts (lists of messages): batched with left padding and the KV cache, greedy unless
    temperature > 0, stopping at <|im_end|> / <|endoftext|>, special tokens stripped."""
    from tqdm.auto import tqdm
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"     # generation continues from the right edge of every row
    dev = next(model.parameters()).device
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if temperature > 0:
        torch.manual_seed(seed)
    texts = [render_chat(tokenizer, c, add_generation_prompt=True) for c in conversations]
    # longest prompts first keeps padding low; results are put back in the caller's order
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    responses = [None] * len(texts)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, mininterval=2):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(dev)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            for row, i in enumerate(idx):
                responses[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1]:],
                                                skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return responses


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


def evaluate_model(model, tokenizer, cfg: Config, responses_path: Path | None = None,
                   progress: bool = False) -> dict:
    """Held-out response-only loss / perplexity, whole-sequence loss, instruction quality, Countdown score."""
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
    tasks = load_split(cfg, "countdown", "test")[:cfg.eval.countdown_rows]
    cd_answers = generate_responses(model, tokenizer, [countdown_prompt(t["nums"], t["target"]) for t in tasks],
                                    cfg.eval.batch_size, cfg.eval.max_new_tokens, progress=progress)
    rewards = [countdown_reward(a, t["target"], t["nums"]) for a, t in zip(cd_answers, tasks)]
    metrics["countdown_reward"] = sum(rewards) / len(rewards)
    metrics["countdown_accuracy"] = sum(r == 1.0 for r in rewards) / len(rewards)
    if responses_path is not None:
        write_jsonl(responses_path,
                    [{"task": "instruction", "prompt": p, "response": a, "reference": r, metric: s, "greedy": True}
                     for p, a, r, s in zip(prompts, answers, references, scores)]
                    + [{"task": "countdown", "nums": t["nums"], "target": t["target"], "response": a, "reward": w,
                        "greedy": True} for t, a, w in zip(tasks, cd_answers, rewards)])
    return metrics


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 12. The SFT comparison: summaries (csv/md/txt/xlsx), figures, the prompt-loss-weight sweep
# ════════════════════════════════════════════════════════════════════════════════════════════════
def timestamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S")


def markdown_table(df) -> str:
    """A GitHub markdown table without the optional `tabulate` dependency."""
    cells = [[str(c) for c in df.columns]] + [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_summary(df, cfg: Config, eval_name: str, stamp: str | None = None) -> dict[str, Path]:
    """evaluation_results/<profile>/<eval_name>/<stamp>/summary/summary_<stamp>.{csv,md,txt,xlsx}."""
    stamp = stamp or timestamp()
    folder = out_path("evaluation_results", cfg, eval_name, stamp, "summary")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"summary_{stamp}.{ext}" for ext in ("csv", "md", "txt", "xlsx")}
    df.to_csv(paths["csv"], index=False)
    paths["md"].write_text(markdown_table(df) + "\n")
    paths["txt"].write_text(df.to_string(index=False) + "\n")
    df.to_excel(paths["xlsx"], index=False, engine="openpyxl")
    return paths


def latest_summary(cfg: Config, eval_name: str):
    """The newest summary csv of an evaluation as a DataFrame (None if there is none)."""
    import pandas as pd
    found = sorted(out_path("evaluation_results", cfg, eval_name).glob("*/summary/summary_*.csv"))
    return pd.read_csv(found[-1]) if found else None


def evaluate_checkpoints(cfg: Config, names: list[str], save_responses: bool = True):
    """One row per checkpoint of the profile, the same held-out measures for each."""
    import pandas as pd
    rows = []
    for name in names:
        folder = out_path("checkpoints", cfg, name)
        tokenizer, model = load_tokenizer(folder), load_model(folder).to(device())
        responses = out_path("outputs", cfg, name, "responses.jsonl") if save_responses else None
        rows.append({"model": name, **evaluate_model(model, tokenizer, cfg, responses)})
    return pd.DataFrame(rows)


def plot_sft_comparison(histories: dict[str, list[dict]], final, path: Path) -> Path:
    """Left: held-out response-only loss of each run against steps. Right: final metrics side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, history in histories.items():
        left.plot([h["step"] for h in history], [h["eval/response_loss"] for h in history], marker="o", label=name)
    left.set(xlabel="optimizer step", ylabel="held-out response-only loss (nats/token)",
             title="Same held-out measure for both runs\n(their *training* losses average different tokens: "
                   "not comparable)")
    left.legend()
    metrics = [c for c in final.columns if c not in ("model", "response_ppl")]
    width = 0.8 / len(final)
    for i, row in enumerate(final.itertuples(index=False)):
        right.bar([j + i * width for j in range(len(metrics))], [getattr(row, m) for m in metrics], width,
                  label=row.model)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, rotation=20)
    right.set(title="Final held-out metrics (loss: lower is better; accuracy/reward: higher)")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


DATASET_METRICS = {"instructions": ["response_loss", "response_ppl", "sequence_loss", "exact_match", "rouge_l"],
                   "countdown": ["countdown_reward", "countdown_accuracy"]}


def write_dataset_results(final, path: Path) -> Path:
    """assets/Dataset_results.xlsx: one sheet per dataset, one row per model."""
    import pandas as pd
    path.parent.mkdir(parents=True, exist_ok=True)
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for sheet, metrics in DATASET_METRICS.items():
            final[["model"] + [m for m in metrics if m in final.columns]].to_excel(writer, sheet_name=sheet,
                                                                                  index=False)
    return path


def run_prompt_weight_sweep(cfg: Config, progress: bool = True):
    """Short SFT runs for every (prompt_loss_weight, seed) of the config; returns (per-run rows, mean ± std)."""
    import pandas as pd
    rows = []
    for weight in cfg.sft.sweep_weights:
        for seed in cfg.sft.sweep_seeds:
            stage = f"sweep/w{weight:g}_s{seed}"
            run = run_sft(cfg, stage, weight, seed=seed, max_steps=cfg.sft.sweep_steps, log=False, quiet=True)
            metrics = evaluate_model(run["model"], run["tokenizer"], cfg)
            rows.append({"prompt_loss_weight": weight, "seed": seed, **metrics})
            shutil.rmtree(run["dir"], ignore_errors=True)
            if progress:
                print(f"weight {weight:g} seed {seed}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    runs = pd.DataFrame(rows)
    metric_cols = [c for c in runs.columns if c not in ("prompt_loss_weight", "seed")]
    agg = runs.groupby("prompt_loss_weight")[metric_cols].agg(["mean", "std"])
    summary = pd.DataFrame({"prompt_loss_weight": agg.index})
    for col in metric_cols:
        summary[col] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(agg[(col, "mean")], agg[(col, "std")])]
    return runs, summary


def seed_noise_verdict(runs, metric: str, a: float, b: float) -> str:
    """Is the difference of mean `metric` between weights a and b larger than the seed noise (2 × pooled std)?"""
    x = runs[runs.prompt_loss_weight == a][metric]
    y = runs[runs.prompt_loss_weight == b][metric]
    diff, noise = float(y.mean() - x.mean()), 2 * float(((x.std() ** 2 + y.std() ** 2) / 2) ** 0.5)
    verdict = "exceeds" if abs(diff) > noise else "is within"
    return (f"{metric}: weight {b:g} − weight {a:g} = {diff:+.4f}, which {verdict} the seed noise "
            f"(2 × pooled std = {noise:.4f}, {len(x)} and {len(y)} seeds)")


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 13. Command line
# ════════════════════════════════════════════════════════════════════════════════════════════════
SFT_STAGES = {"sft_masked": 0.0, "sft_unmasked": 1.0}


def run_notebook(path, timeout: int = 1800) -> Path:
    """Execute a notebook headless (cwd = its folder); the executed copy goes to outputs/<profile>/notebooks/,
    so the committed notebook stays without outputs."""
    import nbformat
    from nbclient import NotebookClient
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    executed = out_path("outputs", get_config(), "notebooks", path.name)
    executed.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, executed)
    print(f"{path.name}: ran in {time.perf_counter() - started:.0f} s; executed copy: {executed}")
    return executed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="build/download the datasets and the initial model of a profile")
    p.add_argument("--profile", default=None)
    p = sub.add_parser("train", help="train one stage")
    p.add_argument("--stage", required=True, choices=sorted(SFT_STAGES))
    p.add_argument("--profile", default=None)
    p = sub.add_parser("run-notebook", help="execute a notebook headless")
    p.add_argument("path")
    args = parser.parse_args(argv)

    if args.command == "data":
        cfg = get_config(args.profile)
        for name, folder in prepare_data(cfg).items():
            print(f"{name}: {folder}")
        print(f"initial model: {build_initial_model(cfg)}")
    elif args.command == "train":
        cfg = get_config(args.profile)
        result = run_sft(cfg, args.stage, SFT_STAGES[args.stage])
        print(f"{args.stage}: saved to {result['dir']}; last evaluation {result['history'][-1]}")
    elif args.command == "run-notebook":
        run_notebook(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
