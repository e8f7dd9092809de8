"""Shared mechanics for the notebooks, in pipeline order.

    python helpers.py data  --profile tiny                      # 00_data as a script
    python helpers.py train --stage sft_masked --profile tiny   # any training stage as a script
    python helpers.py chat  --model checkpoints/tiny/sft_masked [PROMPT]

Sections: 1 config and profiles · 2 the Countdown task (prompt, solver, reward) · 3 the tiny world ·
4 real-dataset converters and manifests · 5 tokenizer and model helpers · 6 chat formatting and the loss mask ·
7 batching · 8 logging · 9 the training loop · 10 SFT · 11 generation and evaluation · 12 the SFT comparison ·
13 DPO and the reward model · 14 RLOO · 15 evaluation of every stage · 16 chat ·
17 domain vocabulary · 18 command line.

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
    countdown_numbers: int = 2        # tiny: 3 numbers were beyond a 1.8M-parameter model (README log)
    countdown_max_value: int = 30     # 2 numbers <= 30: 1364 distinct tasks (by sorted numbers and target)
    warmstart_rows: int = 1500        # solver-written completions for WarmStart SFT
    preference_train: int = 1500      # tiny: (chosen = correct, rejected = plausible wrong) pairs
    preference_train_extra: int = 4500  # tiny: more pairs, drawn after all else (so changing it changes no other
                                        # dataset); with 1,500 pairs the reward model stopped at 0.89 (README log)
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
    max_steps: int = 1000             # tiny: long enough to learn the world's facts, not the chat format
    lr: float = 1e-3                  # 3e-3 stalled copying (induction) for 400+ steps; 1e-3 learns it in ~100
    batch_size: int = 32


@dataclass
class SFTConfig(TrainConfig):
    max_steps: int = 600              # tiny: at 300 steps the model wrote the Countdown format but copied no numbers
    prompt_loss_weight: float = 0.0   # 0 = masked (response only), 1 = unmasked (whole sequence)
    countdown_share: float = 0.5      # fraction of the SFT mixture taken from WarmStart Countdown rows
    sweep_weights: tuple = (0.0, 0.01, 0.1, 1.0)  # the prompt-loss-weight sweep of the comparison
    sweep_seeds: tuple = (0, 1, 2)    # >= 3 seeds per weight, to tell a difference from seed noise
    sweep_steps: int = 60             # shorter runs for the sweep (the main runs use max_steps): CPU budget
    sweep_eval_rows: int = 100        # held-out rows per measure for each sweep run


@dataclass
class DPOConfig(TrainConfig):
    beta: float = 0.1                 # strength of the pull towards the reference (Rafailov et al. 2023)
    lr: float = 5e-4                  # DPO moves a trained model: a smaller step than SFT
    max_steps: int = 600              # tiny: held-out preference accuracy was 0.88 at 400 steps, 0.90 at 600
    warmup_steps: int = 10
    onpolicy_countdown_prompts: int = 256  # Countdown prompts sampled twice for on-policy pairs (0 = none)
    sample_temperature: float = 1.0   # sampling temperature for the on-policy pairs
    reference_from_disabled_adapters: bool = False  # LoRA only: reference = model with adapters off
    sft_weight: float = 1.0           # α of the RPO term (NLL of chosen); 0 = plain DPO. Plain DPO cost the tiny
                                      # model 10 points of exact match (README log)


@dataclass
class RewardConfig(TrainConfig):
    lr: float = 5e-4                  # Bradley–Terry reward model on top of the SFT model
    max_steps: int = 1200             # tiny: ~6 passes over 6,000 pairs; single-digit sums are learned late
                                      # (a 600-step run ends at 0.87 held-out accuracy, README log)
    batch_size: int = 32              # pairs per step
    warmup_steps: int = 10


@dataclass
class RLOOConfig(TrainConfig):
    k: int = 8                        # samples per prompt; the leave-one-out baseline needs k >= 2
    batch_size: int = 16              # prompts per micro-batch (× k samples); fewer left most groups all-wrong
    lr: float = 3e-4                  # tiny: 1e-3 collapsed Countdown accuracy to ~0 within 25 steps
    max_steps: int = 100              # tiny: ~3 min on 2 CPU cores
    warmup_steps: int = 5
    temperature: float = 0.6          # tiny: at 1.0 only 3% of samples were correct (greedy: 12%); too little signal
    max_new_tokens: int = 64          # room for a Countdown <think> … </think> <answer> … </answer>
    kl_coef: float = 0.05             # KL penalty to the reference, folded into the reward
    table_every: int = 10             # steps between TensorBoard text tables of sampled completions
    instruction_steps: int = 10       # the (short) instruction-following track with the reward model
    eval_every: int = 100             # greedy evaluations of 200 tasks cost ~8 s each on the CPU


@dataclass
class EvalConfig:
    batch_size: int = 64              # prompts per generate call
    max_new_tokens: int = 64          # enough for every tiny answer, including Countdown reasoning
    instruction_rows: int = 200       # held-out instruction tasks scored by exact match
    countdown_rows: int = 200         # held-out Countdown tasks scored by the rule-based reward
    loss_rows: int = 200              # held-out conversations for response-only / whole-sequence loss
    seed: int = 0                     # sampling seed of every sampled evaluation
    temperature: float = 0.6          # sampled evaluation settings, as the course evaluates
    top_p: float = 0.95
    top_k: int = 20
    n_samples: int = 8                # samples per prompt for pass@k and best-of-n (k, n up to 8)
    sampled_rows: int = 48            # prompts per task for the sampled measures (CPU budget in tiny)
    judge: str | None = None          # a sequence-classification reward model dir/id; None = our reward_model
    reference_model: str | None = None  # win-rate opponent, e.g. Qwen/Qwen2.5-0.5B-Instruct (qwen profile)
    final_rule: str = "mean_quality"  # `final` = the checkpoint with the highest value of this metric


@dataclass
class Config:
    profile: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    new_tokens: tuple = ("mediventricular", "neurogenix", "X-23S")  # domain words outside the vocabulary


def _tiny() -> Config:
    return Config(profile="tiny")


def _smoke() -> Config:
    """tiny, shrunk to seconds: for tests and a quick look at every notebook."""
    cfg = Config(profile="smoke")
    cfg.data = DataConfig(instruction_train=120, instruction_test=24, countdown_train=60, countdown_test=16,
                          warmstart_rows=60, preference_train=40, preference_train_extra=20, preference_test=16,
                          pretrain_rows=200)
    cfg.model = ModelConfig(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_position_embeddings=256)
    cfg.pretrain = PretrainConfig(max_steps=6, batch_size=8, eval_every=3, save_every=3, log_every=1)
    cfg.sft = SFTConfig(max_steps=6, batch_size=8, eval_every=3, save_every=3, log_every=1, warmup_steps=2,
                        sweep_weights=(0.0, 1.0), sweep_seeds=(0, 1), sweep_steps=3)
    cfg.dpo = DPOConfig(max_steps=4, batch_size=8, eval_every=2, save_every=2, log_every=1, warmup_steps=1,
                        onpolicy_countdown_prompts=8)
    cfg.reward = RewardConfig(max_steps=4, batch_size=8, eval_every=2, save_every=2, log_every=1, warmup_steps=1)
    cfg.rloo = RLOOConfig(max_steps=3, batch_size=4, k=2, eval_every=3, save_every=3, log_every=1, warmup_steps=1,
                          max_new_tokens=12, table_every=1, instruction_steps=2)
    cfg.eval = EvalConfig(batch_size=16, max_new_tokens=12, instruction_rows=12, countdown_rows=8, loss_rows=16,
                          n_samples=2, sampled_rows=4)
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
                          loss_rows=500, sampled_rows=200, reference_model="Qwen/Qwen2.5-0.5B-Instruct")
    cfg.dpo = DPOConfig(batch_size=8, grad_accum=4, lr=5e-6, max_steps=1000, max_length=1024, eval_every=200,
                        save_every=200, onpolicy_countdown_prompts=2000, reference_from_disabled_adapters=True)
    cfg.reward = RewardConfig(batch_size=8, grad_accum=4, lr=1e-5, max_steps=1000, max_length=1024,
                              eval_every=200, save_every=200)
    cfg.rloo = RLOOConfig(batch_size=8, k=4, lr=1e-6, temperature=1.0, max_steps=500, max_new_tokens=512,
                          eval_every=100, save_every=100, instruction_steps=200)
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
    end = completion.rfind("</answer>")          # rfind, not a regex: linear time on hostile text
    start = completion.rfind("<answer>", 0, end) if end != -1 else -1
    if start == -1:
        return 0.0
    expression = completion[start + len("<answer>"):end].strip()
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
                for op in "+-*/":
                    if op in "+*" and i > j:
                        continue      # commutative: one order is enough
                    if op == "/" and b == 0:
                        continue
                    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
                    wrap = lambda e, simple: e if simple else f"({e})"
                    expr = f"{wrap(ea, len(sa) == 0)} {op} {wrap(eb, len(sb) == 0)}"
                    step = f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(value)}"
                    # the result takes the place of its first operand: answers keep the prompt's order,
                    # which a small model copies far more easily than a shuffled one
                    merged = (value, expr, sa + sb + [step])
                    found = search([merged if k == i else items[k] for k in range(len(items)) if k != j])
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
    return f"<think> {countdown_reasoning(nums, target, steps)} </think>\n<answer> {expression} </answer>"


def countdown_reasoning(nums, target, steps) -> str:
    """"Numbers [17, 2] make 34: 17 * 2 = 34" — one phrasing for the tiny world's pre-training text and the WarmStart
    <think>, so SFT builds on what the base model already does in it instead of learning to copy numbers afresh."""
    return f"Numbers {list(nums)} make {target}: {', '.join(steps)}"


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
        pretrain.append({"text": countdown_reasoning(t["nums"], t["target"], steps) + ".\n"})
    rng.shuffle(pretrain)

    # more preference pairs, drawn last: test prompts still excluded
    while len(preferences["train"]) < cfg.preference_train + cfg.preference_train_extra:
        task = make_instruction_task(rng.choice(FAMILIES), rng)
        if task["prompt"] not in seen:
            preferences["train"].append(pair(task))
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
        extra = r.get("input") if isinstance(r.get("input"), str) else ""
        user = r["instruction"].strip() + (("\n\n" + extra.strip()) if extra.strip() else "")
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
        digest.update(f"{split}\0{len(splits[split])}\0".encode())   # a row moving between splits changes it
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
        if problem is None and next(m["role"] for m in row["messages"] if m["role"] != "system") != "user":
            problem = "conversation does not start with a user message"
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
    def __init__(self, log_dir, fresh: bool = True):
        """fresh=True removes earlier event files of this run, so a re-run does not draw two curves."""
        from torch.utils.tensorboard import SummaryWriter
        if fresh:
            shutil.rmtree(log_dir, ignore_errors=True)
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
    rng = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng},
               tmp / "training_state.pt")
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
        if "cuda_rng" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
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
            scalars = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                       "train/trained_units": total_units, **dict(metric_sums)}
            if "labels" in micro_batches[0]:
                scalars["train/trained_tokens"] = sum(float((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
            if "attention_mask" in micro_batches[0]:
                real = sum(float(b["attention_mask"].sum()) for b in micro_batches)
                cells = sum(b["attention_mask"].numel() for b in micro_batches)
                scalars.update({"train/tokens_per_second": real / seconds, "train/padding_fraction": 1 - real / cells})
            logger.scalars(scalars, state["step"])
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
            seed: int | None = None, max_steps: int | None = None, log: bool = True, quiet: bool = False,
            dataset: tuple | None = None) -> dict:
    """Train one SFT run from checkpoints/<profile>/initial; returns {"history", "dir", "dropped"}.

    The masked and unmasked runs call this with identical settings except prompt_loss_weight. `dataset` =
    `build_sft_dataset`'s (examples, skips) for this weight, when the caller has it already (the sweep's seeds).
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
    examples, skips = dataset or build_sft_dataset(tokenizer, sft_mixture(cfg), train_cfg.max_length, weight)
    if not quiet:
        print(skips.report())
    held = heldout_loss_examples(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    eval_fn = lambda m: {"eval/response_loss": evaluate_loss(m, held["response"], pad),
                         "eval/sequence_loss": evaluate_loss(m, held["sequence"], pad)}
    stage_dir = out_path("checkpoints", cfg, stage)
    run_config = {"stage": stage, "profile": cfg.profile, "sft": dataclasses.asdict(train_cfg),
                  "model": dataclasses.asdict(cfg.model), "data": dataclasses.asdict(cfg.data),
                  "train_examples": len(examples), "dropped": dict(skips.reasons)}
    resuming = _resumable_state(stage_dir, run_config) is not None
    logger = TensorBoardLogger(out_path("tensorboard_events", cfg, stage), fresh=not resuming) if log else NullLogger()
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


def grouped_bars(ax, table, metrics, labels: bool = True) -> None:
    """One group of bars per metric, one bar per row (model) of `table`."""
    width = 0.8 / len(table)
    for i, row in enumerate(table.itertuples(index=False)):
        bars = ax.bar([j + i * width for j in range(len(metrics))], [table.iloc[i][m] for m in metrics], width,
                      label=row.model)
        if labels:
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, rotation=15)
    ax.legend(fontsize=8)


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sft_comparison(histories: dict[str, list[dict]], final, path: Path) -> Path:
    """Left: held-out response-only loss of each run against steps. Then the final losses and scores side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (curve, losses, scores) = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for name, history in histories.items():
        curve.plot([h["step"] for h in history], [h["eval/response_loss"] for h in history], marker="o", label=name)
    curve.set(xlabel="optimizer step", ylabel="held-out response-only loss (nats/token)",
              title="Same held-out measure for both runs\n(their *training* losses average different tokens: "
                    "not comparable)")
    curve.legend()
    groups = [(losses, ["response_loss", "sequence_loss"], "held-out losses (lower is better)"),
              (scores, [c for c in ("exact_match", "rouge_l", "countdown_reward", "countdown_accuracy")
                        if c in final.columns], "held-out scores (higher is better)")]
    for ax, metrics, title in groups:
        grouped_bars(ax, final, metrics)
        ax.set(title=title)
    return save_figure(fig, path)


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
    rows, tokenizer = [], load_tokenizer(out_path("checkpoints", cfg, "initial"))
    for weight in cfg.sft.sweep_weights:
        dataset = build_sft_dataset(tokenizer, sft_mixture(cfg), cfg.sft.max_length, weight)   # once for all seeds
        for seed in cfg.sft.sweep_seeds:
            stage = f"sweep/w{weight:g}_s{seed}"
            run = run_sft(cfg, stage, weight, seed=seed, max_steps=cfg.sft.sweep_steps, log=False, quiet=True,
                          dataset=dataset)
            n = cfg.sft.sweep_eval_rows
            small = replace_config_cfg(cfg, eval=replace_config(cfg.eval, instruction_rows=n, countdown_rows=n,
                                                                loss_rows=n))
            metrics = evaluate_model(run["model"], run["tokenizer"], small)
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
# 13. Preference learning: DPO and a Bradley–Terry reward model
# ════════════════════════════════════════════════════════════════════════════════════════════════
def sequence_logps(model, batch) -> torch.Tensor:
    """log π(y|x) per row: log-probs of the trained (response) tokens summed — the same mask as SFT."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    # gather − logsumexp: no second vocabulary-sized copy (log_softmax would make one; 151,936 columns on Qwen)
    token_logps = torch.gather(logits, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * (labels != -100)).sum(-1)


# The prompt once: chosen and rejected (DPO, reward model) or the k samples of RLOO share their prompt, so it is
# run once and its KV cache repeated — the same numbers as the concatenated sequences, for far fewer positions.
def can_share_prompt(model) -> bool:
    """Gradient checkpointing turns the KV cache off; such a model scores the full sequences instead."""
    return not getattr(model, "is_activation_checkpointing", False)


def shared_prompt_forward(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Each prompt run once, its KV cache repeated for its k = len(responses) / len(prompts) responses, which run
    on top. Returns (prompt outputs, response outputs, response ids, response mask).

    Prompts are left-padded (RoPE scores depend only on distances, so the shift changes nothing), responses
    right-padded. Works for a causal LM (logits at every position) and for a sequence-classification model,
    whose head then reads the last response token.
    """
    k, dev = len(responses) // len(prompts), next(model.parameters()).device
    width, length = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=dev)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    cache = prompt_out.past_key_values
    cache.batch_repeat_interleave(k)
    response_ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in responses], device=dev)
    response_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in responses], device=dev)
    response_out = model(input_ids=response_ids, past_key_values=cache,
                         attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1))
    return prompt_out, response_out, response_ids, response_mask


def shared_prompt_logps(model, samples: list[dict], k: int, pad_id: int) -> torch.Tensor:
    """log π(y|x) of every sample ({"prompt_ids", "response_ids"}, optional 0/1 "trained" per response token),
    the prompt run once per group of k — the same numbers as `sequence_logps` on the concatenated sequences.

    A tiny Countdown prompt is ~125 tokens and its answer ~27, so k = 8 samples cost 341 instead of 1,216 positions.
    """
    prompt_out, out, response_ids, response_mask = shared_prompt_forward(
        model, [s["prompt_ids"] for s in samples[::k]], [s["response_ids"] for s in samples], pad_id)
    # the prompt's last position predicts the first response token; response position t predicts t + 1
    logits = torch.cat([prompt_out.logits[:, -1:].repeat_interleave(k, 0), out.logits[:, :-1]], 1).float()
    token_logps = torch.gather(logits, 2, response_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    trained = torch.tensor([s.get("trained", [1] * len(s["response_ids"])) + [0] * (response_ids.shape[1] - len(
        s["response_ids"])) for s in samples], device=response_mask.device) * response_mask
    return (token_logps * trained).sum(-1)


def pair_samples(pairs: list[dict]) -> list[dict]:
    """Each tokenized pair as two samples (chosen, rejected) sharing one prompt: the tokens before the first trained
    one and before the two differ, so no trained token is left out of the response."""
    samples = []
    for pair in pairs:
        c, r = pair["chosen"], pair["rejected"]
        first_trained = next(i for i, label in enumerate(c["labels"]) if label != -100)
        common = next((i for i, (a, b) in enumerate(zip(c["input_ids"], r["input_ids"])) if a != b),
                      min(len(c["input_ids"]), len(r["input_ids"])))
        split = max(1, min(first_trained, common, len(c["input_ids"]) - 1, len(r["input_ids"]) - 1))
        samples += [{"prompt_ids": e["input_ids"][:split], "response_ids": e["input_ids"][split:],
                     "trained": [int(label != -100) for label in e["labels"][split:]]} for e in (c, r)]
    return samples


def pair_sequence_logps(model, batch) -> torch.Tensor:
    """`sequence_logps` of a pair batch (chosen rows, then rejected rows), each pair's prompt run once."""
    if not can_share_prompt(model):
        return sequence_logps(model, batch)
    logps = shared_prompt_logps(model, pair_samples(batch["pairs"]), 2, batch["pad_token_id"])
    return torch.cat([logps[0::2], logps[1::2]])


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """Rafailov et al. 2023, sigmoid loss:
        L = −log σ( β[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))] )
    Returns (mean loss, chosen_rewards, rejected_rewards) with rewards = β · (log π − log π_ref).
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def build_pair_dataset(tokenizer, pairs, max_length: int, name: str = "pairs") -> tuple[list[dict], SkipCounter]:
    """Tokenize preference pairs (prompt messages, chosen text, rejected text) with the SFT mask.

    Dropped and counted: chosen identical to rejected, an empty prompt or response, or a response truncated away.
    """
    skips, out = SkipCounter(name), []
    for i, pair in enumerate(pairs):
        prompt, chosen, rejected = pair.get("prompt"), pair.get("chosen"), pair.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen.strip() or not rejected.strip():
            skips.skip(i, "empty or missing response")
            continue
        if chosen.strip() == rejected.strip():
            skips.skip(i, "chosen identical to rejected")
            continue
        if conversation_problem((prompt or []) + [{"role": "assistant", "content": chosen}]) or \
                not any(m["content"].strip() for m in prompt):
            skips.skip(i, "empty or malformed prompt")
            continue
        c = build_sft_example(tokenizer, prompt + [{"role": "assistant", "content": chosen}], max_length)
        r = build_sft_example(tokenizer, prompt + [{"role": "assistant", "content": rejected}], max_length)
        if c is None or r is None:
            skips.skip(i, f"response truncated away at {max_length} tokens")
            continue
        out.append({"chosen": c, "rejected": r, "input_ids": c["input_ids"] + r["input_ids"],  # length for grouping
                    "source": pair.get("source")})
    return out, skips


def pair_collate(pad_token_id: int):
    """Chosen rows then rejected rows in one padded batch; the loss unit is the pair."""
    def collate_fn(pairs):
        batch = collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_token_id)
        if "ref_chosen_logps" in pairs[0]:
            batch["ref_chosen_logps"] = torch.tensor([p["ref_chosen_logps"] for p in pairs])
            batch["ref_rejected_logps"] = torch.tensor([p["ref_rejected_logps"] for p in pairs])
        batch["normalizer"] = torch.tensor(float(len(pairs)))
        batch["pairs"], batch["pad_token_id"] = pairs, pad_token_id     # for the shared-prompt path
        return batch
    return collate_fn


@torch.no_grad()
def pair_logps(model, pairs: list[dict], pad_token_id: int, batch_size: int = 32) -> tuple[list, list]:
    """(log π(y_w|x), log π(y_l|x)) for every pair."""
    was_training = model.training
    model.eval()
    collate_fn, dev, chosen, rejected = pair_collate(pad_token_id), next(model.parameters()).device, [], []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in collate_fn(pairs[i:i + batch_size]).items()}
        with autocast_context():
            logps = pair_sequence_logps(model, batch).float().cpu()
        n = len(pairs[i:i + batch_size])
        chosen += logps[:n].tolist()
        rejected += logps[n:].tolist()
    model.train(was_training)
    return chosen, rejected


def add_reference_logps(model, pairs: list[dict], pad_token_id: int, disable_adapters: bool = False) -> None:
    """Precompute the reference model's log-probs once, so DPO training holds a single model in memory.

    The reference is the model as it is now (the SFT checkpoint); with LoRA it can instead be the same model with
    its adapters disabled — the two give the same numbers while the adapters are untrained.
    """
    import contextlib
    context = model.disable_adapter() if disable_adapters else contextlib.nullcontext()
    with context:
        chosen, rejected = pair_logps(model, pairs, pad_token_id)
    for pair, c, r in zip(pairs, chosen, rejected):
        pair["ref_chosen_logps"], pair["ref_rejected_logps"] = c, r


def make_dpo_loss(beta: float, sft_weight: float = 0.0):
    """DPO as a loss for the one loop. sft_weight > 0 adds α · (per-token NLL of the chosen response) — the RPO
    variant (Pang et al. 2024), which stops DPO from pushing the chosen answer's likelihood down with the rest."""
    def loss_fn(model, batch):
        n = batch["ref_chosen_logps"].shape[0]
        logps = pair_sequence_logps(model, batch)
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:n], logps[n:], batch["ref_chosen_logps"],
                                                          batch["ref_rejected_logps"], beta)
        if sft_weight > 0:
            chosen_tokens = (batch["labels"][:n, 1:] != -100).sum(-1).clamp(min=1)
            loss = loss + sft_weight * (-logps[:n] / chosen_tokens).mean()
        margins = chosen_rewards - rejected_rewards
        return loss * n, {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                          "rewards/margins": margins.mean(), "rewards/accuracies": (margins > 0).float().mean(),
                          "logps/chosen": logps[:n].detach().mean(), "logps/rejected": logps[n:].detach().mean()}
    return loss_fn


def preference_accuracy(model, pairs: list[dict], pad_token_id: int) -> dict:
    """Held-out ranking of chosen over rejected: by the policy's own log-probs, and by the implicit DPO reward
    β(log π − log π_ref) when reference log-probs are attached (0 margin = tie = not ranked above)."""
    chosen, rejected = pair_logps(model, pairs, pad_token_id)
    result = {"logp_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)}
    if pairs and "ref_chosen_logps" in pairs[0]:
        wins = [(c - p["ref_chosen_logps"]) > (r - p["ref_rejected_logps"]) for c, r, p in zip(chosen, rejected, pairs)]
        result["reward_accuracy"] = sum(wins) / len(pairs)
    return result


def countdown_onpolicy_pairs(model, tokenizer, tasks: list[dict], cfg: Config, seed: int) -> tuple[list, dict]:
    """The course project's on-policy pairs: 2 samples per Countdown prompt from the SFT model (temperature > 0),
    labelled by the rule-based reward; ties dropped (and counted)."""
    prompts = [countdown_prompt(t["nums"], t["target"]) for t in tasks]
    samples = generate_responses(model, tokenizer, prompts * 2, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                                 temperature=cfg.dpo.sample_temperature, top_p=1.0, seed=seed, progress=False)
    pairs, ties = [], 0
    for i, (task, prompt) in enumerate(zip(tasks, prompts)):
        a, b = samples[i], samples[i + len(tasks)]
        ra, rb = countdown_reward(a, task["target"], task["nums"]), countdown_reward(b, task["target"], task["nums"])
        if ra == rb:
            ties += 1
            continue
        chosen, rejected = (a, b) if ra > rb else (b, a)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "countdown/on-policy",
                      "reward_chosen": max(ra, rb), "reward_rejected": min(ra, rb)})
    return pairs, {"prompts": len(tasks), "pairs": len(pairs), "ties_dropped": ties}


def preference_data(cfg: Config, split: str) -> list[dict]:
    return load_split(cfg, "ultrafeedback" if cfg.profile == "qwen" else "preferences", split)


def run_dpo(cfg: Config, stage: str = "dpo", reference: str = "sft_masked", log: bool = True) -> dict:
    """DPO from the SFT checkpoint with a precomputed reference; returns {"history", "dir", "model", …}."""
    dcfg = cfg.dpo
    seed_everything(dcfg.seed)
    start = out_path("checkpoints", cfg, reference)
    tokenizer = load_tokenizer(start)
    model = load_model(start).to(device())
    fresh_adapters = False
    if cfg.model.lora is not None and not hasattr(model, "disable_adapter"):
        from peft import get_peft_model
        model, fresh_adapters = get_peft_model(model, as_lora_config(cfg.model.lora)), True
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    pad = tokenizer.pad_token_id
    rows = preference_data(cfg, "train")
    onpolicy_stats = {}
    if dcfg.onpolicy_countdown_prompts:
        tasks = load_split(cfg, "countdown", "train")[:dcfg.onpolicy_countdown_prompts]
        onpolicy, onpolicy_stats = countdown_onpolicy_pairs(model, tokenizer, tasks, cfg, dcfg.seed)
        write_jsonl(out_path("data", cfg, "countdown_onpolicy_pairs", "train.jsonl"), onpolicy)
        rows = rows + onpolicy
    train_pairs, skips = build_pair_dataset(tokenizer, rows, dcfg.max_length, "dpo train")
    test_pairs, test_skips = build_pair_dataset(tokenizer, preference_data(cfg, "test"), dcfg.max_length, "dpo test")
    print(skips.report(), "|", test_skips.report(), "| on-policy Countdown:", onpolicy_stats)
    # adapters off = the reference only for adapters created here; a LoRA SFT checkpoint's trained adapters
    # ARE the SFT model, so then the model as loaded is the reference
    use_adapters = dcfg.reference_from_disabled_adapters and fresh_adapters
    add_reference_logps(model, train_pairs, pad, disable_adapters=use_adapters)
    add_reference_logps(model, test_pairs, pad, disable_adapters=use_adapters)
    before = preference_accuracy(model, test_pairs, pad)
    stage_dir = out_path("checkpoints", cfg, stage)
    run_config = {"stage": stage, "profile": cfg.profile, "reference": reference, "dpo": dataclasses.asdict(dcfg),
                  "train_pairs": len(train_pairs), "dropped": dict(skips.reasons), "onpolicy": onpolicy_stats}
    resuming = _resumable_state(stage_dir, run_config) is not None
    logger = TensorBoardLogger(out_path("tensorboard_events", cfg, stage), fresh=not resuming) if log else NullLogger()
    eval_fn = lambda m: {f"eval/preference_{k}": v for k, v in preference_accuracy(m, test_pairs, pad).items()}
    history = train(model, tokenizer, train_pairs, dcfg, make_dpo_loss(dcfg.beta, dcfg.sft_weight), pair_collate(pad),
                    stage_dir,
                    eval_fn=eval_fn, logger=logger, run_config=run_config, desc=stage)
    logger.close()
    return {"history": history, "dir": stage_dir, "model": model, "tokenizer": tokenizer, "before": before,
            "after": preference_accuracy(model, test_pairs, pad), "onpolicy": onpolicy_stats,
            "dropped": skips.total}


# The reward model: a scalar head on the SFT model, trained on pairs with max E log σ(r(x, y_w) − r(x, y_l)).
def reward_scores(model, batch) -> torch.Tensor:
    """r(x, y) per row: the sequence-classification head read at the last non-padding token."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


def pair_reward_scores(model, batch) -> torch.Tensor:
    """`reward_scores` of a pair batch (chosen rows, then rejected rows), each pair's prompt run once."""
    if not can_share_prompt(model):
        return reward_scores(model, batch)
    samples = pair_samples(batch["pairs"])
    _, out, _, _ = shared_prompt_forward(model, [s["prompt_ids"] for s in samples[::2]],
                                         [s["response_ids"] for s in samples], batch["pad_token_id"])
    scores = out.logits[:, 0].float()
    return torch.cat([scores[0::2], scores[1::2]])


def bradley_terry_loss(model, batch):
    """−log σ(r(x, y_w) − r(x, y_l)), summed over the batch's pairs."""
    n = int(batch["normalizer"])
    scores = pair_reward_scores(model, batch)
    margins = scores[:n] - scores[n:]
    return -F.logsigmoid(margins).sum(), {"reward_model/accuracy": (margins > 0).float().mean(),
                                          "reward_model/margin": margins.detach().mean()}


@torch.no_grad()
def reward_model_wins(model, pairs: list[dict], pad_token_id: int, batch_size: int = 32) -> list[bool]:
    """For every pair: is r(x, y_w) > r(x, y_l)? (a tie counts as wrong)"""
    was_training = model.training
    model.eval()
    collate_fn, dev, wins = pair_collate(pad_token_id), next(model.parameters()).device, []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in collate_fn(pairs[i:i + batch_size]).items()}
        scores = pair_reward_scores(model, batch)
        n = int(batch["normalizer"])
        wins += (scores[:n] > scores[n:]).tolist()
    model.train(was_training)
    return wins


def reward_model_accuracy(model, pairs: list[dict], pad_token_id: int, batch_size: int = 32) -> float:
    """Held-out pairwise accuracy: the fraction of pairs whose chosen response scores higher."""
    return sum(reward_model_wins(model, pairs, pad_token_id, batch_size)) / max(1, len(pairs))


def load_reward_model(path):
    """A sequence-classification model (scalar head) from a full model dir; a LoRA SFT dir is merged first."""
    from transformers import AutoModelForSequenceClassification
    path = Path(str(path))
    if (path / "adapter_config.json").exists():      # e.g. qwen's LoRA SFT checkpoint: merge once, next to it
        merged = path.with_name(path.name + "_merged")
        if not (merged / "config.json").exists():
            save_model(load_model(path), merged, load_tokenizer(path), merge=True)
        path = merged
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id      # the head reads the last non-padding token
    return tokenizer, model


@torch.no_grad()
def score_responses(reward_model, tokenizer, prompts, responses, batch_size: int = 32) -> list[float]:
    """Reward-model scores of (prompt, response) pairs — for RLOO's instruction track and best-of-n."""
    reward_model.eval()
    dev, scores = next(reward_model.parameters()).device, []
    for i in range(0, len(prompts), batch_size):
        texts = [render_chat(tokenizer, p + [{"role": "assistant", "content": r}])
                 for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        scores += reward_scores(reward_model, enc).tolist()
    return scores


def run_reward_model(cfg: Config, start: str = "sft_masked", stage: str = "reward_model", log: bool = True) -> dict:
    rcfg = cfg.reward
    seed_everything(rcfg.seed)
    tokenizer, model = load_reward_model(out_path("checkpoints", cfg, start))
    model.to(device())
    pad = tokenizer.pad_token_id
    train_pairs, skips = build_pair_dataset(tokenizer, preference_data(cfg, "train"), rcfg.max_length, "rm train")
    test_pairs, _ = build_pair_dataset(tokenizer, preference_data(cfg, "test"), rcfg.max_length, "rm test")
    stage_dir = out_path("checkpoints", cfg, stage)
    run_config = {"stage": stage, "profile": cfg.profile, "start": start, "reward": dataclasses.asdict(rcfg),
                  "train_pairs": len(train_pairs), "dropped": dict(skips.reasons)}
    resuming = _resumable_state(stage_dir, run_config) is not None
    logger = TensorBoardLogger(out_path("tensorboard_events", cfg, stage), fresh=not resuming) if log else NullLogger()
    history = train(model, tokenizer, train_pairs, rcfg, bradley_terry_loss, pair_collate(pad), stage_dir,
                    eval_fn=lambda m: {"eval/pairwise_accuracy": reward_model_accuracy(m, test_pairs, pad)},
                    logger=logger, run_config=run_config, desc=stage)
    logger.close()
    wins, by_source = reward_model_wins(model, test_pairs, pad), {}
    for pair, win in zip(test_pairs, wins):
        by_source.setdefault(pair["source"], []).append(win)
    return {"history": history, "dir": stage_dir, "model": model, "tokenizer": tokenizer,
            "accuracy": sum(wins) / max(1, len(wins)),
            "accuracy_by_source": {source: sum(w) / len(w) for source, w in sorted(by_source.items(), key=str)}}


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 14. RLOO: k samples per prompt, leave-one-out baseline, rule-based or reward-model reward
# ════════════════════════════════════════════════════════════════════════════════════════════════
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Ahmadian et al. 2024: A_i = r_i − mean_{j≠i} r_j for every prompt's k samples; rewards is [prompts, k]."""
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def countdown_reward_fn(prompts, completions, tasks) -> list[float]:
    """The shared reward signature: (prompts, completions, task rows) -> one float per completion."""
    return [countdown_reward(c, t["target"], t["nums"]) for c, t in zip(completions, tasks)]


def reward_model_fn(reward_model, tokenizer):
    """The reward model behind the same signature as the rule-based reward."""
    def fn(prompts, completions, tasks):
        return score_responses(reward_model, tokenizer, prompts, completions)
    return fn


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, k: int, max_new_tokens: int, temperature: float):
    """k samples per prompt in one batched generate call (left padding, KV cache, stop at <|im_end|>/<|endoftext|>).

    Returns the sampled token ids themselves (not re-tokenized text), so the policy-gradient step scores exactly
    what was sampled: a list of {"prompt_ids", "response_ids", "text"} of length len(prompts) * k, prompt-major.
    """
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        texts = [render_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            next(model.parameters()).device)
        stops = stop_token_ids(tokenizer)
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, num_return_sequences=k, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    width = enc["input_ids"].shape[1]
    samples = []
    for row in range(out.shape[0]):
        prompt_row = enc["input_ids"][row // k][enc["attention_mask"][row // k].bool()].tolist()
        response = out[row, width:].tolist()
        cut = next((i + 1 for i, t in enumerate(response) if t in stops), len(response))  # keep the stop token
        samples.append({"prompt_ids": prompt_row, "response_ids": response[:cut],
                        "text": tokenizer.decode(response[:cut], skip_special_tokens=True).strip()})
    return samples


def sample_rows(samples: list[dict]) -> list[dict]:
    """Sampled completions as prompt + response rows with the response-only mask, for `collate`."""
    return [{"input_ids": s["prompt_ids"] + s["response_ids"],
             "attention_mask": [1] * (len(s["prompt_ids"]) + len(s["response_ids"])),
             "labels": [-100] * len(s["prompt_ids"]) + s["response_ids"]} for s in samples]


def make_rloo_loss(cfg: Config, tokenizer, reward_fn, reference=None, logger=None):
    """The RLOO step as a loss for the one training loop: sample, reward, leave-one-out advantage,
    loss = −mean_i A_i · log π(y_i|x) (response tokens only). Optional KL penalty folded into the reward."""
    rcfg, logger = cfg.rloo, logger or NullLogger()
    table_rng = random.Random(rcfg.seed + 1)     # its own RNG: logging never changes the samples
    calls = {"n": 0}
    pad = tokenizer.pad_token_id

    def loss_fn(model, batch):
        tasks = batch["tasks"]
        prompts = [t["prompt"] for t in tasks]
        samples = sample_completions(model, tokenizer, prompts, rcfg.k, rcfg.max_new_tokens, rcfg.temperature)
        rep_tasks = [t for t in tasks for _ in range(rcfg.k)]
        rewards = torch.tensor(reward_fn([t["prompt"] for t in rep_tasks], [s["text"] for s in samples], rep_tasks),
                               dtype=torch.float32)
        if not can_share_prompt(model):
            dev = next(model.parameters()).device
            seqs = {key: v.to(dev) for key, v in collate(sample_rows(samples), pad).items()}
            logps_of = lambda m: sequence_logps(m, seqs)
        else:
            logps_of = lambda m: shared_prompt_logps(m, samples, rcfg.k, pad)
        logps = logps_of(model)
        shaped, kl = rewards.clone(), torch.zeros_like(rewards)
        if reference is not None and rcfg.kl_coef > 0:
            with torch.no_grad():
                kl = (logps.detach() - logps_of(reference)).float().cpu()
            shaped = rewards - rcfg.kl_coef * kl
        advantages = rloo_advantages(shaped.view(len(tasks), rcfg.k)).flatten().to(logps.device)
        loss_sum = -(advantages * logps).sum()
        grouped = rewards.view(len(tasks), rcfg.k)
        calls["n"] += 1
        if calls["n"] % rcfg.table_every == 1 or rcfg.table_every == 1:
            picks = table_rng.sample(range(len(samples)), min(4, len(samples)))
            rows = "\n".join(f"| {json.dumps(rep_tasks[i]['prompt'][-1]['content'][:80])} | "
                             f"{json.dumps(samples[i]['text'][:120])} | {rewards[i]:.2f} |" for i in picks)
            logger.text("rloo/samples", "| prompt | completion | reward |\n|---|---|---|\n" + rows, calls["n"])
        return loss_sum, {"rloo/reward_mean": rewards.mean(), "rloo/reward_std": rewards.std(),
                          "rloo/fraction_correct": (rewards == 1.0).float().mean(),
                          "rloo/fraction_format_only": ((rewards > 0) & (rewards < 1)).float().mean(),
                          "rloo/kl": kl.mean(),
                          "rloo/response_length": sum(len(s["response_ids"]) for s in samples) / len(samples),
                          "rloo/zero_variance_groups": (grouped.std(dim=1) == 0).float().mean()}
    return loss_fn


def rloo_collate(k: int):
    def collate_fn(items):
        return {"tasks": items, "normalizer": torch.tensor(float(len(items) * k))}
    return collate_fn


def countdown_accuracy(model, tokenizer, cfg: Config, rows: int | None = None) -> dict:
    """Greedy Countdown accuracy and mean reward on the fixed held-out test set."""
    _, _, rewards = greedy_countdown(model, tokenizer, cfg, rows)
    return {"countdown_accuracy": sum(r == 1.0 for r in rewards) / len(rewards),
            "countdown_reward": sum(rewards) / len(rewards)}


def run_rloo(cfg: Config, track: str = "countdown", start: str = "sft_masked", stage: str | None = None,
             log: bool = True) -> dict:
    """RLOO from an SFT checkpoint. track="countdown": rule-based reward on Countdown prompts;
    track="instructions": the reward model on instruction prompts."""
    rcfg = cfg.rloo if track == "countdown" else replace_config(cfg.rloo, max_steps=cfg.rloo.instruction_steps)
    stage = stage or ("rloo" if track == "countdown" else "rloo_instructions")
    seed_everything(rcfg.seed)
    start_dir = out_path("checkpoints", cfg, start)
    tokenizer, model = load_tokenizer(start_dir), load_model(start_dir).to(device())
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    reference = None
    if rcfg.kl_coef > 0:
        reference = load_model(start_dir).to(device()).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if track == "countdown":
        tasks = [dict(t, prompt=countdown_prompt(t["nums"], t["target"])) for t in load_split(cfg, "countdown", "train")]
        reward_fn = countdown_reward_fn
        eval_fn = lambda m: {f"eval/{k}": v for k, v in countdown_accuracy(m, tokenizer, cfg).items()}
    else:
        rm_tok, rm = load_reward_model(out_path("checkpoints", cfg, "reward_model"))
        reward_fn = reward_model_fn(rm.to(device()), rm_tok)
        name = "smoltalk" if cfg.profile == "qwen" else "instructions"
        tasks = [{"prompt": r["messages"][:-1]} for r in load_split(cfg, name, "train")]
        held = [r["messages"][:-1] for r in load_split(cfg, name, "test")[:64]]
        eval_fn = lambda m: {"eval/reward_model_score": sum(reward_fn(held, generate_responses(
            m, tokenizer, held, cfg.eval.batch_size, cfg.eval.max_new_tokens, progress=False), None)) / len(held)}
    for t in tasks:   # lengths for batching
        t["input_ids"] = [0] * len(render_chat(tokenizer, t["prompt"]))
    stage_dir = out_path("checkpoints", cfg, stage)
    run_config = {"stage": stage, "profile": cfg.profile, "track": track, "start": start,
                  "rloo": dataclasses.asdict(rcfg)}
    resuming = _resumable_state(stage_dir, run_config) is not None
    logger = TensorBoardLogger(out_path("tensorboard_events", cfg, stage), fresh=not resuming) if log else NullLogger()
    loss_fn = make_rloo_loss(replace_config_cfg(cfg, rloo=rcfg), tokenizer, reward_fn, reference, logger)
    history = train(model, tokenizer, tasks, rcfg, loss_fn, rloo_collate(rcfg.k), stage_dir, eval_fn=eval_fn,
                    logger=logger, run_config=run_config, desc=stage)
    logger.close()
    return {"history": history, "dir": stage_dir, "model": model, "tokenizer": tokenizer}


def replace_config_cfg(cfg: Config, **sections) -> Config:
    """A copy of cfg with whole sections replaced."""
    new = copy.copy(cfg)
    for name, value in sections.items():
        setattr(new, name, value)
    return new


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 15. Evaluation of every stage: sampled Countdown, pass@k, best-of-n, win rate, summaries, figures, report
# ════════════════════════════════════════════════════════════════════════════════════════════════
STAGES = ("initial", "sft_masked", "sft_unmasked", "dpo", "rloo")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k) / C(n, k) for c correct among n samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def best_of_n(scores: list[list[float]], correct: list[list[float]], n: int) -> float:
    """Accuracy when, per prompt, the sample with the highest score among the first n is kept (first on ties)."""
    picks = [row_correct[max(range(n), key=lambda i: row_scores[i])] for row_scores, row_correct in zip(scores, correct)]
    return sum(picks) / len(picks)


def sample_many(model, tokenizer, prompts, n: int, cfg: Config, seed: int) -> list[list[str]]:
    """n sampled responses per prompt with the course's evaluation sampling settings."""
    e = cfg.eval
    flat = generate_responses(model, tokenizer, [p for p in prompts for _ in range(n)], e.batch_size,
                              e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, top_k=e.top_k,
                              seed=seed, progress=False)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


def evaluate_stage(model, tokenizer, cfg: Config, name: str, reward_model=None, reference_model=None,
                   cache: dict | None = None) -> dict:
    """Every held-out measure of one checkpoint; responses go to outputs/<profile>/<name>/responses.jsonl.
    `cache` keeps what is the same for every checkpoint (the win-rate opponent's scored answers)."""
    cache = {} if cache is None else cache
    e, seed, records = cfg.eval, cfg.eval.seed, []
    metrics = evaluate_model(model, tokenizer, cfg, records=records)       # losses, greedy quality, greedy Countdown
    settings = {"temperature": e.temperature, "top_p": e.top_p, "top_k": e.top_k, "seed": seed}
    # Countdown, sampled: mean reward, accuracy, pass@k and verifier best-of-n
    tasks = load_split(cfg, "countdown", "test")[:e.sampled_rows]
    samples = sample_many(model, tokenizer, [countdown_prompt(t["nums"], t["target"]) for t in tasks], e.n_samples,
                          cfg, seed)
    rewards = [[countdown_reward(s, t["target"], t["nums"]) for s in row] for row, t in zip(samples, tasks)]
    correct = [[float(r == 1.0) for r in row] for row in rewards]
    metrics["countdown_reward_sampled"] = sum(map(sum, rewards)) / (len(tasks) * e.n_samples)
    metrics["countdown_accuracy_sampled"] = sum(map(sum, correct)) / (len(tasks) * e.n_samples)
    for k in (1, 2, 4, 8):
        if k <= e.n_samples:
            metrics[f"pass@{k}"] = sum(pass_at_k(e.n_samples, int(sum(c)), k) for c in correct) / len(tasks)
            metrics[f"best_of_{k}_verifier"] = best_of_n(rewards, correct, k)
    for t, row, row_r in zip(tasks, samples, rewards):
        records += [{"task": "countdown", "nums": t["nums"], "target": t["target"], "response": s, "reward": r,
                     **settings} for s, r in zip(row, row_r)]
    # instruction following, sampled, best-of-n chosen by the reward model
    rows = sft_mixture(cfg, "test")[:e.sampled_rows]
    prompts = [r["messages"][:-1] for r in rows]
    references = [r.get("reference", r["messages"][-1]["content"]) for r in rows]
    scorer = rouge_l if cfg.profile == "qwen" else exact_match
    if reward_model is not None:
        samples = sample_many(model, tokenizer, prompts, e.n_samples, cfg, seed)
        flat_scores = score_responses(reward_model, tokenizer, [p for p in prompts for _ in range(e.n_samples)],
                                      [s for row in samples for s in row])
        scores = [flat_scores[i * e.n_samples:(i + 1) * e.n_samples] for i in range(len(prompts))]
        quality = [[scorer(s, ref) for s in row] for row, ref in zip(samples, references)]
        for k in (1, 2, 4, 8):
            if k <= e.n_samples:
                metrics[f"best_of_{k}_reward_model"] = best_of_n(scores, quality, k)
        for p, row, row_s, row_q in zip(prompts, samples, scores, quality):
            records += [{"task": "instruction", "prompt": p, "response": s, "reward_model_score": sc,
                         scorer.__name__: q, **settings} for s, sc, q in zip(row, row_s, row_q)]
        if reference_model is not None:     # win rate against a reference model, judged by the reward model
            greedy = [r["response"] for r in records if r["task"] == "instruction" and r.get("greedy")]
            mine = greedy[:len(prompts)] if len(greedy) >= len(prompts) else generate_responses(
                model, tokenizer, prompts, e.batch_size, e.max_new_tokens, progress=False)
            if "opponent_scores" not in cache:
                theirs = generate_responses(reference_model, tokenizer, prompts, e.batch_size, e.max_new_tokens,
                                            progress=False)
                cache["opponent_scores"] = score_responses(reward_model, tokenizer, prompts, theirs)
            mine_scores = score_responses(reward_model, tokenizer, prompts, mine)
            metrics["win_rate"] = sum(x > y for x, y in zip(mine_scores, cache["opponent_scores"])) / len(prompts)
    write_jsonl(out_path("outputs", cfg, name, "responses.jsonl"), records)
    return metrics


def choose_final(table, rule: str) -> str:
    """The best checkpoint by the config's rule: the highest value of the named metric (ties: later stage)."""
    if rule not in table.columns:
        raise ValueError(f"final_rule metric {rule!r} is not among the evaluated metrics {list(table.columns)}")
    best = table[table[rule] == table[rule].max()]
    return str(best["model"].iloc[-1])


def evaluate_all_stages(cfg: Config, stages=STAGES):
    """One row per existing checkpoint of the profile (and `final`), one column per metric."""
    import pandas as pd
    found = [s for s in stages if any((out_path("checkpoints", cfg, s) / f).exists()
                                      for f in ("config.json", "adapter_config.json"))]
    reward_model = reference_model = None
    rm_dir = out_path("checkpoints", cfg, "reward_model")
    if (rm_dir / "config.json").exists():
        reward_model = load_reward_model(cfg.eval.judge or rm_dir)[1].to(device())
    if cfg.eval.reference_model:
        reference_model = load_model(cfg.eval.reference_model).to(device())
    rows, cache = [], {}
    for name in found:
        folder = out_path("checkpoints", cfg, name)
        tokenizer, model = load_tokenizer(folder), load_model(folder).to(device())
        rows.append({"model": name, **evaluate_stage(model, tokenizer, cfg, name, reward_model, reference_model,
                                                     cache)})
        print(f"evaluated {name}")
    table = pd.DataFrame(rows)
    quality = "rouge_l" if cfg.profile == "qwen" else "exact_match"
    table["mean_quality"] = (table[quality] + table["countdown_accuracy"]) / 2
    final = choose_final(table, cfg.eval.final_rule)
    target = out_path("checkpoints", cfg, "final")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out_path("checkpoints", cfg, final), target,
                    ignore=shutil.ignore_patterns("training_state.pt"))
    (target / "FINAL_IS.txt").write_text(f"{final} (rule: highest {cfg.eval.final_rule})\n")
    final_row = table[table.model == final].copy()
    final_row["model"] = f"final (= {final})"
    return pd.concat([table, final_row], ignore_index=True), final


def plot_stage_metrics(table, path: Path, metrics=("exact_match", "countdown_accuracy", "countdown_reward",
                                                       "pass@8", "best_of_8_reward_model")) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [m for m in metrics if m in table.columns]
    fig, ax = plt.subplots(figsize=(12, 4))
    grouped_bars(ax, table, metrics, labels=False)
    ax.set(ylabel="held-out score (higher is better)", title="Every stage on the same held-out sets")
    return save_figure(fig, path)


def plot_learning_curves(cfg: Config, path: Path) -> Path:
    """One panel per stage, its key curves read back from the TensorBoard logs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    wanted = {"pretrain": ["train/loss", "eval/loss"], "sft_masked": ["eval/response_loss"],
              "sft_unmasked": ["eval/response_loss"], "dpo": ["rewards/margins", "eval/preference_reward_accuracy"],
              "reward_model": ["eval/pairwise_accuracy"], "rloo": ["rloo/reward_mean", "eval/countdown_accuracy"]}
    present = [s for s in wanted if out_path("tensorboard_events", cfg, s).exists()]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(3.6 * max(1, len(present)), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], present):
        curves = read_tensorboard_scalars(out_path("tensorboard_events", cfg, stage))
        for tag in wanted[stage]:
            if tag in curves:
                ax.plot(*zip(*curves[tag]), label=tag, marker="." if len(curves[tag]) < 20 else None)
        ax.set(title=stage, xlabel="step")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def report_path(cfg: Config) -> Path:
    return output_root() / "report" / ("report.md" if cfg.profile == "tiny" else f"report_{cfg.profile}.md")


def write_report(cfg: Config, stages, final: str) -> Path:
    """report/report.md from the saved summaries: setup, metrics per stage, figures, masked vs unmasked with its
    seed noise, and notes on what improved and what did not — numbers only from the files, nothing typed in."""
    quality = "rouge_l" if cfg.profile == "qwen" else "exact_match"
    sizes = {p.parent.name: json.loads(p.read_text())["splits"] for p in sorted(out_path("data", cfg).glob("*/manifest.json"))}
    lines = [f"# Report — profile `{cfg.profile}`", "",
             f"Generated by `05_evaluation` on {time.strftime('%Y-%m-%d %H:%M')} from "
             f"`evaluation_results/{cfg.profile}/`. Model: `{cfg.model.name}`"
             + (f" ({cfg.model.num_layers} layers, hidden {cfg.model.hidden_size})" if cfg.model.name == "tiny" else ""),
             "", "## Setup", "", "| dataset | splits |", "|---|---|"]
    lines += [f"| {name} | {', '.join(f'{k}: {v}' for k, v in split.items())} |" for name, split in sizes.items()]
    lines += ["", f"SFT: {cfg.sft.max_steps} steps, batch {cfg.sft.batch_size}, lr {cfg.sft.lr}; DPO: β = {cfg.dpo.beta}, "
              f"{cfg.dpo.max_steps} steps; RLOO: k = {cfg.rloo.k}, {cfg.rloo.max_steps} steps, KL {cfg.rloo.kl_coef}. "
              f"Sampled measures: temperature {cfg.eval.temperature}, top_p {cfg.eval.top_p}, top_k {cfg.eval.top_k}, "
              f"{cfg.eval.n_samples} samples on {cfg.eval.sampled_rows} prompts.", "",
              "## Every stage on the same held-out sets", "", markdown_table(stages), "",
              f"`final` = `{final}` (rule: highest `{cfg.eval.final_rule}`).", "",
              "![stage metrics](../assets/stage_metrics.png)", "", "![learning curves](../assets/learning_curves.png)", "",
              "## Masked vs unmasked SFT", "", "![comparison](../assets/Comparison.png)", ""]
    runs = latest_summary(cfg, "sft_sweep")
    if runs is not None:
        weights = sorted(runs.prompt_loss_weight.unique())
        summary = latest_summary(cfg, "sft_sweep_mean_std")
        lines += ["Prompt-loss-weight sweep (mean ± std over seeds, shorter runs):", "", markdown_table(summary), ""]
        lines += [f"- {seed_noise_verdict(runs, m, weights[0], w)}" for m in ("response_loss", quality)
                  for w in weights[1:]]
    by = {r["model"]: r for r in stages.to_dict("records")}
    notes = []
    for a, b, metric in [("initial", "sft_masked", quality), ("sft_masked", "dpo", quality),
                         ("sft_masked", "dpo", "countdown_accuracy"), ("sft_masked", "rloo", "countdown_accuracy"),
                         ("sft_masked", "sft_unmasked", quality)]:
        if a in by and b in by and metric in by[a]:
            delta = by[b][metric] - by[a][metric]
            word = "improved" if delta > 0 else ("did not change" if delta == 0 else "got worse")
            notes.append(f"- {metric}: `{a}` {by[a][metric]:.3f} → `{b}` {by[b][metric]:.3f} ({word}, "
                         f"{100 * delta:+.1f} points).")
    prefs = latest_summary(cfg, "dpo")      # written by 03_dpo: the preference-learning evidence
    if prefs is not None and {"sft_masked", "dpo"} <= set(prefs.model):
        acc = dict(zip(prefs.model, prefs.preference_accuracy))
        notes.append(f"- held-out preference accuracy: `sft_masked` {acc['sft_masked']:.3f} (its own log-probs) → "
                     f"`dpo` {acc['dpo']:.3f} (implicit reward).")
        rm_accuracy = prefs.reward_model_accuracy.dropna()
        if len(rm_accuracy):
            notes.append(f"- reward model (Bradley–Terry, on `sft_masked`): held-out pairwise accuracy "
                         f"{rm_accuracy.iloc[-1]:.3f}.")
    lines += ["", "## What improved and what did not", ""] + notes
    path = report_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 16. Chat: the widget's logic as a small class (testable without a browser), the widget, and the CLI loop
# ════════════════════════════════════════════════════════════════════════════════════════════════
class ChatSession:
    """A multi-turn chat over one checkpoint, with streaming, Stop and Clear; the widget and the CLI drive it."""

    def __init__(self, max_context_tokens: int = 2048, system_prompt: str = "You are a helpful assistant.",
                 temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 128):
        import threading
        self.max_context_tokens, self.system_prompt = max_context_tokens, system_prompt
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.model = self.tokenizer = self.model_name = None
        self.history: list[dict] = []
        self.notes: list[str] = []
        self._stop = threading.Event()

    def load(self, path) -> str | None:
        """Load a checkpoint; returns None, or a clear message when it is missing or broken (never raises)."""
        self.model = self.tokenizer = self.model_name = None   # a failed load must not leave the old model
        if not str(path).strip():
            return "No checkpoint chosen: pick one or type the path of a model directory."
        path = Path(str(path)).expanduser()
        if not path.exists():
            return f"No checkpoint at {path}."
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            return f"{path} is not a Hugging Face model directory (no config.json)."
        try:
            tokenizer, model = load_tokenizer(path), load_model(path).to(device()).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            return f"Could not load {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        self.tokenizer, self.model, self.model_name = tokenizer, model, str(path)
        return None

    def clear(self) -> None:
        self.history, self.notes = [], []

    def stop(self) -> None:
        self._stop.set()

    def _messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        return system + self.history

    def _fit_context(self) -> None:
        """Drop the oldest turns (and, last, cut the newest message from the left) until the prompt fits."""
        budget = self.max_context_tokens - self.max_new_tokens
        count = lambda: len(self.tokenizer(render_chat(self.tokenizer, self._messages(), True),
                                           add_special_tokens=False)["input_ids"])
        while count() > budget and len(self.history) > 1:
            self.history.pop(0)
            self.notes.append("Older turns were dropped to fit the context window.")
        if count() > budget:
            ids = self.tokenizer(self.history[-1]["content"], add_special_tokens=False)["input_ids"]
            keep = len(ids)
            while count() > budget and keep > 1:   # re-check: a cut inside a character re-encodes longer
                keep = max(1, keep - (count() - budget))
                self.history[-1]["content"] = self.tokenizer.decode(ids[-keep:]).lstrip("\ufffd")
            self.notes.append(f"The message was truncated from the left to its last {keep} tokens.")

    def send(self, text: str, on_token=None) -> str | None:
        """Add a user message and stream the reply (on_token(piece) for each piece); empty messages are ignored."""
        import threading
        from transformers import TextIteratorStreamer
        if not isinstance(text, str) or not text.strip():
            return None
        if self.model is None:
            raise RuntimeError("no model loaded: call load() first")
        self.history.append({"role": "user", "content": text.strip()})
        self._fit_context()
        self._stop.clear()
        enc = self.tokenizer(render_chat(self.tokenizer, self._messages(), True), return_tensors="pt",
                             add_special_tokens=False).to(next(self.model.parameters()).device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopFlag(StoppingCriteria):
            def __init__(self, event):
                self.event = event

            def __call__(self, input_ids, scores, **kwargs):
                return self.event.is_set()

        sampling = (dict(do_sample=True, temperature=self.temperature, top_p=self.top_p) if self.temperature > 0
                    else dict(do_sample=False, temperature=None, top_p=None))
        thread = threading.Thread(target=self.model.generate, kwargs=dict(
            **enc, max_new_tokens=self.max_new_tokens, streamer=streamer, eos_token_id=stop_token_ids(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([_StopFlag(self._stop)]),
            top_k=None, **sampling))
        thread.start()
        reply = ""
        for piece in streamer:
            reply += piece
            if on_token:
                on_token(piece)
        thread.join()
        self.history.append({"role": "assistant", "content": reply.strip()})
        return reply.strip()

    def render(self) -> str:
        """The conversation as HTML (escaped: model output is untrusted)."""
        import html
        parts = [f"<p><i>{html.escape(n)}</i></p>" for n in self.notes]
        for m in self.history:
            who = "You" if m["role"] == "user" else "Assistant"
            parts.append(f"<p><b>{who}:</b> {html.escape(m['content']).replace(chr(10), '<br>')}</p>")
        return "\n".join(parts)


def available_checkpoints(cfg: Config) -> dict[str, Path]:
    """Chat-able checkpoints of the profile, in pipeline order (final first); the reward model is not one."""
    order = ["final", *STAGES, "rloo_instructions"]
    root = out_path("checkpoints", cfg)
    found = [p for p in root.glob("*") if p.name in order and
             ((p / "config.json").exists() or (p / "adapter_config.json").exists())]
    return {p.name: p for p in sorted(found, key=lambda p: order.index(p.name))}


def build_chat_widget(cfg: Config, session: ChatSession | None = None):
    """The ipywidgets chat; returns (widget, controls) so a notebook or test can drive it like a user."""
    import ipywidgets as W
    session = session or ChatSession()
    choices = available_checkpoints(cfg)
    c = {"checkpoint": W.Dropdown(options=list(choices) + ["(path below)"], description="checkpoint"),
         "path": W.Text(placeholder="any Hugging Face model directory", description="path"),
         "system": W.Textarea(value=session.system_prompt, description="system"),
         "temperature": W.FloatSlider(value=session.temperature, min=0.0, max=1.5, step=0.05, description="temperature"),
         "top_p": W.FloatSlider(value=session.top_p, min=0.05, max=1.0, step=0.05, description="top_p"),
         "max_new_tokens": W.IntSlider(value=session.max_new_tokens, min=8, max=1024, step=8, description="max tokens"),
         "message": W.Text(placeholder="type a message, Enter sends", description="you"),
         "send": W.Button(description="Send", button_style="primary"), "stop": W.Button(description="Stop"),
         "clear": W.Button(description="Clear"), "status": W.HTML(), "conversation": W.HTML()}

    def load(_=None):
        name = c["checkpoint"].value
        path = c["path"].value.strip() if name == "(path below)" else choices.get(name)
        error = session.load(path or "")
        session.clear()
        c["conversation"].value = ""
        c["status"].value = f"<span style='color:#b00'>{error}</span>" if error else f"loaded <code>{path}</code>"

    def send(_=None):
        text = c["message"].value
        if not text.strip():
            return
        if session.model is None:
            c["status"].value = "<span style='color:#b00'>Load a checkpoint first.</span>"
            return
        session.system_prompt, session.temperature = c["system"].value, c["temperature"].value
        session.top_p, session.max_new_tokens = c["top_p"].value, c["max_new_tokens"].value
        c["message"].value = ""
        streamed = []

        def on_token(piece):
            streamed.append(piece)
            c["conversation"].value = session.render() + f"<p><b>Assistant:</b> {''.join(streamed)}</p>"
        session.send(text, on_token)
        c["conversation"].value = session.render()

    def clear(_=None):
        session.clear()
        c["conversation"].value = ""

    c["checkpoint"].observe(lambda change: load() if change["name"] == "value" else None, names="value")
    c["path"].on_submit(load)
    c["send"].on_click(send)
    c["message"].on_submit(send)
    c["stop"].on_click(lambda _: session.stop())
    c["clear"].on_click(clear)
    if choices:
        load()
    box = W.VBox([W.HBox([c["checkpoint"], c["path"]]), c["system"],
                  W.HBox([c["temperature"], c["top_p"], c["max_new_tokens"]]), c["status"], c["conversation"],
                  W.HBox([c["message"], c["send"], c["stop"], c["clear"]])])
    return box, {**c, "session": session, "do_send": send, "do_clear": clear, "do_load": load}


def side_by_side(cfg: Config, prompt: str, names=("sft_masked", "sft_unmasked"), max_new_tokens: int = 64) -> dict:
    """The same prompt answered greedily by two checkpoints."""
    answers = {}
    for name in names:
        session = ChatSession(temperature=0.0, max_new_tokens=max_new_tokens)
        error = session.load(out_path("checkpoints", cfg, name))
        answers[name] = error or session.send(prompt)
    return answers


def chat_cli(model_dir: str, prompt: str | None = None, temperature: float = 0.7, max_new_tokens: int = 256,
             stream=None, read=input) -> int:
    """`python helpers.py chat --model DIR [PROMPT]`: one answer and exit, or a loop (quit/exit, /reset)."""
    stream = stream or sys.stdout
    session = ChatSession(temperature=temperature, max_new_tokens=max_new_tokens)
    error = session.load(model_dir)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write = lambda piece: (stream.write(piece), stream.flush())
    if prompt is not None:
        session.send(prompt, write)
        stream.write("\n")
        return 0
    stream.write(f"Chatting with {model_dir}. 'quit' or 'exit' leaves, '/reset' clears the history.\n")
    while True:
        try:
            text = read("you> ")
        except (EOFError, KeyboardInterrupt):
            break
        if text.strip().lower() in ("quit", "exit"):
            break
        if text.strip() == "/reset":
            session.clear()
            stream.write("(history cleared)\n")
            continue
        if not text.strip():
            continue
        stream.write("assistant> ")
        session.send(text, write)
        for note in session.notes:
            stream.write(f"\n({note})")
        session.notes = []
        stream.write("\n")
    return 0


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 17. Domain vocabulary: words outside the tokenizer's vocabulary
# ════════════════════════════════════════════════════════════════════════════════════════════════
def token_fragmentation(tokenizer, words) -> list[dict]:
    """How many tokens each word costs, standalone and mid-sentence (after a space)."""
    rows = []
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        spaced = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        rows.append({"word": word, "tokens": len(ids), "tokens_after_space": len(spaced),
                     "pieces": [tokenizer.decode([i]) for i in ids]})
    return rows


def add_new_tokens(tokenizer, model, words) -> int:
    """Add `words` as tokens; grow the embedding table only when needed; initialise every new row — of the input
    embeddings, and of the output head when it is not tied — to the mean of the trained rows.

    Qwen's tables have spare rows (151936 rows for ~151665 tokens): a new token may land on a row that exists but
    was never trained, so it is initialised whether or not the table grew. Tied embeddings stay tied.
    """
    # a word is new unless it already encodes as one token (byte-level vocabularies store "über" as "Ã¼ber")
    new = [w for w in dict.fromkeys(words) if len(tokenizer.tokenize(w)) != 1]
    trained_rows = len(tokenizer)          # rows below this were trained; above, spare or new
    added = tokenizer.add_tokens(new)
    if added == 0:
        return 0
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = tokenizer.convert_tokens_to_ids(new)
    with torch.no_grad():
        inputs = model.get_input_embeddings().weight
        inputs[new_ids] = inputs[:trained_rows].mean(dim=0)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != inputs.data_ptr():
            head.weight[new_ids] = head.weight[:trained_rows].mean(dim=0)
    return added


def lora_config_for_new_tokens(lora_cfg: dict, tokenizer, words):
    """A LoraConfig whose new-token embedding rows are trainable too (peft trainable_token_indices)."""
    from peft import LoraConfig
    ids = tokenizer.convert_tokens_to_ids(list(words))
    return LoraConfig(**{**lora_cfg, "trainable_token_indices": {"embed_tokens": ids}})


DOMAIN_FACTS = ("the middle heart chamber", "the nerve growth drug", "the test device")   # one per new token


def new_token_conversations(words, template: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": template.format(key=key)},
                          {"role": "assistant", "content": word}]} for word, key in zip(words, DOMAIN_FACTS)]


def demo_new_tokens(cfg: Config, steps: int = 160, seed: int = 0) -> dict:
    """Add cfg.new_tokens to the tiny base model, LoRA-train on a few conversations that answer with them (the new
    rows trainable), then check on held-out phrasings that the model produces each word as its single new token —
    and that save → merge → reload keeps that behaviour."""
    import tempfile
    from peft import get_peft_model
    words = list(cfg.new_tokens)[:len(DOMAIN_FACTS)]
    seed_everything(seed)
    base = out_path("checkpoints", cfg, "initial")
    tokenizer, model = load_tokenizer(base), load_model(base)
    added = add_new_tokens(tokenizer, model, words)
    lora = lora_config_for_new_tokens(dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                           task_type="CAUSAL_LM"), tokenizer, words)
    model = get_peft_model(model, lora)
    train_rows = (new_token_conversations(words, "What is the name of {key}?")
                  + new_token_conversations(words, "Tell me the term for {key}."))
    test_rows = new_token_conversations(words, "Which word means {key}?")
    examples = [build_sft_example(tokenizer, r["messages"], 64) for r in train_rows] * 8
    answer = lambda m: generate_responses(m, tokenizer, [r["messages"][:1] for r in test_rows], max_new_tokens=4,
                                          progress=False)
    before = answer(model)
    train_cfg = replace_config(cfg.sft, max_steps=steps, batch_size=8, lr=5e-3, warmup_steps=5, eval_every=10**9,
                               save_every=10**9, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, tokenizer, examples, train_cfg, sft_loss, sft_collate(tokenizer.pad_token_id),
              Path(tmp) / "run", resume=False, desc="new tokens")
        after = answer(model)
        merged_dir = save_model(model, Path(tmp) / "merged", tokenizer, merge=True)
        reloaded_tok, reloaded = load_tokenizer(merged_dir), load_model(merged_dir)
        reloaded_answers = generate_responses(reloaded, reloaded_tok, [r["messages"][:1] for r in test_rows],
                                              max_new_tokens=4, progress=False)
    single = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in words]
    return {"added": added, "words": words, "single_token": single, "before": before, "after": after,
            "after_merge_and_reload": reloaded_answers,
            "correct_after": sum(a == w for a, w in zip(after, words)) / len(words)}


# ════════════════════════════════════════════════════════════════════════════════════════════════
# 18. Command line
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
    p.add_argument("--stage", required=True, choices=sorted(SFT_STAGES) + ["dpo", "reward_model", "rloo",
                                                                             "rloo_instructions"])
    p.add_argument("--profile", default=None)
    p = sub.add_parser("chat", help="chat with a checkpoint: interactive, or one prompt and exit")
    p.add_argument("--model", required=True, help="a Hugging Face model directory")
    p.add_argument("prompt", nargs="?", default=None)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
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
        runners = {"dpo": lambda: run_dpo(cfg), "reward_model": lambda: run_reward_model(cfg),
                   "rloo": lambda: run_rloo(cfg, "countdown"), "rloo_instructions": lambda: run_rloo(cfg, "instructions")}
        result = runners[args.stage]() if args.stage in runners else run_sft(cfg, args.stage, SFT_STAGES[args.stage])
        print(f"{args.stage}: saved to {result['dir']}; last evaluation {result['history'][-1]}")
    elif args.command == "chat":
        return chat_cli(args.model, args.prompt, args.temperature, args.max_new_tokens)
    elif args.command == "run-notebook":
        run_notebook(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
