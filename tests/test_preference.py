"""Preference pairs: dropped rows are counted, the SFT mask is kept, one prompt run per pair equals full rows."""
import torch

from helpers import config, logprobs, modeling, preference


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


def test_onpolicy_pairs_take_the_best_and_the_worst_sample_and_drop_ties(monkeypatch):
    cfg = config.get_config("smoke")
    cfg.dpo = config.replace_config(cfg.dpo, onpolicy_samples=3)
    tasks = [{"nums": [3, 4], "target": 7, "prompt": [{"role": "user", "content": "a"}]},
             {"nums": [2, 5], "target": 10, "prompt": [{"role": "user", "content": "b"}]}]
    outputs = ["<answer> 4 </answer>", "<answer> 3 + 4 </answer>", "nothing",       # task 0: 0.1, 1.0, 0.0
               "<answer> 7 </answer>", "<answer> 2 </answer>", "<answer> 1 </answer>"]  # task 1: all 0.1
    monkeypatch.setattr(preference, "generate_eval", lambda model, tok, prompts, *a, **k: outputs[:len(prompts)])
    pairs, stats = preference.countdown_onpolicy_pairs(None, None, tasks, cfg, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("<answer> 3 + 4 </answer>", "nothing")]
    assert stats == {"prompts": 2, "samples_per_prompt": 3, "pairs": 1, "ties_dropped": 1, "unsolved_dropped": 0}


def test_onpolicy_pairs_drop_a_prompt_whose_best_sample_is_wrong(monkeypatch):
    """A chosen answer is imitated (the RPO term): format-only (0.1) over nothing (0.0) is no pair by default."""
    cfg = config.get_config("smoke")
    cfg.dpo = config.replace_config(cfg.dpo, onpolicy_samples=2)
    tasks = [{"nums": [3, 4], "target": 7, "prompt": [{"role": "user", "content": "a"}]}]
    outputs = ["<answer> 4 </answer>", "nothing"]                                   # 0.1 and 0.0
    monkeypatch.setattr(preference, "generate_eval", lambda model, tok, prompts, *a, **k: outputs[:len(prompts)])
    pairs, stats = preference.countdown_onpolicy_pairs(None, None, tasks, cfg, seed=0)
    assert pairs == [] and stats["unsolved_dropped"] == 1 and stats["ties_dropped"] == 0
    cfg.dpo = config.replace_config(cfg.dpo, onpolicy_min_chosen=0.0)              # any better sample
    pairs, stats = preference.countdown_onpolicy_pairs(None, None, tasks, cfg, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("<answer> 4 </answer>", "nothing")]


def test_balance_tracks_repeats_countdown_pairs_up_to_their_share():
    others = [{"source": "tiny/add"}] * 9
    countdown = [{"source": "countdown/on-policy", "i": i} for i in range(2)]
    balanced = preference.balance_tracks(others + countdown, share=0.25)
    assert len(balanced) == 12 and balanced[:9] == others
    assert [p["i"] for p in balanced[9:]] == [0, 1, 0]                      # cycled to 3 = 25 % of 12
    assert balanced[11] is balanced[9]      # the same dict: DPO's reference log-probs fill every repeat at once
    assert preference.balance_tracks(others, 0.25) == others                 # nothing to balance
    assert len(preference.balance_tracks(others + countdown * 10, 0.25)) == 29   # never fewer than they are
