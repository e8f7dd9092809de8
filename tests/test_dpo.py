"""DPO: the loss by hand (equal log-probs give log 2), its gradient, the LoRA reference, and a toy it must learn."""
import math

import pytest
import torch

from helpers import config, dpo, modeling, preference, training


def test_dpo_loss_equal_logps_is_log2():
    z = torch.zeros(3)
    loss, chosen, rejected = dpo.dpo_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert torch.equal(chosen, z) and torch.equal(rejected, z)


def test_dpo_loss_hand_checked_value():
    loss, chosen, rejected = dpo.dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                        torch.tensor([-1.5]), beta=0.5)
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-6)   # 0.474077


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    loss, _, _ = dpo.dpo_loss(chosen, rejected, torch.tensor([-2.5]), torch.tensor([-2.5]), beta=0.1)
    loss.backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()   # gradient descent raises log π(y_w), lowers log π(y_l)


def test_ipo_loss_hand_checked_value():
    # log-ratios: chosen −1 − (−1.5) = 0.5, rejected −2 − (−1.5) = −0.5, so the margin h = 1.0
    args = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5])
    loss, chosen, rejected = dpo.dpo_loss(*args, beta=0.25, loss_type="ipo")
    assert loss.item() == pytest.approx((1.0 - 1 / (2 * 0.25)) ** 2)          # (1 − 2)² = 1
    assert chosen.item() == pytest.approx(0.125) and rejected.item() == pytest.approx(-0.125)
    assert dpo.dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item() == pytest.approx(0.0)   # h = 1/(2β) exactly


def test_ipo_stops_pushing_at_its_target_margin_where_dpo_does_not():
    grads = {}
    for loss_type in ("ipo", "sigmoid"):
        chosen = torch.tensor([-1.0], requires_grad=True)            # h = 1.0 = 1/(2β) for β = 0.5
        dpo.dpo_loss(chosen, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5,
                     loss_type=loss_type)[0].backward()
        grads[loss_type] = chosen.grad.item()
    assert grads["ipo"] == pytest.approx(0.0) and grads["sigmoid"] < 0     # DPO still raises log π(y_w)


@pytest.mark.hostile
def test_an_unknown_loss_type_is_refused_with_what_is_allowed():
    with pytest.raises(config.ConfigError, match=r"loss_type.*\"sigmoid\" \(DPO\) or \"ipo\""):
        config.replace_config(config.DPOConfig(), loss_type="hinge")
    with pytest.raises(ValueError, match="hinge"):
        dpo.dpo_loss(*(torch.zeros(1),) * 4, beta=0.1, loss_type="hinge")


def test_lora_reference_from_disabled_adapters_matches_base(preference_world):
    cfg, tokenizer, pairs = preference_world
    from peft import LoraConfig, get_peft_model
    base = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    ref_pairs = [dict(p) for p in pairs[:8]]
    dpo.add_reference_logps(base, ref_pairs, tokenizer.pad_token_id)
    lora = get_peft_model(modeling.build_tiny_model(tokenizer, cfg.model, seed=0),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter_pairs = [dict(p) for p in pairs[:8]]
    dpo.add_reference_logps(lora, adapter_pairs, tokenizer.pad_token_id, disable_adapters=True)
    for a, b in zip(ref_pairs, adapter_pairs):
        assert a["ref_chosen_logps"] == pytest.approx(b["ref_chosen_logps"], abs=1e-5)
        assert a["ref_rejected_logps"] == pytest.approx(b["ref_rejected_logps"], abs=1e-5)
    enabled = [dict(p) for p in pairs[:8]]    # with (non-zero) adapters on, the numbers really differ
    dpo.add_reference_logps(lora, enabled, tokenizer.pad_token_id)
    assert any(abs(a["ref_chosen_logps"] - b["ref_chosen_logps"]) > 1e-3 for a, b in zip(ref_pairs, enabled))


def test_reference_logps_once_per_distinct_pair(preference_world, monkeypatch):
    """balance_tracks repeats the same pair dicts: each distinct pair is scored once, and every repeat has it."""
    cfg, tokenizer, pairs = preference_world
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    a, b = dict(pairs[0]), dict(pairs[1])
    scored = []
    real = dpo.pair_logps
    monkeypatch.setattr(dpo, "pair_logps", lambda m, rows, pad: scored.append(len(rows)) or real(m, rows, pad))
    dpo.add_reference_logps(model, [a, b, a, a], tokenizer.pad_token_id)
    assert scored == [2]
    assert a["ref_chosen_logps"] != b["ref_chosen_logps"] and "ref_rejected_logps" in a


def test_dpo_training_raises_preference_accuracy_on_its_pairs(preference_world, tmp_path):
    cfg, tokenizer, pairs = preference_world
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    pairs = [dict(p) for p in pairs[:16]]
    dpo.add_reference_logps(model, pairs, tokenizer.pad_token_id)
    before = dpo.preference_accuracy(model, pairs, tokenizer.pad_token_id)["reward_accuracy"]
    train_cfg = config.replace_config(cfg.dpo, max_steps=30, batch_size=8, lr=3e-3, save_every=100, eval_every=100)
    training.train(model, tokenizer, pairs, train_cfg, dpo.make_dpo_loss(0.5),
                   preference.pair_collate(tokenizer.pad_token_id), tmp_path / "dpo", restart=True,
                   length_fn=preference.pair_length)
    after = dpo.preference_accuracy(model, pairs, tokenizer.pad_token_id)["reward_accuracy"]
    assert before == 0.0            # policy == reference: every implicit reward margin is 0
    assert after >= 0.9
