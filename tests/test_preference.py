"""DPO loss, reference log-probs, pair dropping, and the Bradley–Terry reward model."""
import math

import pytest
import torch

import helpers as H


def test_dpo_loss_equal_logps_is_log2():
    z = torch.zeros(3)
    loss, chosen, rejected = H.dpo_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert torch.equal(chosen, z) and torch.equal(rejected, z)


def test_dpo_loss_hand_checked_value():
    loss, chosen, rejected = H.dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                        torch.tensor([-1.5]), beta=0.5)
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-6)   # 0.474077


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    loss, _, _ = H.dpo_loss(chosen, rejected, torch.tensor([-2.5]), torch.tensor([-2.5]), beta=0.1)
    loss.backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()   # gradient descent raises log π(y_w), lowers log π(y_l)


@pytest.fixture(scope="module")
def setup():
    cfg = H.get_config("smoke")
    world = H.build_tiny_world(cfg.data)
    texts = [r["text"] for r in world["pretrain"]["train"]]
    tokenizer = H.train_tiny_tokenizer(texts, cfg.model.vocab_size)
    pairs, _ = H.build_pair_dataset(tokenizer, world["preferences"]["train"], 64)
    return cfg, tokenizer, pairs


def test_pair_dropping_is_counted(setup):
    _, tokenizer, _ = setup
    user = [{"role": "user", "content": "What is 2 + 3?"}]
    rows = [{"prompt": user, "chosen": "5", "rejected": "6"},
            {"prompt": user, "chosen": "5", "rejected": "5"},
            {"prompt": user, "chosen": "", "rejected": "6"},
            {"prompt": [{"role": "user", "content": "  "}], "chosen": "5", "rejected": "6"},
            {"prompt": user, "chosen": "5", "rejected": None}]
    pairs, skips = H.build_pair_dataset(tokenizer, rows, 64)
    assert len(pairs) == 1 and skips.total == 4
    assert skips.reasons["chosen identical to rejected"] == 1
    assert skips.reasons["empty or missing response"] == 2
    assert skips.reasons["empty or malformed prompt"] == 1
    # chosen and rejected carry the SFT mask: only the answer and <|im_end|> are trained
    trained = [t for t, l in zip(pairs[0]["chosen"]["input_ids"], pairs[0]["chosen"]["labels"]) if l != -100]
    assert tokenizer.decode(trained) == "5<|im_end|>"


def shared_prompt_pairs(tokenizer):
    """Pairs whose answers share a first digit (12 / 13), differ in length, or follow an earlier assistant turn."""
    user = lambda text: [{"role": "user", "content": text}]
    rows = [{"prompt": user("What is 7 + 5?"), "chosen": "12", "rejected": "13"},
            {"prompt": user("Which letter does zebra start with?"), "chosen": "z", "rejected": "the letter e"},
            {"prompt": user("Hi") + [{"role": "assistant", "content": "Hello"}] + user("What follows 8?"),
             "chosen": "9", "rejected": "7"}]
    pairs, skips = H.build_pair_dataset(tokenizer, rows, 64)
    assert skips.total == 0
    return pairs


def test_pair_prompt_run_once_gives_full_sequence_logps_and_gradients(setup):
    """DPO runs each pair's prompt once; log π(y|x) and its gradient must equal the full sequences'."""
    cfg, tokenizer, _ = setup
    model = H.build_tiny_model(tokenizer, cfg.model, seed=0)
    batch = H.pair_collate(tokenizer.pad_token_id)(shared_prompt_pairs(tokenizer))
    weights = torch.linspace(-1, 1, 6)
    full = H.sequence_logps(model, batch)
    (weights * full).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared = H.pair_sequence_logps(model, batch)
    (weights * shared).sum().backward()
    assert torch.allclose(full, shared, atol=1e-4)
    for p, g in zip(model.parameters(), full_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)
    model.activation_checkpointing_enable()     # no KV cache: the full sequences are scored instead
    assert not H.can_share_prompt(model)
    assert torch.allclose(H.pair_sequence_logps(model, batch), full, atol=1e-5)


def test_pair_prompt_run_once_gives_full_sequence_reward_scores(setup, tmp_path):
    cfg, tokenizer, _ = setup
    H.save_model(H.build_tiny_model(tokenizer, cfg.model, seed=0), tmp_path / "base", tokenizer)
    rm_tok, rm = H.load_reward_model(tmp_path / "base")
    torch.nn.init.normal_(rm.score.weight)        # a non-trivial head
    batch = H.pair_collate(rm_tok.pad_token_id)(shared_prompt_pairs(rm_tok))
    full = H.reward_scores(rm, batch)
    full.sum().backward()
    full_grads = [p.grad.clone() for p in rm.parameters()]
    rm.zero_grad()
    shared = H.pair_reward_scores(rm, batch)
    shared.sum().backward()
    assert torch.allclose(full, shared, atol=1e-4)
    for p, g in zip(rm.parameters(), full_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_lora_reference_from_disabled_adapters_matches_base(setup):
    cfg, tokenizer, pairs = setup
    from peft import LoraConfig, get_peft_model
    base = H.build_tiny_model(tokenizer, cfg.model, seed=0)
    ref_pairs = [dict(p) for p in pairs[:8]]
    H.add_reference_logps(base, ref_pairs, tokenizer.pad_token_id)
    lora = get_peft_model(H.build_tiny_model(tokenizer, cfg.model, seed=0),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter_pairs = [dict(p) for p in pairs[:8]]
    H.add_reference_logps(lora, adapter_pairs, tokenizer.pad_token_id, disable_adapters=True)
    for a, b in zip(ref_pairs, adapter_pairs):
        assert a["ref_chosen_logps"] == pytest.approx(b["ref_chosen_logps"], abs=1e-5)
        assert a["ref_rejected_logps"] == pytest.approx(b["ref_rejected_logps"], abs=1e-5)
    enabled = [dict(p) for p in pairs[:8]]    # with (non-zero) adapters on, the numbers really differ
    H.add_reference_logps(lora, enabled, tokenizer.pad_token_id)
    assert any(abs(a["ref_chosen_logps"] - b["ref_chosen_logps"]) > 1e-3 for a, b in zip(ref_pairs, enabled))


def test_dpo_training_raises_preference_accuracy_on_its_pairs(setup, tmp_path):
    cfg, tokenizer, pairs = setup
    model = H.build_tiny_model(tokenizer, cfg.model, seed=0)
    pairs = [dict(p) for p in pairs[:16]]
    H.add_reference_logps(model, pairs, tokenizer.pad_token_id)
    before = H.preference_accuracy(model, pairs, tokenizer.pad_token_id)["reward_accuracy"]
    train_cfg = H.replace_config(cfg.dpo, max_steps=30, batch_size=8, lr=3e-3, save_every=100, eval_every=100)
    H.train(model, tokenizer, pairs, train_cfg, H.make_dpo_loss(0.5), H.pair_collate(tokenizer.pad_token_id),
            tmp_path / "dpo", resume=False)
    after = H.preference_accuracy(model, pairs, tokenizer.pad_token_id)["reward_accuracy"]
    assert before == 0.0            # policy == reference: every implicit reward margin is 0
    assert after >= 0.9


def test_reward_model_learns_its_pairs(setup, tmp_path):
    cfg, tokenizer, pairs = setup
    base = tmp_path / "base"
    H.save_model(H.build_tiny_model(tokenizer, cfg.model, seed=0), base, tokenizer)
    rm_tok, rm = H.load_reward_model(base)
    pairs = pairs[:16]
    train_cfg = H.replace_config(cfg.reward, max_steps=100, batch_size=8, lr=3e-3, save_every=1000, eval_every=1000)
    H.train(rm, rm_tok, pairs, train_cfg, H.bradley_terry_loss, H.pair_collate(rm_tok.pad_token_id),
            tmp_path / "rm", resume=False)
    assert H.reward_model_accuracy(rm, pairs, rm_tok.pad_token_id) >= 0.9
    # per-pair wins, batched (5 does not divide 16), agree with scoring the full sequences in one batch
    full, n = H.reward_scores(rm.eval(), H.pair_collate(rm_tok.pad_token_id)(pairs)), len(pairs)
    assert H.reward_model_wins(rm, pairs, rm_tok.pad_token_id, batch_size=5) == (full[:n] > full[n:]).tolist()
    # saved, reloadable, same scores
    _, again = H.load_reward_model(tmp_path / "rm")
    batch = {k: v for k, v in H.pair_collate(rm_tok.pad_token_id)(pairs[:4]).items()}
    assert torch.allclose(H.reward_scores(rm.eval(), batch), H.reward_scores(again.eval(), batch), atol=1e-5)


def test_reward_model_from_a_lora_sft_checkpoint(setup, tmp_path):
    """qwen's SFT checkpoints are LoRA adapters: the reward model merges them once, then adds its head."""
    cfg, tokenizer, pairs = setup
    base = tmp_path / "base"
    H.save_model(H.build_tiny_model(tokenizer, cfg.model, seed=0), base, tokenizer)
    lora = H.load_model(base, lora_cfg=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    H.save_model(lora, tmp_path / "sft", tokenizer)
    assert (tmp_path / "sft" / "adapter_config.json").exists()
    rm_tok, rm = H.load_reward_model(tmp_path / "sft")
    assert (tmp_path / "sft_merged" / "config.json").exists()
    batch = H.pair_collate(rm_tok.pad_token_id)(pairs[:2])
    assert H.reward_scores(rm, batch).shape == (4,)
