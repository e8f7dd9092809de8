"""The Bradley–Terry reward model: shared-prompt scores, a toy it must learn, a LoRA SFT starting point."""
import torch

from helpers import config, modeling, preference, reward_model, training


def test_pair_prompt_run_once_gives_full_sequence_reward_scores(preference_world, shared_prompt_pairs, tmp_path):
    cfg, tokenizer, _ = preference_world
    modeling.save_model(modeling.build_tiny_model(tokenizer, cfg.model, seed=0), tmp_path / "base", tokenizer)
    rm_tok, rm = reward_model.load_reward_model(tmp_path / "base")
    torch.nn.init.normal_(rm.score.weight)        # a non-trivial head
    batch = preference.pair_collate(rm_tok.pad_token_id)(shared_prompt_pairs(rm_tok))
    full = reward_model.reward_scores(rm, batch)
    full.sum().backward()
    full_grads = [p.grad.clone() for p in rm.parameters()]
    rm.zero_grad()
    shared = reward_model.pair_reward_scores(rm, batch)
    shared.sum().backward()
    assert torch.allclose(full, shared, atol=1e-4)
    for p, g in zip(rm.parameters(), full_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_reward_model_learns_its_pairs(preference_world, tmp_path):
    cfg, tokenizer, pairs = preference_world
    base = tmp_path / "base"
    modeling.save_model(modeling.build_tiny_model(tokenizer, cfg.model, seed=0), base, tokenizer)
    rm_tok, rm = reward_model.load_reward_model(base)
    pairs = pairs[:16]
    train_cfg = config.replace_config(cfg.reward, max_steps=100, batch_size=8, lr=3e-3, save_every=1000,
                                      eval_every=1000)
    collate_fn = preference.pair_collate(rm_tok.pad_token_id)
    training.train(rm, rm_tok, pairs, train_cfg, reward_model.bradley_terry_loss, collate_fn, tmp_path / "rm",
                   restart=True, length_fn=preference.pair_length)
    assert reward_model.reward_model_accuracy(rm, pairs, rm_tok.pad_token_id) >= 0.9
    # per-pair wins, in token-budget batches of ~3 pairs, agree with scoring the full sequences in one batch
    full, n = reward_model.reward_scores(rm.eval(), collate_fn(pairs)), len(pairs)
    budget = 3 * max(map(preference.pair_length, pairs))
    wins = reward_model.reward_model_wins(rm, pairs, rm_tok.pad_token_id, token_budget=budget)
    assert wins == (full[:n] > full[n:]).tolist()
    # saved, reloadable, same scores
    _, again = reward_model.load_reward_model(tmp_path / "rm")
    batch = collate_fn(pairs[:4])
    assert torch.allclose(reward_model.reward_scores(rm.eval(), batch), reward_model.reward_scores(again.eval(), batch),
                          atol=1e-5)


def test_reward_model_from_a_lora_sft_checkpoint(preference_world, tmp_path, output_dir):
    """qwen's SFT checkpoints are LoRA adapters: the reward model merges them once, then adds its head."""
    cfg, tokenizer, pairs = preference_world
    base = tmp_path / "base"
    modeling.save_model(modeling.build_tiny_model(tokenizer, cfg.model, seed=0), base, tokenizer)
    lora = modeling.load_model(base, lora_cfg=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    modeling.save_model(lora, tmp_path / "sft", tokenizer)
    assert (tmp_path / "sft" / "adapter_config.json").exists()
    rm_tok, rm = reward_model.load_reward_model(tmp_path / "sft")
    merged = list((output_dir / "cache" / "merged").glob("sft-*"))
    assert len(merged) == 1 and (merged[0] / "config.json").exists() and not (tmp_path / "sft_merged").exists()
    batch = preference.pair_collate(rm_tok.pad_token_id)(pairs[:2])
    assert reward_model.reward_scores(rm, batch).shape == (4,)
