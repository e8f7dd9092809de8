"""Config dataclasses (one per stage, every field commented), the profiles as presets of them, output paths,
seeds and the device. The bottom of the package: imports nothing from it."""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import random
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parent.parent


class ProjectError(Exception):
    """An error this project raises on purpose, with a message that names the problem (field, file, stage) and the
    fix: the command line prints it as one line (`error: …`) and exits with `exit_code`, and the notebooks show it
    without a traceback (`quiet_output`). Anything else is a bug and keeps its traceback."""
    exit_code = 2                     # 2: bad input (config, data, checkpoints); 1: a run that failed


class ConfigError(ProjectError, ValueError):
    """A config value of the wrong type or outside its range; the message names the field."""


class MissingData(ProjectError, FileNotFoundError):
    """A dataset file a stage needs is not there: the message names it and the command that makes it."""


def write_atomic(path: Path, text: str) -> Path:
    """Write a text file whole or not at all (a temporary sibling, then a rename): a crash or a full disk never
    leaves a truncated cache that a later run would read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_POSITIVE = (lambda v: v >= 1, "≥ 1")
_NON_NEGATIVE = (lambda v: v >= 0, "≥ 0")
_ABOVE_ZERO = (lambda v: v > 0 and math.isfinite(v), "> 0 and finite")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
_SHARE = (lambda v: 0 <= v < 1, "in [0, 1)")
_SEED = (lambda v: 0 <= v < 2 ** 31, "in 0 … 2^31 − 1")   # seeds are mixed into others (× 1000 + epoch, + 100,003
                                                        # × process): 2^31 leaves room in every RNG
_each = lambda rule, *names: {name: rule for name in names}
# What a value must be beyond its type, by the class that declares the field: a subclass inherits its parent's rules
# (every stage's max_steps is TrainConfig's), and a field of the same name in another class gets none by accident.
RANGES = {
    "TrainConfig": {**_each(_POSITIVE, *"max_steps batch_size grad_accum eval_every save_every log_every".split()),
                    **_each(_NON_NEGATIVE, "warmup_steps", "weight_decay"),
                    **_each(_ABOVE_ZERO, "lr", "max_grad_norm"),
                    "seed": _SEED, "max_length": (lambda v: v >= 2, "≥ 2")},
    "SFTConfig": {"prompt_loss_weight": _UNIT, "countdown_share": _SHARE, "train_conversations": _POSITIVE,
                  "loss_normalization": (lambda v: v in ("trained_tokens", "response_tokens"),
                                         '"trained_tokens" or "response_tokens"')},
    "DPOConfig": {**_each(_NON_NEGATIVE, "sft_weight", "onpolicy_countdown_prompts"),
                  **_each(_ABOVE_ZERO, "beta", "sample_temperature"), "countdown_share": _SHARE,
                  "onpolicy_samples": (lambda v: v >= 2, "≥ 2 (a best and a worst)"),
                  "onpolicy_min_chosen": (lambda v: 0 <= v <= 1, "in [0, 1] (a Countdown reward)"),
                  "loss_type": (lambda v: v in ("sigmoid", "ipo"), '"sigmoid" (DPO) or "ipo"')},
    "RewardConfig": {"nll_weight": _NON_NEGATIVE},
    "RLOOConfig": {"k": (lambda v: v >= 2, "≥ 2 (leave-one-out)"), "temperature": _ABOVE_ZERO,
                   **_each(_POSITIVE, "max_new_tokens", "table_every"), "kl_coef": _NON_NEGATIVE,
                   "instruction_share": _SHARE,
                   "instruction_reward": (lambda v: v in ("verifier", "reward_model"), '"verifier" or "reward_model"')},
    "RFTConfig": {**_each(_POSITIVE, "rounds", "steps_per_round"),
                  "sample_share": (lambda v: 0 < v <= 1, "in (0, 1]")},
    "ExperimentConfig": {**_each(_POSITIVE, "steps", "eval_rows"),
                         "flat_tolerance": (lambda v: 0 < v < 1, "in (0, 1)")},
    "DataConfig": {**_each(_POSITIVE, "max_prompt_tokens", "countdown_test", "countdown_max_value",
                           "pretrain_countdown_max_value", "max_rows", "world_version"),
                   **_each(_NON_NEGATIVE, "instruction_train", "instruction_test", "countdown_train",
                           "warmstart_rows", "preference_train", "preference_train_extra", "preference_test",
                           "pretrain_rows", "pretrain_countdown_fresh", "pretrain_facts"),
                   "seed": _SEED, "countdown_numbers": (lambda v: v >= 2, "≥ 2"),
                   "world": (lambda v: v in ("tiny", "hub"), '"tiny" or "hub"'),
                   "countdown_format": (lambda v: v in ("short", "chat", "warmstart"),
                                        '"short", "chat" or "warmstart"')},
    "ModelConfig": {**_each(_POSITIVE, "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                            "intermediate_size", "max_position_embeddings"),
                    "quant": (lambda v: v in (4, 8), "4 or 8")},
    "EvalConfig": {**_each(_POSITIVE, "batch_size", "max_new_tokens", "instruction_rows", "countdown_rows",
                           "curve_rows", "loss_rows", "n_samples", "sampled_rows", "token_budget", "generation_tokens",
                           "win_rate_rows"),
                   "top_k": _NON_NEGATIVE, "temperature": _ABOVE_ZERO, "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
                   "seed": _SEED, "sampling_memory": (lambda v: 0 < v < 1, "in (0, 1)")},
    "Config": _each(_POSITIVE, "new_token_steps", "notebook_cell_timeout"),
}


def range_rule(cls: type, name: str):
    """The range rule of field `name` as `cls` declares or inherits it, or None."""
    return next((RANGES[c.__name__][name] for c in cls.__mro__ if name in RANGES.get(c.__name__, {})), None)


@functools.cache
def field_types(cls: type) -> dict[str, tuple[tuple[type, ...], bool, str]]:
    """Each field's accepted types, resolved from its annotation — (types, None allowed, the annotation as words):
    int | None → ((int,), True, "int or None"); a float field also takes an int, a tuple field a list (JSON)."""
    widen = {float: (int, float), tuple: (tuple, list)}
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        args = [typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,))]
        kinds = tuple(t for a in args if a is not type(None) for t in widen.get(a, (a,)))
        words = " or ".join("None" if a is type(None) else a.__name__ for a in args)
        out[name] = (kinds, type(None) in args, words)
    return out


def check_value(cls: type, name: str, value) -> None:
    """Raise ConfigError unless `value` has the type of `cls`'s field `name` and lies in its range."""
    kinds, optional, words = field_types(cls)[name]
    if value is None and optional:
        return
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):      # True is an int
        raise ConfigError(f"{cls.__name__}.{name} = {value!r}: must be {words}, not {type(value).__name__}")
    rule = range_rule(cls, name)
    if rule is not None and not rule[0](value):
        raise ConfigError(f"{cls.__name__}.{name} = {value!r}: must be {rule[1]}")


class Checked:
    """Dataclass mixin: every field's type and range checked on construction (and by `check_config` after any
    change), so a bad value fails at once with its field's name, not deep inside torch three cells later."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_value(type(self), f.name, getattr(self, f.name))


@dataclass
class DataConfig(Checked):
    world: str = "tiny"               # "tiny": the offline tiny world; "hub": the course's hub datasets (qwen)
    hub_dir: str | None = None        # hub world only: read local files in each hub dataset's schema from here
                                      # (<hub id with / as __>/<hub split>.jsonl) instead of the hub (qwen_smoke)
    world_version: int = 2            # the tiny world's generator: raised when its text changes (2: the facts worded
                                      # as questions tokenize), so data folders, base models and cached chains made
                                      # by an older generator are made again, not reused (they record this)
    countdown_format: str = "short"   # the profile's one Countdown prompt (countdown.countdown_prompt): "short" =
                                      # TinyZero's question, its rules in a sentence (tiny: every token costs in every
                                      # stage); "chat" = TinyZero's system + user turn; "warmstart" = WarmStart query
    seed: int = 0                     # every generator and split is a pure function of this seed
    instruction_train: int = 3000     # tiny: instruction-task conversations for SFT (smol-smoltalk stand-in)
    instruction_test: int = 200       # tiny: held-out instruction tasks, disjoint prompts
    countdown_train: int = 2000       # Countdown prompts for RLOO / on-policy DPO
    countdown_test: int = 1000        # fixed held-out Countdown test set: 200 tasks tell a change of ±3 points
    countdown_numbers: int = 2        # tiny: 3 numbers were beyond the tiny model (docs/LOG.md)
    countdown_max_value: int = 50     # 2 numbers <= 50: room for 1,000 held-out tasks and the training prompts
    warmstart_rows: int = 1500        # solver-written completions for WarmStart SFT
    preference_train: int = 1500      # tiny: (chosen = correct, rejected = plausible wrong) pairs
    preference_train_extra: int = 4500  # tiny: more pairs, drawn after all else (so changing it changes no other
                                        # dataset): the reward model needs them (docs/LOG.md)
    preference_test: int = 100
    pretrain_rows: int = 6000         # tiny: plain-text documents the base model is pre-trained on
    pretrain_countdown_fresh: int = 3000  # tiny: more Countdown pre-training text, for tasks drawn afresh (too many
                                          # to memorise): the base model learns to copy numbers, not recall lines
    pretrain_countdown_max_value: int = 99  # their numbers: up to this (the held-out tasks are never drawn)
    pretrain_facts: int = 3000        # tiny: pre-training text stating the facts the instruction tasks ask about (a
                                      # word's letters and length, sums of digits), drawn with replacement
    max_rows: int | None = None       # hub: a seeded random sample of at most this many rows per dataset split
    max_prompt_tokens: int = 512      # hub: instruction prompts longer than this are left out of RLOO, on-policy
                                      # sampling and evaluation (skipped and counted; smoltalk has 4k-token ones)


@dataclass
class ModelConfig(Checked):
    name: str = "tiny"                # hub id or local dir; "tiny" = the model 00_data builds locally
    vocab_size: int = 1024            # tiny: the BPE trainer's ceiling; the tiny world yields fewer (00 prints it)
    hidden_size: int = 192            # tiny: under 2M parameters, fast on 2 CPU cores
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2             # grouped-query attention, as in Qwen2.5
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    lora: dict | None = None          # peft.LoraConfig fields, or None for full fine-tuning
    quant: int | None = None          # 4 (NF4, QLoRA) or 8 bits for the frozen base under LoRA (bitsandbytes: CUDA
                                      # or CPU), None = full precision
    gradient_checkpointing: bool = False  # trade compute for memory on long sequences


@dataclass
class TrainConfig(Checked):
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
    max_steps: int = 2000             # tiny: copying a task's numbers is learned late; fewer steps left some base
                                      # models without it (docs/LOG.md)
    lr: float = 5e-4                  # tiny: copying (induction) starts earlier at a smaller step (docs/LOG.md)
    batch_size: int = 16              # tiny: copying takes a number of steps more than of tokens (docs/LOG.md)


@dataclass
class SFTConfig(TrainConfig):
    max_steps: int = 600              # tiny: shorter runs wrote the Countdown format without the task's numbers
    prompt_loss_weight: float = 0.0   # 0 = masked (response only), 1 = unmasked (whole sequence)
    countdown_share: float = 0.5      # fraction of the SFT mixture taken from WarmStart Countdown rows
    train_conversations: int | None = None  # instruction conversations in the mixture (None = all; WarmStart rows
                                            # follow countdown_share): the experiment's data-size axis
    loss_normalization: str = "trained_tokens"  # divide a step's loss by its trained tokens (weighted), or by its
                                                # "response_tokens": then the response gets the same gradient masked
                                                # or not, and only the prompt's term is added (the experiment's control)


@dataclass
class ExperimentConfig(Checked):
    """`make experiment`: masked vs whole-sequence loss with seeds at full length, the gradient-dilution confound
    controlled, and a prompt-loss-weight × SFT-data-size grid — every cell a cached run, resumable."""
    weights: tuple = (0.0, 0.01, 0.1, 1.0)  # prompt-loss weights (0 = masked, 1 = unmasked)
    data_sizes: tuple = (300, 1000, 3000)   # instruction conversations (Shi et al. 2024: prompt loss helps small sets)
    seeds: tuple = (0, 1, 2)          # data order and initialisation; ≥ 3 to tell an effect from seed noise
    steps: int = 600                  # every cell at the main SFT length (how many runs had flattened: the table)
    controlled_weights: tuple = (0.1, 1.0)  # rerun at the largest size with loss_normalization="response_tokens"
    eval_rows: int = 200              # held-out rows per measure for each cell
    flat_tolerance: float = 0.03      # "learned": the last fifth of steps lowered the best held-out response loss
                                      # by < 3 % (flat, or rising again as small sets overfit)
    run_in_notebook: bool = False     # 02 reruns the grid (else it shows the committed one); EXPERIMENT=1 forces it


@dataclass
class DPOConfig(TrainConfig):
    beta: float = 0.1                 # strength of the pull towards the reference (Rafailov et al. 2023)
    lr: float = 5e-4                  # DPO moves a trained model: a smaller step than SFT
    max_steps: int = 800              # tiny: fewer steps gained less exact match in the chain (docs/LOG.md)
    warmup_steps: int = 10
    onpolicy_countdown_prompts: int = 1600  # Countdown prompts sampled for on-policy pairs (0 = none; LOG.md)
    onpolicy_samples: int = 4         # samples per prompt; the best and the worst by the reward make the pair
    onpolicy_min_chosen: float = 1.0  # the chosen sample must score this (1.0 = it solves the task): the RPO term
                                      # imitates the chosen, so a wrong equation must not be one (docs/LOG.md);
                                      # 0 = any better sample
    countdown_share: float = 0.67     # share of each epoch's pairs that are Countdown pairs (repeated to reach it):
                                      # a smaller share let DPO erode Countdown (docs/LOG.md)
    sample_temperature: float = 1.0   # sampling temperature for the on-policy pairs
    reference_from_disabled_adapters: bool = False  # LoRA only: reference = model with adapters off
    sft_weight: float = 2.0           # α of the RPO term (NLL of the chosen); 0 = plain DPO, which cost the tiny
                                      # model exact match (docs/LOG.md)
    loss_type: str = "sigmoid"        # "sigmoid" (DPO) or "ipo" (Azar et al. 2023; CS224R 2026's preference stage)


@dataclass
class RewardConfig(TrainConfig):
    lr: float = 5e-4                  # Bradley–Terry reward model on top of the SFT model
    nll_weight: float = 1.0           # α of the GRM term (Yang et al. 2024): the chosen answer's NLL per token through
                                      # the tied embeddings (tied models only); 0 = plain Bradley–Terry, which ranked
                                      # the tiny world's sums at chance (docs/LOG.md)
    max_steps: int = 900              # tiny: ~5 passes over 6,000 pairs; single-digit sums are learned late
    batch_size: int = 32              # pairs per step
    warmup_steps: int = 10


@dataclass
class RLOOConfig(TrainConfig):
    k: int = 8                        # samples per prompt; the leave-one-out baseline needs k >= 2
    batch_size: int = 16              # prompts per micro-batch (× k samples); fewer left most groups all-wrong
    lr: float = 1e-4                  # tiny: larger steps dropped Countdown before it recovered (docs/LOG.md)
    max_steps: int = 100              # the course's RLOO length
    warmup_steps: int = 5
    temperature: float = 1.2          # more groups hold both right and wrong samples, and only those carry a
                                      # gradient: at 1.0 one base model of eight lost Countdown (docs/LOG.md)
    max_new_tokens: int = 64          # room for a Countdown <think> … </think> <answer> … </answer>
    kl_coef: float = 0.15             # KL penalty to the reference, folded into the reward: keeps what DPO gained
                                      # (docs/LOG.md)
    table_every: int = 10             # steps between TensorBoard text tables of sampled completions
    instruction_share: float = 0.25   # share of prompts from instruction following: enough to keep DPO's gains, few
                                      # enough that Countdown gained on the 11 robustness base models (docs/LOG.md)
    instruction_reward: str = "verifier"  # instruction track's reward: "verifier" (exact match with the tiny world's
                                          # one answer) or "reward_model" (the Bradley–Terry model of 03)
    group_by_length: bool = False     # mixed tracks in every batch (grouping by length would separate them)
    eval_every: int = 25              # held-out greedy evaluations (both tracks): the RLOO-vs-RFT curve's points


@dataclass
class RFTConfig(TrainConfig):
    """Rejection-sampling fine-tuning (expert iteration): sample n per prompt, keep the best by the verifier or the
    reward model, fine-tune on what was kept; repeated for `rounds` on fresh prompts. It draws `sample_share` of
    RLOO's samples (prompts per round are derived from the RLOO config), so the two compare at equal samples."""
    rounds: int = 2                   # one held-out evaluation after each: the curve's points
    sample_share: float = 0.5         # RFT's samples as a share of RLOO's whole run (1 = all of it). tiny: half,
                                      # ending at RLOO's evaluations; more rounds gained nothing (docs/LOG.md)
    steps_per_round: int = 50         # SFT steps on each round's kept completions
    batch_size: int = 16
    lr: float = 3e-4                  # as RLOO's: the same model, moved by the same step size
    warmup_steps: int = 5
    max_steps: int = 100              # rounds × steps_per_round (checked)


@dataclass
class EvalConfig(Checked):
    batch_size: int = 64              # prompts per generate call
    max_new_tokens: int = 64          # enough for every tiny answer, including Countdown reasoning
    instruction_rows: int = 200       # held-out instruction tasks scored by exact match
    countdown_rows: int = 1000        # held-out Countdown tasks scored by the rule-based reward
    curve_rows: int = 200             # the first of them, scored at RLOO's and RFT's evaluation points (their curves):
                                      # a set large enough to tell a stage's change costs too much at every point
    loss_rows: int = 200              # held-out conversations for response-only / whole-sequence loss
    seed: int = 0                     # sampling seed of every sampled evaluation
    temperature: float = 0.6          # sampled evaluation settings, as the course evaluates
    top_p: float = 0.95
    top_k: int = 20
    n_samples: int = 8                # samples per prompt for pass@k and best-of-n (k, n up to 8)
    token_budget: int = 16_384        # tokens (rows × padded length) per no-grad batch: losses, log-probs, scores
    generation_tokens: int = 65_536   # tokens (rows × (prompt + new)) per generate call, at most batch_size rows
    sampling_memory: float | None = None  # CUDA: share of free GPU memory a sampling call (KV cache, logits) may
                                      # fill — evaluation, DPO's, RLOO's, RFT's samples; None: the sizes above
    compiled_sampling: bool = False   # CUDA: sampling's decoding step on a static cache under torch.compile
    sampled_rows: int = 48            # prompts per task for the sampled measures (CPU budget in tiny)
    judge: str | None = None          # win-rate judge: a sequence-classification reward model dir/id; None = our
                                      # reward_model (the course judges with a far stronger one)
    reference_model: str | None = None  # win-rate opponent on UltraFeedback test prompts (qwen:
                                        # Qwen/Qwen2.5-0.5B-Instruct); None = no win rate
    win_rate_rows: int = 200          # UltraFeedback test_prefs prompts (tiny: held-out preference prompts)
    final_stage: str = "rloo"         # `final` = the end of the chain (sft_masked → dpo → rloo)


@dataclass
class TargetsConfig(Checked):
    """What the chain must reach on the held-out sets — on every base model (`make robustness`), not on average.
    None = no such target in this profile (the qwen course's anchors are in docs/QWEN.md)."""
    final_quality: float | None = 0.75      # `final` exact match (tiny world: one correct answer)
    final_countdown: float | None = 0.30    # `final` greedy Countdown accuracy (the course's anchor for RLOO)
    reward_model: float | None = 0.90       # held-out pairwise accuracy of the Bradley–Terry reward model
    dpo_preference: float | None = 0.90     # held-out pairs DPO's implicit reward ranks right
    dpo_countdown_drop: float | None = 0.02  # DPO may lose at most this much of SFT's Countdown accuracy
    rloo_quality_drop: float | None = 0.02  # RLOO may lose at most this much of DPO's exact match
    rloo_countdown_gain: float | None = 0.0  # RLOO must raise DPO's Countdown accuracy by more than this


@dataclass
class RobustnessConfig(Checked):
    """`make robustness`: the chain (base model → sft_masked → dpo, reward model → rloo, rft) on several base
    models; a pre-training seed stands in for another machine (its float rounding); every stage takes that seed."""
    seeds: tuple = (1, 2, 3, 4, 5, 13, 14, 15)  # the reported base models: never used to tune the chain's settings
    tuning_seeds: tuple = (10, 11, 12)  # the base models the settings were tuned on (reported apart)
    rft: bool = True                  # also RFT beside RLOO (its comparison's spread)


@dataclass
class Config(Checked):
    profile: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    new_tokens: tuple = ("mediventricular", "neurogenix", "X-23S")  # domain words outside the vocabulary
    new_token_steps: int = 160        # LoRA steps of 00_data's new-token demo (tiny: two or three of three learned)
    restart: bool = False             # train stages again even when their folder holds a finished run of the same
                                      # config (else it is kept); RESTART=1 in the environment sets it
    notebook_cell_timeout: int | None = 1800  # seconds per notebook cell in `make demo`; None = no limit (the
                                              # qwen stages run for hours)


def _tiny() -> Config:
    return Config(profile="tiny")


def _smoke() -> Config:
    """tiny, shrunk to seconds: for tests and a quick look at every notebook."""
    cfg = Config(profile="smoke")
    cfg.data = DataConfig(instruction_train=120, instruction_test=24, countdown_train=60, countdown_test=16,
                          warmstart_rows=60, preference_train=40, preference_train_extra=20, preference_test=16,
                          pretrain_rows=200, pretrain_countdown_fresh=40, pretrain_facts=40)
    cfg.model = ModelConfig(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_position_embeddings=256)
    cfg.pretrain = PretrainConfig(max_steps=6, batch_size=8, eval_every=3, save_every=3, log_every=1)
    cfg.sft = SFTConfig(max_steps=6, batch_size=8, eval_every=3, save_every=3, log_every=1, warmup_steps=2)
    cfg.experiment = ExperimentConfig(weights=(0.0, 1.0), data_sizes=(60,), seeds=(0, 1), steps=3,
                                      controlled_weights=(1.0,), eval_rows=8, run_in_notebook=True)
    cfg.dpo = DPOConfig(max_steps=4, batch_size=8, eval_every=2, save_every=2, log_every=1, warmup_steps=1,
                        onpolicy_countdown_prompts=8, onpolicy_samples=2)
    cfg.reward = RewardConfig(max_steps=4, batch_size=8, eval_every=2, save_every=2, log_every=1, warmup_steps=1)
    cfg.rloo = RLOOConfig(max_steps=4, batch_size=4, k=2, eval_every=2, save_every=2, log_every=1, warmup_steps=1,
                          max_new_tokens=12, table_every=1)
    cfg.rft = RFTConfig(rounds=2, sample_share=1.0, steps_per_round=2, max_steps=4, batch_size=4, warmup_steps=1,
                        eval_every=2, save_every=2, log_every=1)
    cfg.eval = EvalConfig(batch_size=16, max_new_tokens=12, instruction_rows=12, countdown_rows=8, loss_rows=16,
                          n_samples=2, sampled_rows=4)
    cfg.robustness = RobustnessConfig(seeds=(1, 2), tuning_seeds=(3,))
    return cfg


QWEN_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",   # every linear layer, as
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",       # QLoRA (Dettmers et al. 2023)
                                 "gate_proj", "up_proj", "down_proj"])


def _qwen() -> Config:
    """Qwen/Qwen2.5-0.5B and the hub datasets on one 24 GB GPU in an afternoon (≤ 4 h: benchmarks/qwen_budget.py;
    docs/qwen_full.yml: larger budgets). Each value names its source: TRL, the course (CS224R 2026), a paper, ours."""
    cfg = Config(profile="qwen", notebook_cell_timeout=None)
    cfg.data = DataConfig(world="hub", countdown_format="warmstart",   # the course: use the SFT set's prompt
                          countdown_test=500, max_rows=20_000, max_prompt_tokens=512)
    cfg.model = ModelConfig(name="Qwen/Qwen2.5-0.5B", max_position_embeddings=32768, lora=QWEN_LORA,
                            gradient_checkpointing=True)
    # SFT: 2e-4 is the usual LoRA SFT rate (QLoRA, the alignment-handbook's LoRA recipes); 1,024 tokens because a
    # course SFT model's Countdown completions have a median of 434 tokens and 39 % exceed 512 (the course: 1,024);
    # 500 steps × 32 rows: 16,000 conversations, under one pass over the 20,000 rows (qwen_full: 1,000 steps)
    cfg.sft = SFTConfig(max_steps=500, batch_size=8, grad_accum=4, lr=2e-4, warmup_steps=25, max_length=1024,
                        eval_every=100, save_every=100)
    cfg.experiment = ExperimentConfig(weights=(0.0, 0.1, 1.0), data_sizes=(2000, 20_000), seeds=(0, 1, 2),
                                      steps=1000, controlled_weights=(1.0,), eval_rows=500)
    # DPO: β = 0.1 (Rafailov et al. 2023; TRL's default). TRL's lr default 1e-6 is for full fine-tuning; LoRA
    # adapters want ~10× a full fine-tune's rate (Biderman et al. 2024); 250 steps × 32 pairs: 8,000 pairs (qwen_full:
    # 500 steps). The reward model: the same, fully fine-tuned, fp32 master weights (bf16 AdamW loses lr-1e-5 steps)
    cfg.dpo = DPOConfig(batch_size=4, grad_accum=8, lr=2e-5, max_steps=250, warmup_steps=15, max_length=1024,
                        eval_every=50, save_every=50, onpolicy_countdown_prompts=2000, sample_temperature=1.0,
                        reference_from_disabled_adapters=True)
    cfg.reward = RewardConfig(batch_size=4, grad_accum=8, lr=1e-5, max_steps=250, warmup_steps=15, max_length=1024,
                              eval_every=50, save_every=50, nll_weight=0.0)
    # RLOO: the course's 100 steps, k = 8, KL 0.001, temperature 1.0, 1,024 new tokens (CS224R 2026: 128 prompts a
    # step, H100, vLLM); 32 prompts × 8 a step: one sampling call on 24 GB (qwen_full: 64); lr 2e-5 for LoRA (the
    # course's full fine-tune: 1e-5). RFT: half of RLOO's samples (tiny: as good as RLOO; qwen_full: all of them)
    cfg.rloo = RLOOConfig(batch_size=8, grad_accum=4, k=8, lr=2e-5, kl_coef=0.001, temperature=1.0, max_steps=100,
                          warmup_steps=5, max_new_tokens=1024, max_length=1024, eval_every=25, save_every=5,
                          table_every=5, instruction_reward="reward_model", instruction_share=0.25)
    cfg.rft = RFTConfig(rounds=2, sample_share=0.5, steps_per_round=50, max_steps=100, batch_size=8, grad_accum=4,
                        lr=2e-5, max_length=1024, eval_every=50, save_every=50)
    # evaluation: the course's sampling (EvalConfig's defaults) and its 800 samples (50 prompts × 16; here 100 × 8)
    cfg.eval = EvalConfig(batch_size=64, max_new_tokens=1024, instruction_rows=500, countdown_rows=500, curve_rows=500,
                          loss_rows=500, sampled_rows=100, generation_tokens=131_072,
                          reference_model="Qwen/Qwen2.5-0.5B-Instruct", win_rate_rows=500, sampling_memory=0.7)
    # the course's anchor: Countdown ≥ 0.3 after RLOO; ROUGE-L and the reward model have no course target
    cfg.targets = TargetsConfig(final_quality=None, final_countdown=0.30, reward_model=None, dpo_preference=None,
                                dpo_countdown_drop=None, rloo_quality_drop=None, rloo_countdown_gain=None)
    cfg.robustness = RobustnessConfig(seeds=(1, 2, 3), tuning_seeds=(), rft=False)   # hours per base model
    return cfg


def _qwen_smoke() -> Config:
    """The qwen code path end to end on CPU: LoRA, gradient checkpointing, the real tokenizer and chat template and
    the hub converters, on a local Qwen2.5-architecture checkpoint ($QWEN_MODEL_DIR, built by
    ../shared/tools/get-real-qwen.sh) and the small local files in each hub dataset's schema
    (tests/fixtures/hub); 2–3 steps per stage and short generations."""
    cfg = _qwen()
    model_dir = os.environ.get("QWEN_MODEL_DIR", "")
    cfg.profile = "qwen_smoke"
    cfg.new_token_steps = 2
    cfg.data = replace_config(cfg.data, hub_dir=str(REPO_ROOT / "tests" / "fixtures" / "hub"), max_rows=None,
                              countdown_test=16, max_prompt_tokens=384)
    cfg.model = replace_config(cfg.model, name=model_dir)
    steps = dict(warmup_steps=1, eval_every=2, save_every=2, log_every=1, max_length=256)
    cfg.sft = SFTConfig(max_steps=2, batch_size=2, grad_accum=1, lr=2e-4, **steps)
    cfg.experiment = ExperimentConfig(weights=(0.0, 1.0), data_sizes=(8,), seeds=(0,), steps=1,
                                      controlled_weights=(), eval_rows=4)
    cfg.dpo = replace_config(cfg.dpo, max_steps=2, batch_size=2, grad_accum=1, onpolicy_countdown_prompts=4, **steps)
    cfg.reward = replace_config(cfg.reward, max_steps=2, batch_size=2, grad_accum=1, **steps)
    cfg.rloo = replace_config(cfg.rloo, max_steps=2, batch_size=2, grad_accum=1, k=2, max_new_tokens=24,
                              table_every=1, **steps)
    cfg.rft = replace_config(cfg.rft, rounds=1, steps_per_round=1, max_steps=1, sample_share=1.0, batch_size=2,
                             grad_accum=1, **steps)     # all of RLOO's 8 samples: its one evaluation point after 0
    cfg.eval = replace_config(cfg.eval, batch_size=8, max_new_tokens=16, instruction_rows=2, countdown_rows=2,
                              loss_rows=2, sampled_rows=1, n_samples=2, win_rate_rows=1,   # each checkpoint: 1-3 min
                              reference_model=model_dir or None)     # the same checkpoint stands in for Instruct
    return cfg


PROFILES = {"tiny": _tiny, "smoke": _smoke, "qwen": _qwen, "qwen_smoke": _qwen_smoke}


def get_config(profile: str | None = None, /, **overrides) -> Config:
    """The preset of `profile` (default: $PROFILE, else "tiny"), with `section__field=value` overrides (a YAML file's
    come first: `config_file.get_config`, which the notebooks and commands call)."""
    profile = profile or os.environ.get("PROFILE", "tiny")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    cfg = PROFILES[profile]()
    cfg.restart = os.environ.get("RESTART", "") not in ("", "0")
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        target = cfg if not name else getattr(cfg, section, None)
        name = name or section
        fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
        if name not in fields:
            raise ConfigError(f"unknown config field {key!r} for profile {profile!r}")
        if name == "profile":
            raise ConfigError("the profile is not a field to override: choose it with --profile (or PROFILE=…)")
        check_value(type(target), name, value)
        setattr(target, name, value)
    return check_config(cfg)


def check_config(cfg):
    """Every field of a config (and of its sections) checked again — after fields were set one by one."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        check_value(type(cfg), f.name, value)
        if dataclasses.is_dataclass(value):
            check_config(value)
    if isinstance(cfg, ModelConfig) and cfg.quant is not None and not cfg.lora:
        raise ConfigError(f"ModelConfig.quant = {cfg.quant} needs ModelConfig.lora: 4/8-bit weights are frozen, so "
                          "only LoRA adapters on top of them can train (QLoRA)")
    return cfg


def replace_config(section, **changes):
    """dataclasses.replace with an error that names the unknown field."""
    known = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for {type(section).__name__}")
    return dataclasses.replace(section, **changes)        # __post_init__ checks every value


def config_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def describe_config(section) -> str:
    """One config section as short readable lines (`lr 0.0005 · beta 0.1 · …`) instead of a raw dataclass print."""
    import textwrap
    parts = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in dataclasses.asdict(section).items()]
    return textwrap.fill(type(section).__name__ + ": " + " · ".join(parts), 110, subsequent_indent="  ")


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
    """The GPU if there is one — under `accelerate launch`, this process's own (LOCAL_RANK), not all on cuda:0."""
    if not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        return torch.device("cpu")
    return torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda")


def replace_sections(cfg: Config, **sections) -> Config:
    """A copy of cfg with whole sections replaced."""
    new = copy.copy(cfg)
    for name, value in sections.items():
        setattr(new, name, value)
    return new


STAGES = ("initial", "sft_masked", "sft_unmasked", "dpo", "rloo", "rft")   # rft: beside rloo, from the same start

# The two worlds name their datasets differently: the role a dataset plays -> its name in data/<profile>/
DATASETS = {"tiny": {"instructions": "instructions", "preferences": "preferences"},
            "hub": {"instructions": "smoltalk", "preferences": "ultrafeedback"}}


def dataset_name(cfg: Config, role: str) -> str:
    """data/<profile>/<name> of the instruction-following ("instructions") or preference ("preferences") set."""
    return DATASETS[cfg.data.world][role]


def quality_metric(cfg: Config) -> str:
    """How an instruction answer is scored: exact match where the tiny world has one answer, ROUGE-L on the hub."""
    return "exact_match" if cfg.data.world == "tiny" else "rouge_l"
