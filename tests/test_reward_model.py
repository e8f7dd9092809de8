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


def test_the_grm_term_is_the_chosen_answers_nll_and_both_paths_agree(preference_world):
    """scores_and_chosen_logps: the scores equal the sequence-classification model's own, and the chosen log-probs
    equal the causal LM's (the same weights, its head tied to the embeddings) — with the prompt shared or not."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from helpers import logprobs, modeling, preference, reward_model
    cfg, tokenizer, pairs = preference_world
    lm = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    lm.config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(lm.config)
    rm.model.load_state_dict(lm.model.state_dict())
    rm.config.pad_token_id = tokenizer.pad_token_id
    batch = preference.pair_collate(tokenizer.pad_token_id)(pairs[:4])
    with torch.no_grad():
        shared = reward_model.scores_and_chosen_logps(rm, batch)
        rm.activation_checkpointing_enable()
        rm.train()                                  # gradient checkpointing in training: the full-sequence path
        full = reward_model.scores_and_chosen_logps(rm, batch)
        rm.eval()
        expected_scores = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        expected_logps = logprobs.sequence_logps(lm, {k: v[:4] for k, v in batch.items()
                                                      if k in ("input_ids", "attention_mask", "labels")})
    for scores, logps, tokens in (shared, full):
        assert torch.allclose(scores, expected_scores, atol=1e-4)
        assert torch.allclose(logps, expected_logps, atol=1e-3)
    assert torch.equal(shared[2], (batch["labels"][:4, 1:] != -100).sum(1))
    loss, metrics = reward_model.make_reward_loss(0.5)(rm, batch)
    plain, _ = reward_model.bradley_terry_loss(rm, batch)
    assert torch.isclose(loss, plain + 0.5 * (-expected_logps / shared[2]).sum(), atol=1e-3)
