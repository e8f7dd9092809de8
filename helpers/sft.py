"""Supervised fine-tuning (and the tiny base model's pre-training, which is SFT with every token trained): the
loss, held-out loss, the SFT mixture of the profile, and `run_sft`. Imports: config … training (lower modules)."""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
from pathlib import Path

import torch

from .config import Config, check_config, config_dict, dataset_name, device, out_path, replace_config, seed_everything
from .config_file import config_yaml
from .data import load_split
from .modeling import (build_tiny_model, enable_checkpointing, load_model, load_tokenizer, model_device,
                       train_tiny_tokenizer)
from .formatting import build_lm_example, build_sft_dataset, render_chat_plain
from .batching import NO_GRAD_TOKENS, collate, score_in_batches, to_device
from .logger import NullLogger, TensorBoardLogger
from .checkpoints import save_finished_model
from .training import StageResult, open_stage, stage_run, train, whole_model
from .logprobs import trained_weights, weighted_token_logps


def sft_loss(model, batch):
    """Σ_t w_t · −log p(label_{t+1} | x_≤t): labels are unshifted (HF convention), so shift here.

    w_t = 1 on trained tokens and 0 on -100 labels, or the per-token `loss_weights` for 0 < weight < 1.
    The loop divides by Σ w_t over the whole optimizer step (per-token normalisation). Only positions with
    w_t > 0 are projected onto the vocabulary, in chunks (`weighted_token_logps`): masked SFT never computes
    the prompt's logits.
    """
    logps, _, weights = weighted_token_logps(model, batch, trained_weights(batch))
    return -(logps * weights).sum(), {}


def sft_collate(pad_token_id: int, normalization: str = "trained_tokens"):
    """Pad a batch and count its loss units: the trained tokens (Σ w_t), or — normalization="response_tokens" — the
    response tokens only, so whole-sequence loss adds the prompt's gradient without thinning the response's."""
    def collate_fn(examples):
        batch = collate(examples, pad_token_id)
        if normalization == "response_tokens" and "response" in batch:
            batch["normalizer"] = batch["response"][:, 1:].sum().float()
        else:
            batch["normalizer"] = trained_weights(batch).sum()
        return batch
    return collate_fn


def example_losses(model, examples: list[dict], pad_token_id: int,
                   token_budget: int = NO_GRAD_TOKENS) -> list[tuple[float, float]]:
    """(summed loss, trained tokens) of each example, in order (the mask inside the examples decides which tokens),
    in no-grad batches of at most `token_budget` tokens."""
    def per_example(model, rows):
        batch = to_device(collate(rows, pad_token_id), model_device(model))
        logps, index, weights = weighted_token_logps(model, batch, trained_weights(batch))
        losses = torch.zeros(len(rows), device=logps.device).index_add(0, index, -logps * weights)
        return list(zip(losses.tolist(), trained_weights(batch).sum(-1).tolist()))
    return score_in_batches(model, examples, [len(e["input_ids"]) for e in examples], per_example, token_budget)


def evaluate_loss(model, examples: list[dict], pad_token_id: int, token_budget: int = NO_GRAD_TOKENS) -> float:
    """Mean loss per trained token over `examples`."""
    sums = example_losses(model, examples, pad_token_id, token_budget)
    return sum(loss for loss, _ in sums) / max(sum(units for _, units in sums), 1.0)


def build_initial_model(cfg: Config, log: bool = True, stage: str = "initial") -> Path:
    """checkpoints/<profile>/initial (or `stage`) — the untouched base model every stage starts from, saved with
    checksums so that every later stage can record exactly which weights it started from.

    tiny world: train the tokenizer on the tiny world, build a Qwen2 model, pre-train it briefly on plain text
    (facts of the world, never the chat format, never test prompts). Otherwise save `cfg.model.name`
    (Qwen/Qwen2.5-0.5B, or qwen_smoke's local checkpoint) as it is, in its stored dtype.
    """
    target = out_path("checkpoints", cfg, stage)
    if cfg.model.name != "tiny":
        if not cfg.model.name:
            raise ValueError(f"profile {cfg.profile!r} needs a model: set QWEN_MODEL_DIR to a Qwen2.5-architecture "
                             "checkpoint (build one with ../shared/tools/get-real-qwen.sh DIR)")
        tokenizer = load_tokenizer(cfg.model.name)
        return save_finished_model(load_model(cfg.model.name, dtype=None), tokenizer, target,
                                   extra={"run_config.json": config_dict(cfg)})
    check_config(cfg)
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
    run_dir = target.with_name(target.name + "_pretrain_run")
    try:
        train(model, tokenizer, examples[len(held_out):], cfg.pretrain, sft_loss, sft_collate(tokenizer.pad_token_id),
              run_dir, logger=logger, run_config=run_config, desc="pretrain", restart=True,
              uniform_loss=math.log(len(tokenizer)),
              eval_fn=lambda m: {"eval/loss": evaluate_loss(m, held_out, tokenizer.pad_token_id)})
    finally:
        logger.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    return save_finished_model(model, tokenizer, target, extra={"run_config.json": run_config,
                                                                "config.yml": config_yaml(cfg, commented=False)})


def sft_mixture(cfg: Config, split: str = "train") -> list[dict]:
    """The SFT conversations of the profile: instruction following + the Countdown WarmStart set.

    tiny: the tiny world's instruction tasks + solver-written WarmStart completions.
    qwen: smol-smoltalk + cog_behav_all_strategies (the course project's two tracks).
    """
    instructions = load_split(cfg, dataset_name(cfg, "instructions"), split)
    if split != "train":
        return instructions
    instructions = instructions[:cfg.sft.train_conversations]           # None: all of them
    warmstart = load_split(cfg, "warmstart", "train")
    share = cfg.sft.countdown_share
    n_warm = min(len(warmstart), int(round(len(instructions) * share / max(1e-9, 1 - share))))
    rows = instructions + warmstart[:n_warm]
    random.Random(cfg.data.seed).shuffle(rows)
    return rows


def run_sft(cfg: Config, stage: str = "sft_masked", prompt_loss_weight: float | None = None,
            seed: int | None = None, max_steps: int | None = None, log: bool = True, quiet: bool = False,
            dataset: tuple | None = None, stop_after_steps: int | None = None, start: str = "initial") -> StageResult:
    """Train one SFT run from checkpoints/<profile>/initial (or `start`); a StageResult (details: rows dropped).

    The masked and unmasked runs call this with identical settings except prompt_loss_weight. `dataset` =
    `build_sft_dataset`'s (examples, skips) for this weight, when the caller has it already (the sweep's seeds).
    `stop_after_steps` stops early, resumable (`train`).
    """
    weight = cfg.sft.prompt_loss_weight if prompt_loss_weight is None else prompt_loss_weight
    train_cfg = replace_config(cfg.sft, prompt_loss_weight=weight,
                               seed=cfg.sft.seed if seed is None else seed,
                               max_steps=cfg.sft.max_steps if max_steps is None else max_steps)
    opened = open_stage(cfg, "sft", start, stage, train_cfg)
    tokenizer = load_tokenizer(opened.start_dir)
    model = load_model(opened.start_dir, lora_cfg=cfg.model.lora, quant=cfg.model.quant).to(device())
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    examples, skips = dataset or build_sft_dataset(tokenizer, sft_mixture(cfg), train_cfg.max_length, weight)
    if not quiet:
        print(skips.report())
    held = heldout_loss_examples(cfg, tokenizer)
    pad = tokenizer.pad_token_id
    eval_fn = lambda m: {"eval/response_loss": evaluate_loss(m, held["response"], pad),
                         "eval/sequence_loss": evaluate_loss(m, held["sequence"], pad)}
    run_config = {**opened.run_config, "model": dataclasses.asdict(cfg.model), "data": dataclasses.asdict(cfg.data),
                  "train_examples": len(examples), "dropped": dict(skips.reasons)}
    with stage_run(cfg, stage, run_config, log) as logger:
        history = train(model, tokenizer, examples, train_cfg, sft_loss,
                        sft_collate(pad, train_cfg.loss_normalization), opened.stage_dir, eval_fn=eval_fn,
                        logger=logger, run_config=run_config, desc=stage, restart=cfg.restart,
                        uniform_loss=math.log(len(tokenizer)), stop_after_steps=stop_after_steps)
    model = whole_model(model, opened.stage_dir, lambda d: load_model(d).to(device()))
    return StageResult(model, tokenizer, opened.stage_dir, history, {"dropped": skips.total})


def heldout_loss_examples(cfg: Config, tokenizer) -> dict[str, list[dict]]:
    """The same held-out conversations, masked (response-only loss) and unmasked (whole-sequence loss)."""
    rows = sft_mixture(cfg, "test")[:cfg.eval.loss_rows]
    max_length = cfg.sft.max_length
    return {"response": build_sft_dataset(tokenizer, rows, max_length, 0.0)[0],
            "sequence": build_sft_dataset(tokenizer, rows, max_length, 1.0)[0]}


SFT_STAGES = {"sft_masked": 0.0, "sft_unmasked": 1.0}
