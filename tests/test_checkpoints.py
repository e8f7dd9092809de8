"""Checkpoints: resume after an interruption gives the same weights; a changed config starts afresh."""
import dataclasses
import torch

from helpers import checkpoints, config, modeling, sft, training


def fresh_model(cfg, tokenizer):
    return modeling.build_tiny_model(tokenizer, cfg.model, seed=0)


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_gives_the_same_weights(sft_world, tmp_path):
    """Interrupted at step 3 (last checkpoint at step 2), resumed: same weights as an uninterrupted run."""
    cfg, tokenizer, examples = sft_world
    train_cfg = config.replace_config(cfg.sft, max_steps=6, batch_size=4, save_every=2, eval_every=3)
    collate_fn = sft.sft_collate(tokenizer.pad_token_id)
    eval_fn = lambda m: {"eval/loss": sft.evaluate_loss(m, examples[:8], tokenizer.pad_token_id)}

    straight = fresh_model(cfg, tokenizer)
    history = training.train(straight, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, tmp_path / "a",
                      eval_fn=eval_fn, resume=False)

    interrupted = fresh_model(cfg, tokenizer)
    training.train(interrupted, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, tmp_path / "b",
            eval_fn=eval_fn, stop_after_steps=3)
    resumed = fresh_model(cfg, tokenizer)     # a new process would start from scratch weights too
    history_b = training.train(resumed, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, tmp_path / "b",
                        eval_fn=eval_fn)
    diff = (flat_params(straight) - flat_params(resumed)).abs().max().item()
    assert diff <= 1e-6
    assert [h["step"] for h in history_b] == [h["step"] for h in history]
    # the saved checkpoint loads with AutoModelForCausalLM and equals the in-memory model
    reloaded = modeling.load_model(tmp_path / "b")
    assert (flat_params(reloaded) - flat_params(resumed)).abs().max().item() == 0.0
    assert (tmp_path / "b" / "model.safetensors").exists() and (tmp_path / "b" / "run_config.json").exists()


def test_resume_restarts_when_config_changes(sft_world, tmp_path):
    cfg, tokenizer, examples = sft_world
    collate_fn = sft.sft_collate(tokenizer.pad_token_id)
    train_cfg = config.replace_config(cfg.sft, max_steps=4, batch_size=4, save_every=2)
    training.train(fresh_model(cfg, tokenizer), tokenizer, examples, train_cfg, sft.sft_loss, collate_fn,
                   tmp_path / "c", stop_after_steps=2)
    other = config.replace_config(train_cfg, lr=train_cfg.lr / 2)
    assert checkpoints.resumable_state(tmp_path / "c", {"train": dataclasses.asdict(train_cfg)}) is not None
    assert checkpoints.resumable_state(tmp_path / "c", {"train": dataclasses.asdict(other)}) is None
