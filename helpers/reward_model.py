"""A Bradley–Terry reward model: a scalar head on the SFT model trained on preference pairs, its accuracy, and
scoring of (prompt, response) pairs for RLOO and best-of-n. Imports: config … preference."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Config, ConfigError, device, output_root
from .modeling import enable_checkpointing, load_model, load_tokenizer, model_device, save_model
from .formatting import encode_chat
from .batching import NO_GRAD_TOKENS, collate, score_in_batches, to_device
from .distributed import main_first
from .training import StageResult, open_stage, stage_run, train, whole_model
from .logprobs import can_share_prompt, pair_samples, selected_logps, shared_prompt_forward
from .preference import build_pair_dataset, pair_collate, pair_length, preference_data


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


class TiedHead(torch.nn.Module):
    """The language-model head of a model with tied embeddings, hidden @ Eᵀ: a sequence-classification model keeps
    the embedding matrix E but drops the head, and this gives it back for the GRM term."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self.embedding = embedding

    @property
    def weight(self):
        return self.embedding.weight

    def forward(self, hidden):
        return hidden @ self.embedding.weight.T


def scores_and_chosen_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder pass for a pair batch: (scores of the chosen rows then the rejected rows, Σ log p of each chosen
    response's trained tokens through the tied embeddings, the number of those tokens) — each pair's prompt once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.model, TiedHead(base.get_input_embeddings())
    n = int(batch["normalizer"])
    if can_share_prompt(model):
        samples = pair_samples(batch["pairs"])
        prompt_out, out, ids, mask = shared_prompt_forward(decoder, [s["prompt_ids"] for s in samples[::2]],
                                                           [s["response_ids"] for s in samples], batch["pad_token_id"])
        order = torch.cat([torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)]).to(ids.device)
        hidden = torch.cat([prompt_out.last_hidden_state[:, -1:].repeat_interleave(2, 0),
                            out.last_hidden_state], 1)[order]          # position t predicts token t of the response
        ids, mask = ids[order], mask[order]
        trained = torch.tensor([s["trained"] + [0] * (ids.shape[1] - len(s["trained"])) for s in samples],
                               device=ids.device)[order].bool() & mask.bool()
        last = hidden[torch.arange(2 * n), mask.sum(1)]                # the last response token's own state
        predicting, targets = hidden[:, :-1], ids
    else:                       # gradient checkpointing (no KV cache in training): the full sequences
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).last_hidden_state
        last = hidden[torch.arange(2 * n), batch["attention_mask"].sum(1) - 1]
        predicting, targets = hidden[:, :-1], batch["input_ids"][:, 1:]
        trained = batch["labels"][:, 1:] != -100
    scores = base.score(last)[:, 0].float()
    chosen = trained[:n]
    logps = selected_logps(head, predicting[:n][chosen], targets[:n][chosen])
    rows = chosen.nonzero()[:, 0]
    per_pair = torch.zeros(n, device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)
    return scores, per_pair, chosen.sum(1).clamp(min=1)


def make_reward_loss(nll_weight: float = 0.0):
    """The Bradley–Terry loss, plus — nll_weight = α > 0 — α × the chosen response's NLL per token through the tied
    embeddings: GRM (Yang et al. 2024), which keeps the hidden states able to generate the good answer. Here that is
    what lets the reward model rank single-digit sums: plainly trained, it ranks them at chance (docs/LOG.md)."""
    if nll_weight == 0:
        return bradley_terry_loss

    def loss_fn(model, batch):
        n = int(batch["normalizer"])
        scores, chosen_logps, tokens = scores_and_chosen_logps(model, batch)
        margins = scores[:n] - scores[n:]
        nll = -chosen_logps / tokens
        loss = -F.logsigmoid(margins) + nll_weight * nll
        return loss.sum(), {"reward_model/accuracy": (margins > 0).float().mean(),
                            "reward_model/margin": margins.detach().mean(),
                            "reward_model/chosen_nll": nll.detach().mean()}
    return loss_fn


def reward_model_wins(model, pairs: list[dict], pad_token_id: int, token_budget: int = NO_GRAD_TOKENS) -> list[bool]:
    """For every pair: is r(x, y_w) > r(x, y_l)? (a tie counts as wrong)"""
    def per_pair(model, rows):
        scores = pair_reward_scores(model, to_device(pair_collate(pad_token_id)(rows), model_device(model)))
        return (scores[:len(rows)] > scores[len(rows):]).tolist()
    return score_in_batches(model, pairs, [pair_length(p) for p in pairs], per_pair, token_budget)


def reward_model_accuracy(model, pairs: list[dict], pad_token_id: int, token_budget: int = NO_GRAD_TOKENS) -> float:
    """Held-out pairwise accuracy: the fraction of pairs whose chosen response scores higher."""
    return sum(reward_model_wins(model, pairs, pad_token_id, token_budget)) / max(1, len(pairs))


def load_model_config(folder: Path) -> dict:
    """config.json of a model folder (of its base model, for a LoRA adapter folder), or {}."""
    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
        folder = Path(base)
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def merged_copy_dir(adapter_dir: Path) -> Path:
    """<OUTPUT_DIR>/cache/merged/<name>-<fingerprint>: never beside a folder we do not own (a judge's), and a new
    copy whenever the adapter's files change (a retrained stage is not served from a stale merge)."""
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in adapter_dir.iterdir() if p.is_file())
    key = hashlib.sha256(json.dumps([str(adapter_dir.resolve()), stats]).encode()).hexdigest()[:12]
    return output_root() / "cache" / "merged" / f"{adapter_dir.name}-{key}"


def load_reward_model(path):
    """A sequence-classification model (scalar head) from a full model dir; a LoRA SFT dir is merged first."""
    from transformers import AutoModelForSequenceClassification
    path = Path(str(path))
    if (path / "adapter_config.json").exists():      # e.g. qwen's LoRA SFT checkpoint: merged once, into the cache
        merged = merged_copy_dir(path)
        if not (merged / "config.json").exists():
            save_model(load_model(path), merged, load_tokenizer(path), merge=True)
        path = merged
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id      # the head reads the last non-padding token
    return tokenizer, model


def score_responses(reward_model, tokenizer, prompts, responses, token_budget: int = NO_GRAD_TOKENS) -> list[float]:
    """Reward-model scores of (prompt, response) pairs — for RLOO's instruction track, best-of-n and win rate."""
    ids = [encode_chat(tokenizer, p + [{"role": "assistant", "content": r}])[0] for p, r in zip(prompts, responses)]
    rows = [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids]

    def per_row(model, batch_rows):
        return reward_scores(model, to_device(collate(batch_rows, tokenizer.pad_token_id),
                                              model_device(model))).tolist()
    return score_in_batches(reward_model, rows, list(map(len, ids)), per_row, token_budget)


def run_reward_model(cfg: Config, start: str = "sft_masked", stage: str = "reward_model", log: bool = True,
                     stop_after_steps: int | None = None) -> StageResult:
    """The Bradley–Terry reward model from the SFT checkpoint (fp32 master weights, every weight trained); a
    StageResult (details: held-out pairwise accuracy, overall and by task family)."""
    opened = open_stage(cfg, "reward", start, stage)
    rcfg = opened.settings
    if rcfg.nll_weight > 0 and not load_model_config(opened.start_dir).get("tie_word_embeddings"):
        raise ConfigError(f"RewardConfig.nll_weight = {rcfg.nll_weight}: the GRM term needs a model whose head is tied "
                          "to its embeddings (set it to 0 for this model)")
    with main_first():      # a LoRA start is merged into the cache once, by the main process
        tokenizer, model = load_reward_model(opened.start_dir)
    model.to(device())
    if cfg.model.gradient_checkpointing:       # qwen: 8 rows × 1,024 tokens of a full fine-tune need it on 24 GB
        enable_checkpointing(model)
    pad = tokenizer.pad_token_id
    train_pairs, skips = build_pair_dataset(tokenizer, preference_data(cfg, "train"), rcfg.max_length, "rm train")
    test_pairs, _ = build_pair_dataset(tokenizer, preference_data(cfg, "test"), rcfg.max_length, "rm test")
    stage_dir = opened.stage_dir
    run_config = {**opened.run_config, "train_pairs": len(train_pairs), "dropped": dict(skips.reasons)}
    with stage_run(cfg, stage, run_config, log) as logger:
        history = train(model, tokenizer, train_pairs, rcfg, make_reward_loss(rcfg.nll_weight), pair_collate(pad),
                        stage_dir, length_fn=pair_length,
                        eval_fn=lambda m: {"eval/pairwise_accuracy": reward_model_accuracy(m, test_pairs, pad)},
                        logger=logger, run_config=run_config, desc=stage, restart=cfg.restart,
                        stop_after_steps=stop_after_steps)
    model = whole_model(model, stage_dir, lambda d: load_reward_model(d)[1].to(device()))
    wins, by_source = reward_model_wins(model, test_pairs, pad), {}
    for pair, win in zip(test_pairs, wins):
        by_source.setdefault(pair["source"], []).append(win)
    return StageResult(model, tokenizer, stage_dir, history, {
        "accuracy": sum(wins) / max(1, len(wins)),
        "accuracy_by_source": {source: sum(w) / len(w) for source, w in sorted(by_source.items(), key=str)}})
