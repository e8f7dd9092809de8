"""REINFORCE Leave-One-Out (Ahmadian et al. 2024): k samples per prompt, the leave-one-out baseline, a rule-based
(Countdown) or reward-model reward with a KL penalty, as a loss for the one training loop.
Imports: config … scoring, reward_model."""
from __future__ import annotations

import collections
import json
import random

import torch

from .config import Config, dataset_name, device, out_path, quality_metric
from .countdown import countdown_reward
from .data import countdown_tasks, load_split
from .modeling import disable_dropout, enable_checkpointing, load_model, load_tokenizer
from .formatting import fit_prompts, render_chat
from .batching import collate
from .logger import NullLogger, read_tensorboard_scalars
from .distributed import main_first
from .checkpoints import start_fingerprint
from .training import StageResult, open_stage, refuse_sharded, stage_run, train
from .logprobs import can_share_prompt, sequence_logps, shared_prompt_logps
from .generation import rollout_prompts, sample_completions
from .scoring import curve_rows, evaluate_checkpoint, exact_match, track_scores
from .results import save_figure
from .reward_model import load_reward_model, score_responses


def table_cell(text: str) -> str:
    """Model text as one cell of a Markdown table (TensorBoard's Text tab): quoted with control characters made
    visible (json), and its "|" escaped — a completion with a pipe in it would otherwise split the row."""
    return json.dumps(text).replace("|", "\\|")


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Ahmadian et al. 2024: A_i = r_i − mean_{j≠i} r_j for every prompt's k samples; rewards is [prompts, k]."""
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def rloo_loss(logps: torch.Tensor, rewards: torch.Tensor, k: int, kl: torch.Tensor | None = None,
              kl_coef: float = 0.0) -> torch.Tensor:
    """−Σ_i A_i · log π(y_i|x) over k samples per prompt (rows grouped by prompt), the advantages computed from the
    KL-shaped rewards r_i − β_KL · (log π(y_i|x) − log π_ref(y_i|x)); the loop divides by the samples of the step."""
    shaped = rewards if kl is None or kl_coef == 0 else rewards - kl_coef * kl
    advantages = rloo_advantages(shaped.view(-1, k)).flatten().to(logps.device)
    return -(advantages * logps).sum()


def rl_tasks(cfg: Config, tokenizer, split: str = "train") -> list[dict]:
    """The prompts RLOO and RFT learn from: every Countdown task (rewarded by the rule) and, in the share
    `cfg.rloo.instruction_share`, instruction prompts (rewarded by the verifier or the reward model) — so a policy
    that comes from DPO keeps following instructions while it learns Countdown. Each task carries its "track"."""
    tasks = [dict(t, track="countdown") for t in countdown_tasks(cfg, split)]
    share = cfg.rloo.instruction_share
    if share > 0:
        rows = load_split(cfg, dataset_name(cfg, "instructions"), split)
        fits, too_long = fit_prompts(tokenizer, [r["messages"][:-1] for r in rows], cfg.data.max_prompt_tokens)
        rows = [r for r, ok in zip(rows, fits) if ok]
        random.Random(cfg.rloo.seed).shuffle(rows)
        wanted = round(len(tasks) * share / (1 - share))
        tasks += [{"track": "instructions", "prompt": r["messages"][:-1],
                   "reference": r.get("reference", r["messages"][-1]["content"])} for r in rows[:wanted]]
        if too_long:
            print(f"instruction prompts: {too_long} longer than {cfg.data.max_prompt_tokens} tokens left out")
    return tasks


def start_scores(cfg: Config, start: str) -> dict:
    """`track_scores` of the checkpoint a stage starts from, read from its cached greedy evaluation (the same
    held-out sets and settings; Countdown: its first `curve_rows` answers) instead of generated again."""
    metrics, records = evaluate_checkpoint(cfg, start)
    rewards = [r["reward"] for r in records if r["task"] == "countdown" and r.get("greedy")][:curve_rows(cfg)]
    return {"countdown_accuracy": sum(r == 1.0 for r in rewards) / len(rewards),
            "countdown_reward": sum(rewards) / len(rewards), quality_metric(cfg): metrics[quality_metric(cfg)]}


def make_reward_fn(cfg: Config, reward_model=None):
    """The reward of every sampled completion, by its task's track: Countdown by `countdown_reward`; instructions by
    exact match with the task's one answer ("verifier", the tiny world) or by the reward model's score."""
    use_model = cfg.rloo.instruction_reward == "reward_model"
    if use_model and reward_model is None:
        raise ValueError("instruction_reward='reward_model' needs the reward model (run 03_dpo first)")

    def reward_fn(prompts, completions, tasks) -> list[float]:
        rewards = [countdown_reward(c, t["target"], t["nums"]) if t["track"] == "countdown" else
                   0.0 if use_model else exact_match(c, t["reference"]) for c, t in zip(completions, tasks)]
        rows = [i for i, t in enumerate(tasks) if t["track"] != "countdown"]
        if use_model and rows:
            rm_tok, rm = reward_model
            for i, score in zip(rows, score_responses(rm, rm_tok, [prompts[i] for i in rows],
                                                      [completions[i] for i in rows])):
                rewards[i] = score
        return rewards
    return reward_fn


def sample_rows(samples: list[dict]) -> list[dict]:
    """Sampled completions as prompt + response rows with the response-only mask, for `collate`."""
    return [{"input_ids": s["prompt_ids"] + s["response_ids"],
             "attention_mask": [1] * (len(s["prompt_ids"]) + len(s["response_ids"])),
             "labels": [-100] * len(s["prompt_ids"]) + s["response_ids"]} for s in samples]


def sample_and_score(model, tokenizer, tasks: list[dict], rcfg, reward_fn, per_call: int | None = None,
                     compiled: bool = False):
    """The generation half of an RLOO step (TRL keeps it apart from the loss the same way): k completions per task's
    prompt from the policy as it is now, and each one's reward, `per_call` prompts a sampling call (None: all;
    `compiled`: eval.compiled_sampling). Returns (samples, the task of each sample, rewards)."""
    samples, rep_tasks, rewards = [], [], []
    per_call = per_call or max(1, len(tasks))
    for i in range(0, len(tasks), per_call):
        part = tasks[i:i + per_call]
        drawn = sample_completions(model, tokenizer, [t["prompt"] for t in part], rcfg.k, rcfg.max_new_tokens,
                                   rcfg.temperature, compiled)
        part_tasks = [t for t in part for _ in range(rcfg.k)]
        rewards += reward_fn([t["prompt"] for t in part_tasks], [s["text"] for s in drawn], part_tasks)
        samples, rep_tasks = samples + drawn, rep_tasks + part_tasks
    return samples, rep_tasks, torch.tensor(rewards, dtype=torch.float32)


def rollout_metrics(samples: list[dict], rep_tasks: list[dict], rewards, kl, k: int) -> dict:
    """A step's sampling in numbers for TensorBoard: rewards (per track: they live on different scales), the share
    of groups whose k rewards are equal (they teach nothing), the KL, the completions' length."""
    grouped = rewards.view(-1, k)
    metrics = {"rloo/reward_mean": rewards.mean(), "rloo/reward_std": rewards.std(), "rloo/kl": kl.mean(),
               "rloo/response_length": sum(len(s["response_ids"]) for s in samples) / len(samples),
               "rloo/zero_variance_groups": (grouped.std(dim=1) == 0).float().mean()}
    countdown = torch.tensor([t.get("track") == "countdown" for t in rep_tasks])
    if countdown.any():
        cd = rewards[countdown]
        metrics.update({"rloo/reward_countdown": cd.mean(), "rloo/fraction_correct": (cd == 1.0).float().mean(),
                        "rloo/fraction_format_only": ((cd > 0) & (cd < 1)).float().mean()})
    instructions = torch.tensor([t.get("track") == "instructions" for t in rep_tasks])
    if instructions.any():
        metrics["rloo/reward_instructions"] = rewards[instructions].mean()
    return metrics


class SampleTable:
    """Every `every` steps, a TensorBoard text table of 4 sampled completions with their rewards, picked by its own
    RNG: logging never changes the samples."""

    def __init__(self, logger, every: int, seed: int):
        self.logger, self.every, self.rng, self.steps = logger, every, random.Random(seed), 0

    def log(self, samples: list[dict], rep_tasks: list[dict], rewards) -> None:
        self.steps += 1
        if self.steps % self.every == 1 or self.every == 1:
            picks = self.rng.sample(range(len(samples)), min(4, len(samples)))
            rows = "\n".join(f"| {table_cell(rep_tasks[i]['prompt'][-1]['content'][:80])} | "
                             f"{table_cell(samples[i]['text'][:120])} | {rewards[i]:.2f} |" for i in picks)
            self.logger.text("rloo/samples", "| prompt | completion | reward |\n|---|---|---|\n" + rows, self.steps)


def make_rloo_loss(cfg: Config, tokenizer, reward_fn, reference=None, logger=None):
    """The RLOO step as a loss for the one training loop: sample and score (`sample_and_score`), then the
    leave-one-out advantage and loss = −mean_i A_i · log π(y_i|x) (response tokens only), with the KL penalty
    folded into the reward."""
    rcfg, pad = cfg.rloo, tokenizer.pad_token_id
    table = SampleTable(logger or NullLogger(), rcfg.table_every, rcfg.seed + 1)
    drawn = []      # a step's rollouts, drawn at its start where memory allows wider calls (prepare_step)

    def prepare_step(model, batches):
        """On CUDA with `eval.sampling_memory`: sample every micro-batch of the step in as few calls as memory holds
        (the weights do not change inside a step), instead of one call per micro-batch."""
        drawn.clear()
        tasks = [t for b in batches for t in b["tasks"]]
        per_call = rollout_prompts(model, tokenizer, [t["prompt"] for t in tasks], rcfg.k, rcfg.max_new_tokens,
                                   cfg.eval.sampling_memory)
        if per_call is None or per_call <= rcfg.batch_size:
            return                                   # one micro-batch a call: each samples at its turn, as before
        per_call -= per_call % rcfg.batch_size       # whole micro-batches: fewer widths for free memory to pick
        samples, rep_tasks, rewards = sample_and_score(model, tokenizer, tasks, rcfg, reward_fn, per_call,
                                                       cfg.eval.compiled_sampling)
        at = 0
        for b in batches:
            n = len(b["tasks"]) * rcfg.k
            drawn.append((b["tasks"], samples[at:at + n], rep_tasks[at:at + n], rewards[at:at + n]))
            at += n

    def loss_fn(model, batch):
        if drawn and drawn[0][0] == batch["tasks"]:      # drawn for this very micro-batch at the step's start
            samples, rep_tasks, rewards = drawn.pop(0)[1:]
        else:
            drawn.clear()
            samples, rep_tasks, rewards = sample_and_score(model, tokenizer, batch["tasks"], rcfg, reward_fn,
                                                           compiled=cfg.eval.compiled_sampling)
        if not can_share_prompt(model):
            dev = next(model.parameters()).device
            seqs = {key: v.to(dev) for key, v in collate(sample_rows(samples), pad).items()}
            logps_of = lambda m: sequence_logps(m, seqs)
        else:
            logps_of = lambda m: shared_prompt_logps(m, samples, rcfg.k, pad)
        logps = logps_of(model)
        kl = torch.zeros_like(rewards)
        if reference is not None and rcfg.kl_coef > 0:
            with torch.no_grad():
                kl = (logps.detach() - logps_of(reference)).float().cpu()
        loss_sum = rloo_loss(logps, rewards, rcfg.k, kl, rcfg.kl_coef)
        table.log(samples, rep_tasks, rewards)
        return loss_sum, rollout_metrics(samples, rep_tasks, rewards, kl, rcfg.k)
    loss_fn.prepare_step = prepare_step
    return loss_fn


def rloo_collate(k: int):
    def collate_fn(items):
        return {"tasks": items, "normalizer": torch.tensor(float(len(items) * k))}
    return collate_fn


def instruction_judge(cfg: Config, run_config: dict):
    """The reward model that judges the instruction track (RLOO's and RFT's), as (tokenizer, model) — or None where
    the instruction track has its own verifier or no prompts. Records the judge's weights in `run_config`."""
    rcfg = cfg.rloo
    if not (rcfg.instruction_share > 0 and rcfg.instruction_reward == "reward_model"):
        return None
    folder = out_path("checkpoints", cfg, "reward_model")
    run_config["judge_weights"] = start_fingerprint(folder, "reward_model")
    with main_first():
        rm_tok, rm = load_reward_model(folder)
    return rm_tok, rm.to(device())


def run_rloo(cfg: Config, start: str = "dpo", stage: str = "rloo", log: bool = True,
             stop_after_steps: int | None = None) -> StageResult:
    """RLOO from `start` (the chain: sft_masked → dpo → rloo; name another checkpoint to branch) on a mixture of
    Countdown prompts and instruction prompts (`rl_tasks`), each rewarded by its own track (`make_reward_fn`).
    Under N processes (DDP) each samples its share of a step's prompts with its own seed; a prompt's k samples, its
    rewards and its leave-one-out baseline stay in the process that drew it."""
    refuse_sharded("RLOO")
    opened = open_stage(cfg, "rloo", start, stage)      # k < 2, temperature 0, … fail here, before any model loads
    rcfg, start_dir, run_config = opened.settings, opened.start_dir, opened.run_config
    tokenizer, model = load_tokenizer(start_dir), load_model(start_dir, quant=cfg.model.quant).to(device())
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    disable_dropout(model)      # samples, their log-probs and the reference's: one deterministic function
    reference = None
    if rcfg.kl_coef > 0:        # frozen, no-grad forwards only: bf16 where it runs under bf16 autocast anyway
        reference = load_model(start_dir, dtype=torch.bfloat16 if device().type == "cuda" else torch.float32)
        reference = reference.to(device()).eval().requires_grad_(False)
    judge = instruction_judge(cfg, run_config)
    tasks = rl_tasks(cfg, tokenizer)
    eval_fn = lambda m: {f"eval/{k}": v for k, v in track_scores(m, tokenizer, cfg).items()}
    start_metrics = {f"eval/{k}": v for k, v in start_scores(cfg, start).items()}    # step 0 = the start's weights
    stage_dir = opened.stage_dir
    run_config["tasks"] = dict(collections.Counter(t["track"] for t in tasks))
    with stage_run(cfg, stage, run_config, log) as logger:
        loss_fn = make_rloo_loss(cfg, tokenizer, make_reward_fn(cfg, judge), reference, logger)
        history = train(model, tokenizer, tasks, rcfg, loss_fn, rloo_collate(rcfg.k), stage_dir, eval_fn=eval_fn,
                        logger=logger, run_config=run_config, desc=stage, restart=cfg.restart, watch_loss=False,
                        length_fn=lambda t: len(render_chat(tokenizer, t["prompt"])),
                        stop_after_steps=stop_after_steps, start_metrics=start_metrics)
    return StageResult(model, tokenizer, stage_dir, history, {"tasks": len(tasks)})


def plot_rloo_dynamics(cfg: Config, path, stage: str = "rloo"):
    """What RLOO did step by step, read back from its TensorBoard logs: the reward of each track, the fraction of
    Countdown samples that are correct, the share of groups that teach nothing (all k rewards equal), the KL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = read_tensorboard_scalars(out_path("tensorboard_events", cfg, stage))
    panels = [(["rloo/reward_countdown", "rloo/reward_instructions"], "mean sampled reward (0–1)"),
              (["rloo/fraction_correct", "rloo/fraction_format_only"], "share of Countdown samples"),
              (["rloo/zero_variance_groups"], "share of groups with k equal rewards"),
              (["rloo/kl"], "KL to the start, log π − log π_ref (nats/sample)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (tags, label) in zip(axes, panels):
        for tag in tags:
            if curves.get(tag):
                ax.plot(*zip(*curves[tag]), marker="o" if len(curves[tag]) < 25 else None, ms=3,
                        label=tag.removeprefix("rloo/"))
        ax.set(xlabel="optimizer step", ylabel=label)
        ax.legend(fontsize=7)
    fig.suptitle(f"RLOO, step by step ({stage})")
    return save_figure(fig, path)
