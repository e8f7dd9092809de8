"""The one training loop: accumulation equivalence, resume equivalence, NaN stop, checkpoints."""
import math

import pytest
import torch

import helpers as H


@pytest.fixture(scope="module")
def world():
    cfg = H.get_config("smoke")
    rows = H.build_tiny_world(cfg.data)
    texts = [r["text"] for r in rows["pretrain"]["train"]]
    tokenizer = H.train_tiny_tokenizer(texts + [H.render_chat_plain(r["messages"]) for r in rows["warmstart"]["train"]],
                                       cfg.model.vocab_size)
    examples, _ = H.build_sft_dataset(tokenizer, rows["instructions"]["train"] + rows["warmstart"]["train"], 128)
    return cfg, tokenizer, examples


def fresh_model(cfg, tokenizer):
    return H.build_tiny_model(tokenizer, cfg.model, seed=0)


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_gives_the_same_gradient(world):
    """batch 8 × accumulation 1 == batch 1 × accumulation 8: per-token normalisation over the whole step."""
    cfg, tokenizer, examples = world
    batch = examples[:8]   # different lengths and trained-token counts, so a per-micro-batch mean would differ
    collate_fn = H.sft_collate(tokenizer.pad_token_id)
    grads = []
    for micro in ([batch], [[e] for e in batch]):
        model = fresh_model(cfg, tokenizer)
        batches = [collate_fn(m) for m in micro]
        total = sum(float(b["normalizer"]) for b in batches)
        for b in batches:
            summed, _ = H.sft_loss(model, b)
            (summed / total).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    # and the naive mean of per-micro-batch means (the 2024 bug) really is different here
    model = fresh_model(cfg, tokenizer)
    for b in (collate_fn([e]) for e in batch):
        summed, _ = H.sft_loss(model, b)
        (summed / b["normalizer"] / len(batch)).backward()
    naive = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(grads[0], naive, atol=1e-6, rtol=1e-4)


def test_resume_gives_the_same_weights(world, tmp_path):
    """Interrupted at step 3 (last checkpoint at step 2), resumed: same weights as an uninterrupted run."""
    cfg, tokenizer, examples = world
    train_cfg = H.replace_config(cfg.sft, max_steps=6, batch_size=4, save_every=2, eval_every=3)
    collate_fn = H.sft_collate(tokenizer.pad_token_id)
    eval_fn = lambda m: {"eval/loss": H.evaluate_loss(m, examples[:8], tokenizer.pad_token_id)}

    straight = fresh_model(cfg, tokenizer)
    history = H.train(straight, tokenizer, examples, train_cfg, H.sft_loss, collate_fn, tmp_path / "a",
                      eval_fn=eval_fn, resume=False)

    interrupted = fresh_model(cfg, tokenizer)
    H.train(interrupted, tokenizer, examples, train_cfg, H.sft_loss, collate_fn, tmp_path / "b",
            eval_fn=eval_fn, stop_after_steps=3)
    resumed = fresh_model(cfg, tokenizer)     # a new process would start from scratch weights too
    history_b = H.train(resumed, tokenizer, examples, train_cfg, H.sft_loss, collate_fn, tmp_path / "b",
                        eval_fn=eval_fn)
    diff = (flat_params(straight) - flat_params(resumed)).abs().max().item()
    assert diff <= 1e-6
    assert [h["step"] for h in history_b] == [h["step"] for h in history]
    # the saved checkpoint loads with AutoModelForCausalLM and equals the in-memory model
    reloaded = H.load_model(tmp_path / "b")
    assert (flat_params(reloaded) - flat_params(resumed)).abs().max().item() == 0.0
    assert (tmp_path / "b" / "model.safetensors").exists() and (tmp_path / "b" / "run_config.json").exists()


def test_resume_restarts_when_config_changes(world, tmp_path):
    cfg, tokenizer, examples = world
    collate_fn = H.sft_collate(tokenizer.pad_token_id)
    train_cfg = H.replace_config(cfg.sft, max_steps=4, batch_size=4, save_every=2)
    H.train(fresh_model(cfg, tokenizer), tokenizer, examples, train_cfg, H.sft_loss, collate_fn, tmp_path / "c",
            stop_after_steps=2)
    other = H.replace_config(train_cfg, lr=train_cfg.lr / 2)
    assert H._resumable_state(tmp_path / "c", {"train": H.dataclasses.asdict(train_cfg)}) is not None
    assert H._resumable_state(tmp_path / "c", {"train": H.dataclasses.asdict(other)}) is None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(world, tmp_path):
    cfg, tokenizer, examples = world
    train_cfg = H.replace_config(cfg.sft, max_steps=6, batch_size=4, save_every=2)
    calls = {"n": 0}

    def exploding_loss(model, batch):
        calls["n"] += 1
        summed, metrics = H.sft_loss(model, batch)
        return (summed * float("nan") if calls["n"] > 3 else summed), metrics

    model = fresh_model(cfg, tokenizer)
    with pytest.raises(H.TrainingDiverged, match="step 4"):
        H.train(model, tokenizer, examples, train_cfg, exploding_loss, H.sft_collate(tokenizer.pad_token_id),
                tmp_path / "d")
    state = torch.load(tmp_path / "d" / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and not state["finished"]
    reloaded = H.load_model(tmp_path / "d")
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_sft_loss_is_mean_over_trained_tokens(world):
    cfg, tokenizer, examples = world
    model = fresh_model(cfg, tokenizer)
    batch = H.sft_collate(tokenizer.pad_token_id)(examples[:4])
    summed, _ = H.sft_loss(model, batch)
    # reference: HF's own shifted cross-entropy over labels != -100
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert math.isclose(float(summed / batch["normalizer"]), float(out.loss), rel_tol=1e-5)


def test_warmup_cosine_schedule():
    assert H.warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert H.warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert H.warmup_cosine(100, 10, 100) == pytest.approx(0.1)
    assert H.warmup_cosine(55, 10, 100) == pytest.approx(0.55)
