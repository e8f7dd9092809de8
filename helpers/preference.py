"""Preference pairs for DPO and the reward model: tokenized with the SFT mask, batched chosen-then-rejected, scored
by log-probability, and on-policy Countdown pairs labelled by the rule-based reward.
Imports: config … logprobs, generation."""
from __future__ import annotations

import torch

from .config import Config, dataset_name
from .countdown import countdown_reward
from .data import SkipCounter, load_split, objects, prompt_problem
from .modeling import model_device
from .formatting import build_sft_example
from .batching import NO_GRAD_TOKENS, collate, score_in_batches, to_device
from .logprobs import can_share_prompt, pair_samples, sequence_logps, shared_prompt_logps
from .generation import generate_eval


def pair_sequence_logps(model, batch) -> torch.Tensor:
    """`sequence_logps` of a pair batch (chosen rows, then rejected rows), each pair's prompt run once."""
    if not can_share_prompt(model):
        return sequence_logps(model, batch)
    logps = shared_prompt_logps(model, pair_samples(batch["pairs"]), 2, batch["pad_token_id"])
    return torch.cat([logps[0::2], logps[1::2]])


def build_pair_dataset(tokenizer, pairs, max_length: int, name: str = "pairs") -> tuple[list[dict], SkipCounter]:
    """Tokenize preference pairs (prompt messages, chosen text, rejected text) with the SFT mask.

    Dropped and counted: a row that is not an object, chosen identical to rejected, an empty or missing response,
    a prompt that is not a list of messages ending with the user's turn, or a response truncated away.
    """
    skips, out = SkipCounter(name), []
    for i, pair in objects(pairs, skips):
        prompt, chosen, rejected = pair.get("prompt"), pair.get("chosen"), pair.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen.strip() or not rejected.strip():
            skips.skip(i, "empty or missing response")
            continue
        if chosen.strip() == rejected.strip():
            skips.skip(i, "chosen identical to rejected")
            continue
        problem = prompt_problem(prompt)
        if problem:
            skips.skip(i, "empty or malformed prompt", problem)
            continue
        c = build_sft_example(tokenizer, prompt + [{"role": "assistant", "content": chosen}], max_length)
        r = build_sft_example(tokenizer, prompt + [{"role": "assistant", "content": rejected}], max_length)
        if c is None or r is None:
            skips.skip(i, f"response truncated away at {max_length} tokens")
            continue
        out.append({"chosen": c, "rejected": r, "source": pair.get("source")})
    return out, skips


def pair_length(pair: dict) -> int:
    """Tokens of a tokenized pair (chosen + rejected): what length-grouped batching sorts pairs by."""
    return len(pair["chosen"]["input_ids"]) + len(pair["rejected"]["input_ids"])


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


def pair_logps(model, pairs: list[dict], pad_token_id: int, token_budget: int = NO_GRAD_TOKENS) -> tuple[list, list]:
    """(log π(y_w|x), log π(y_l|x)) for every pair, in no-grad batches of at most `token_budget` tokens."""
    def per_pair(model, rows):
        logps = pair_sequence_logps(model, to_device(pair_collate(pad_token_id)(rows), model_device(model)))
        return list(zip(logps[:len(rows)].tolist(), logps[len(rows):].tolist()))
    both = score_in_batches(model, pairs, [pair_length(p) for p in pairs], per_pair, token_budget)
    return [c for c, _ in both], [r for _, r in both]


def countdown_onpolicy_pairs(model, tokenizer, tasks: list[dict], cfg: Config, seed: int) -> tuple[list, dict]:
    """The course project's on-policy pairs: 2 samples per Countdown prompt (tasks from `countdown_tasks`) from the
    SFT model (temperature > 0), labelled by the rule-based reward; ties dropped (and counted)."""
    prompts = [t["prompt"] for t in tasks]
    samples = generate_eval(model, tokenizer, prompts * 2, cfg.eval, temperature=cfg.dpo.sample_temperature,
                            top_p=1.0, seed=seed)
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
    return load_split(cfg, dataset_name(cfg, "preferences"), split)
