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
    """The course project's on-policy pairs: `cfg.dpo.onpolicy_samples` samples per Countdown prompt (tasks from
    `countdown_tasks`) from the model DPO starts from (temperature > 0), scored by the rule-based reward; the best
    is chosen, the worst rejected (the first of each among equals); prompts whose samples all score alike are
    dropped, and so are those whose best sample scores below `cfg.dpo.onpolicy_min_chosen` (both counted): the
    chosen answer is imitated too (the RPO term), so it must be right. More samples per prompt: more prompts with a
    correct and a wrong answer."""
    n, min_chosen = cfg.dpo.onpolicy_samples, cfg.dpo.onpolicy_min_chosen
    prompts = [t["prompt"] for t in tasks]
    flat = generate_eval(model, tokenizer, [p for p in prompts for _ in range(n)], cfg.eval,
                         temperature=cfg.dpo.sample_temperature, top_p=1.0, seed=seed)
    pairs, ties, unsolved = [], 0, 0
    for i, (task, prompt) in enumerate(zip(tasks, prompts)):
        samples = flat[i * n:(i + 1) * n]
        rewards = [countdown_reward(s, task["target"], task["nums"]) for s in samples]
        best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
        if rewards[best] == rewards[worst]:
            ties += 1
            continue
        if rewards[best] < min_chosen:
            unsolved += 1
            continue
        pairs.append({"prompt": prompt, "chosen": samples[best], "rejected": samples[worst],
                      "source": "countdown/on-policy", "reward_chosen": rewards[best],
                      "reward_rejected": rewards[worst]})
    return pairs, {"prompts": len(tasks), "samples_per_prompt": n, "pairs": len(pairs), "ties_dropped": ties,
                   "unsolved_dropped": unsolved}


def balance_tracks(pairs: list[dict], share: float) -> list[dict]:
    """The pairs with the Countdown ones repeated (cycled) until they make `share` of the list — a per-track balance,
    so a few hundred Countdown pairs are not drowned by thousands of instruction pairs."""
    countdown = [p for p in pairs if str(p.get("source", "")).startswith("countdown")]
    others = [p for p in pairs if not str(p.get("source", "")).startswith("countdown")]
    if not countdown or share <= 0:
        return pairs
    wanted = max(len(countdown), round(len(others) * share / (1 - share)))
    return others + [countdown[i % len(countdown)] for i in range(wanted)]


def preference_data(cfg: Config, split: str) -> list[dict]:
    return load_split(cfg, dataset_name(cfg, "preferences"), split)
