"""Direct Preference Optimization (Rafailov et al. 2023) with the RPO term (Pang et al. 2024): the loss, the
precomputed reference log-probs, held-out preference accuracy and `run_dpo`. Imports: config … preference."""
from __future__ import annotations


import torch.nn.functional as F

from .config import Config, device, out_path
from .data import countdown_tasks, write_jsonl
from .modeling import add_lora, disable_dropout, enable_checkpointing, load_model, load_tokenizer
from .distributed import gather_objects, gather_shares, is_main, process_seed, share
from .training import StageResult, open_stage, stage_run, train, whole_model
from .preference import (balance_tracks, build_pair_dataset, countdown_onpolicy_pairs, pair_collate,
                         pair_length, pair_logps, pair_sequence_logps, preference_data)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float,
             loss_type: str = "sigmoid"):
    """With h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)), the log-ratio margin:
        "sigmoid" (DPO, Rafailov et al. 2023):  L = −log σ(β · h)
        "ipo"     (IPO, Azar et al. 2023):      L = (h − 1/(2β))²   — a squared loss that stops pushing once the
                  margin reaches 1/(2β), where DPO's keeps pushing it towards infinity (overfitting pairs it wins)
    Returns (mean loss, chosen_rewards, rejected_rewards) with rewards = β · (log π − log π_ref).
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    elif loss_type == "ipo":
        loss = ((chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2).mean()
    else:
        raise ValueError(f'dpo loss_type {loss_type!r}: "sigmoid" or "ipo"')
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def add_reference_logps(model, pairs: list[dict], pad_token_id: int, disable_adapters: bool = False) -> None:
    """Precompute the reference model's log-probs once, so DPO training holds a single model in memory.

    The reference is the model as it is now (the SFT checkpoint); with LoRA it can instead be the same model with
    its adapters disabled — the two give the same numbers while the adapters are untrained.
    Under N processes each computes its share of the pairs (`share`) and all of them get every pair's numbers.
    A pair dict listed more than once (`balance_tracks` repeats the Countdown pairs) is computed once.
    """
    import contextlib
    distinct = list({id(pair): pair for pair in pairs}.values())
    context = model.disable_adapter() if disable_adapters else contextlib.nullcontext()
    with context:
        chosen, rejected = pair_logps(model, share(distinct), pad_token_id)
    both = gather_shares(list(zip(chosen, rejected)), len(distinct))
    for pair, (c, r) in zip(distinct, both):
        pair["ref_chosen_logps"], pair["ref_rejected_logps"] = c, r


def make_dpo_loss(beta: float, sft_weight: float = 0.0, loss_type: str = "sigmoid"):
    """DPO (or IPO: `loss_type`) as a loss for the one loop. sft_weight > 0 adds α · (per-token NLL of the chosen
    response) — the RPO variant (Pang et al. 2024), which stops DPO from pushing the chosen answer's likelihood down
    with the rest. It imitates every chosen answer, so on-policy pairs keep only chosen answers that are right
    (`onpolicy_min_chosen`)."""
    def loss_fn(model, batch):
        n = batch["ref_chosen_logps"].shape[0]
        logps = pair_sequence_logps(model, batch)
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:n], logps[n:], batch["ref_chosen_logps"],
                                                          batch["ref_rejected_logps"], beta, loss_type)
        if sft_weight > 0:
            chosen_tokens = (batch["labels"][:n, 1:] != -100).sum(-1).clamp(min=1)
            loss = loss + sft_weight * (-logps[:n] / chosen_tokens).mean()
        margins = chosen_rewards - rejected_rewards
        return loss * n, {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                          "rewards/margins": margins.mean(), "rewards/accuracies": (margins > 0).float().mean(),
                          "logps/chosen": logps[:n].detach().mean(), "logps/rejected": logps[n:].detach().mean()}
    return loss_fn


def logp_wins(model, pairs: list[dict], pad_token_id: int) -> tuple[list[bool], list[float], list[float]]:
    """Per pair, whether the model's own log-probs rank chosen above rejected; and both log-probs."""
    chosen, rejected = pair_logps(model, pairs, pad_token_id)
    return [c > r for c, r in zip(chosen, rejected)], chosen, rejected


def preference_accuracy(model, pairs: list[dict], pad_token_id: int) -> dict:
    """Held-out ranking of chosen over rejected: by the policy's own log-probs, and by the implicit DPO reward
    β(log π − log π_ref) when reference log-probs are attached (0 margin = tie = not ranked above)."""
    wins, chosen, rejected = logp_wins(model, pairs, pad_token_id)
    result = {"logp_accuracy": sum(wins) / len(pairs)}
    if pairs and "ref_chosen_logps" in pairs[0]:
        wins = [(c - p["ref_chosen_logps"]) > (r - p["ref_rejected_logps"]) for c, r, p in zip(chosen, rejected, pairs)]
        result["reward_accuracy"] = sum(wins) / len(pairs)
    return result


def run_dpo(cfg: Config, start: str = "sft_masked", stage: str = "dpo", log: bool = True,
            stop_after_steps: int | None = None, pairs: list[dict] | None = None) -> StageResult:
    """DPO from `start` (the chain's SFT model; name another checkpoint to branch), which is also the reference,
    precomputed; `pairs` replaces the preference set and the on-policy pairs (another round's, `iterate`); a
    StageResult (details: preference accuracy before and after, the pairs it gained and lost, the
    on-policy pairs' counts). Under N processes each samples the on-policy pairs of its
    share of the prompts (its own seed) and computes the reference log-probs of its share of the pairs; every
    process then holds all of them."""
    opened = open_stage(cfg, "dpo", start, stage)
    dcfg, start_dir = opened.settings, opened.start_dir
    tokenizer = load_tokenizer(start_dir)
    model = load_model(start_dir, quant=cfg.model.quant).to(device())
    fresh_adapters = False
    if cfg.model.lora is not None and not hasattr(model, "disable_adapter"):
        model, fresh_adapters = add_lora(model, cfg.model.lora), True
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    disable_dropout(model)      # the loss's log-probs come from the same function as the reference's
    pad = tokenizer.pad_token_id
    rows = preference_data(cfg, "train") if pairs is None else pairs
    onpolicy_stats = {}
    if dcfg.onpolicy_countdown_prompts and pairs is None:
        tasks = countdown_tasks(cfg, "train", dcfg.onpolicy_countdown_prompts)
        parts = gather_objects(countdown_onpolicy_pairs(model, tokenizer, share(tasks), cfg, process_seed(dcfg.seed)))
        onpolicy = [pair for found, _ in parts for pair in found]
        onpolicy_stats = {key: value if key == "samples_per_prompt" else sum(stats[key] for _, stats in parts)
                          for key, value in parts[0][1].items()}
        if is_main():
            write_jsonl(out_path("outputs", cfg, stage, "countdown_onpolicy_pairs.jsonl"), onpolicy)
        rows = rows + onpolicy
    train_pairs, skips = build_pair_dataset(tokenizer, rows, dcfg.max_length, "dpo train")
    train_pairs = balance_tracks(train_pairs, dcfg.countdown_share)
    test_pairs, test_skips = build_pair_dataset(tokenizer, preference_data(cfg, "test"), dcfg.max_length, "dpo test")
    print(skips.report(), "|", test_skips.report(), "| on-policy Countdown:", onpolicy_stats)
    # adapters off = the reference only for adapters created here; a LoRA SFT checkpoint's trained adapters
    # ARE the SFT model, so then the model as loaded is the reference
    use_adapters = dcfg.reference_from_disabled_adapters and fresh_adapters
    add_reference_logps(model, train_pairs, pad, disable_adapters=use_adapters)
    add_reference_logps(model, test_pairs, pad, disable_adapters=use_adapters)
    before, before_wins = preference_accuracy(model, test_pairs, pad), logp_wins(model, test_pairs, pad)[0]
    stage_dir = opened.stage_dir
    run_config = {**opened.run_config, "train_pairs": len(train_pairs), "dropped": dict(skips.reasons),
                  "onpolicy": onpolicy_stats}
    eval_fn = lambda m: {f"eval/preference_{k}": v for k, v in preference_accuracy(m, test_pairs, pad).items()}
    with stage_run(cfg, stage, run_config, log) as logger:
        history = train(model, tokenizer, train_pairs, dcfg, make_dpo_loss(dcfg.beta, dcfg.sft_weight, dcfg.loss_type),
                        pair_collate(pad), stage_dir, eval_fn=eval_fn, logger=logger, run_config=run_config,
                        desc=stage, length_fn=pair_length, restart=cfg.restart, stop_after_steps=stop_after_steps)
    model = whole_model(model, stage_dir, lambda d: load_model(d).to(device()))
    after_wins = logp_wins(model, test_pairs, pad)[0]       # the same held-out pairs: a paired verdict
    return StageResult(model, tokenizer, stage_dir, history, {
        "before": before, "after": preference_accuracy(model, test_pairs, pad), "onpolicy": onpolicy_stats,
        "pairs_gained": sum(a and not b for a, b in zip(after_wins, before_wins)),
        "pairs_lost": sum(b and not a for a, b in zip(after_wins, before_wins)), "dropped": skips.total})
