"""REINFORCE Leave-One-Out (Ahmadian et al. 2024): k samples per prompt, the leave-one-out baseline, a rule-based
(Countdown) or reward-model reward with a KL penalty, as a loss for the one training loop.
Imports: config … scoring, reward_model."""
from __future__ import annotations

import dataclasses
import json
import random

import torch

from .config import (Config, check_config, dataset_name, device, out_path,
                     replace_config, replace_sections, seed_everything)
from .countdown import countdown_reward
from .data import countdown_tasks, load_split
from .modeling import disable_dropout, load_model, load_tokenizer
from .formatting import fit_prompts, render_chat
from .batching import collate
from .logger import NullLogger
from .training import stage_logger, train
from .logprobs import can_share_prompt, sequence_logps, shared_prompt_logps
from .generation import generate_eval, sample_completions
from .scoring import countdown_accuracy, instruction_test_rows
from .reward_model import load_reward_model, score_responses


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


def run_rloo(cfg: Config, track: str = "countdown", start: str = "sft_masked", stage: str | None = None,
             log: bool = True) -> dict:
    """RLOO from an SFT checkpoint. track="countdown": rule-based reward on Countdown prompts;
    track="instructions": the reward model on instruction prompts."""
    check_config(cfg)          # k < 2, temperature 0, … fail here, before any model is loaded
    rcfg = cfg.rloo if track == "countdown" else replace_config(cfg.rloo, max_steps=cfg.rloo.instruction_steps)
    stage = stage or ("rloo" if track == "countdown" else "rloo_instructions")
    seed_everything(rcfg.seed)
    start_dir = out_path("checkpoints", cfg, start)
    tokenizer, model = load_tokenizer(start_dir), load_model(start_dir).to(device())
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    disable_dropout(model)      # samples, their log-probs and the reference's: one deterministic function
    reference = None
    if rcfg.kl_coef > 0:        # frozen, no-grad forwards only: bf16 where it runs under bf16 autocast anyway
        reference = load_model(start_dir, dtype=torch.bfloat16 if device().type == "cuda" else torch.float32)
        reference = reference.to(device()).eval().requires_grad_(False)
    if track == "countdown":
        tasks = countdown_tasks(cfg, "train")
        reward_fn = countdown_reward_fn
        eval_fn = lambda m: {f"eval/{k}": v for k, v in countdown_accuracy(m, tokenizer, cfg).items()}
    else:
        rm_tok, rm = load_reward_model(out_path("checkpoints", cfg, "reward_model"))
        reward_fn = reward_model_fn(rm.to(device()), rm_tok)
        name = dataset_name(cfg, "instructions")
        prompts = [r["messages"][:-1] for r in load_split(cfg, name, "train")]
        fits, too_long = fit_prompts(tokenizer, prompts, cfg.data.max_prompt_tokens)
        print(f"instruction prompts: {too_long} of {len(prompts)} longer than {cfg.data.max_prompt_tokens} "
              "tokens left out")
        tasks = [{"prompt": p} for p, ok in zip(prompts, fits) if ok]
        held = [r["messages"][:-1] for r in instruction_test_rows(cfg, tokenizer, 64)]
        eval_fn = lambda m: {"eval/reward_model_score": sum(reward_fn(held, generate_eval(m, tokenizer, held, cfg.eval),
                                                                      None)) / len(held)}
    stage_dir = out_path("checkpoints", cfg, stage)
    run_config = {"stage": stage, "profile": cfg.profile, "track": track, "start": start,
                  "rloo": dataclasses.asdict(rcfg)}
    logger = stage_logger(cfg, stage, run_config, log)
    loss_fn = make_rloo_loss(replace_sections(cfg, rloo=rcfg), tokenizer, reward_fn, reference, logger)
    history = train(model, tokenizer, tasks, rcfg, loss_fn, rloo_collate(rcfg.k), stage_dir, eval_fn=eval_fn,
                    logger=logger, run_config=run_config, desc=stage, restart=cfg.restart, watch_loss=False,
                    length_fn=lambda t: len(render_chat(tokenizer, t["prompt"])))   # prompts of similar length
    logger.close()
    return {"history": history, "dir": stage_dir, "model": model, "tokenizer": tokenizer}
