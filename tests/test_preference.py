"""Preference pairs: dropped rows are counted, the SFT mask is kept, one prompt run per pair equals full rows."""
import torch

from helpers import logprobs, modeling, preference


def test_pair_dropping_is_counted(preference_world):
    _, tokenizer, _ = preference_world
    user = [{"role": "user", "content": "What is 2 + 3?"}]
    rows = [{"prompt": user, "chosen": "5", "rejected": "6"},
            {"prompt": user, "chosen": "5", "rejected": "5"},
            {"prompt": user, "chosen": "", "rejected": "6"},
            {"prompt": [{"role": "user", "content": "  "}], "chosen": "5", "rejected": "6"},
            {"prompt": user, "chosen": "5", "rejected": None}]
    pairs, skips = preference.build_pair_dataset(tokenizer, rows, 64)
    assert len(pairs) == 1 and skips.total == 4
    assert skips.reasons["chosen identical to rejected"] == 1
    assert skips.reasons["empty or missing response"] == 2
    assert skips.reasons["empty or malformed prompt"] == 1
    # chosen and rejected carry the SFT mask: only the answer and <|im_end|> are trained
    chosen = pairs[0]["chosen"]
    trained = [t for t, label in zip(chosen["input_ids"], chosen["labels"]) if label != -100]
    assert tokenizer.decode(trained) == "5<|im_end|>"


def test_pair_prompt_run_once_gives_full_sequence_logps_and_gradients(preference_world, shared_prompt_pairs):
    """DPO runs each pair's prompt once; log π(y|x) and its gradient must equal the full sequences'."""
    cfg, tokenizer, _ = preference_world
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    batch = preference.pair_collate(tokenizer.pad_token_id)(shared_prompt_pairs(tokenizer))
    weights = torch.linspace(-1, 1, 6)
    full = logprobs.sequence_logps(model, batch)
    (weights * full).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared = preference.pair_sequence_logps(model, batch)
    (weights * shared).sum().backward()
    assert torch.allclose(full, shared, atol=1e-4)
    for p, g in zip(model.parameters(), full_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)
    model.activation_checkpointing_enable()     # no KV cache: the full sequences are scored instead
    assert not logprobs.can_share_prompt(model)
    assert torch.allclose(preference.pair_sequence_logps(model, batch), full, atol=1e-5)
