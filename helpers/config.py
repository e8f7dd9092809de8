"""Config dataclasses (one per stage, every field commented), the profiles as presets of them, output paths,
seeds and the device. The bottom of the package: imports nothing from it."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parent.parent


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
        known = {f.name for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else set()
        if name not in known:
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


def replace_sections(cfg: Config, **sections) -> Config:
    """A copy of cfg with whole sections replaced."""
    new = copy.copy(cfg)
    for name, value in sections.items():
        setattr(new, name, value)
    return new


STAGES = ("initial", "sft_masked", "sft_unmasked", "dpo", "rloo")
