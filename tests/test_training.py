"""The one training loop: accumulation equivalence, divergence stops (NaN, far above the start, uniform output) with
a truthful message, the warmup-cosine schedule."""
import math

import pytest
import torch

from helpers import config, modeling, sft, training


def fresh_model(cfg, tokenizer):
    return modeling.build_tiny_model(tokenizer, cfg.model, seed=0)


def test_accumulation_gives_the_same_gradient(sft_world):
    """batch 8 × accumulation 1 == batch 1 × accumulation 8: per-token normalisation over the whole step."""
    cfg, tokenizer, examples = sft_world
    batch = examples[:8]   # different lengths and trained-token counts, so a per-micro-batch mean would differ
    collate_fn = sft.sft_collate(tokenizer.pad_token_id)
    grads = []
    for micro in ([batch], [[e] for e in batch]):
        model = fresh_model(cfg, tokenizer)
        batches = [collate_fn(m) for m in micro]
        total = sum(float(b["normalizer"]) for b in batches)
        for b in batches:
            summed, _ = sft.sft_loss(model, b)
            (summed / total).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    # and the naive mean of per-micro-batch means (the 2024 bug) really is different here
    model = fresh_model(cfg, tokenizer)
    for b in (collate_fn([e]) for e in batch):
        summed, _ = sft.sft_loss(model, b)
        (summed / b["normalizer"] / len(batch)).backward()
    naive = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(grads[0], naive, atol=1e-6, rtol=1e-4)


@pytest.mark.hostile
def test_nan_loss_stops_and_keeps_last_good_checkpoint(sft_world, tmp_path):
    cfg, tokenizer, examples = sft_world
    train_cfg = config.replace_config(cfg.sft, max_steps=6, batch_size=4, save_every=2)
    calls = {"n": 0}

    def exploding_loss(model, batch):
        calls["n"] += 1
        summed, metrics = sft.sft_loss(model, batch)
        return (summed * float("nan") if calls["n"] > 3 else summed), metrics

    model = fresh_model(cfg, tokenizer)
    with pytest.raises(training.TrainingDiverged, match=r"step 4; stopped, the checkpoint of step 2 is kept"):
        training.train(model, tokenizer, examples, train_cfg, exploding_loss, sft.sft_collate(tokenizer.pad_token_id),
                tmp_path / "d")
    state = torch.load(tmp_path / "d" / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and not state["finished"]
    reloaded = modeling.load_model(tmp_path / "d")
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


@pytest.mark.hostile
@pytest.mark.parametrize("lr, why", [(1e3, "sits at ln\\(vocabulary\\)"), (10.0, "far above its start")])
def test_divergence_without_nan_is_caught_and_the_message_tells_the_truth(sft_world, tmp_path, lr, why):
    """lr 1e3 pins the loss at ln(V) (uniform output), lr 10 sends it to thousands — neither is NaN, both used to
    'finish'. Stopped within a few steps; no checkpoint existed yet, and the message says so."""
    cfg, tokenizer, examples = sft_world
    train_cfg = config.replace_config(cfg.sft, max_steps=40, batch_size=8, lr=lr, warmup_steps=1, save_every=10)
    with pytest.raises(training.TrainingDiverged, match=why + r".*no checkpoint had been saved"):
        training.train(fresh_model(cfg, tokenizer), tokenizer, examples, train_cfg, sft.sft_loss,
                       sft.sft_collate(tokenizer.pad_token_id), tmp_path / "d", uniform_loss=math.log(len(tokenizer)))
    assert not (tmp_path / "d").exists()


def test_warmup_cosine_schedule():
    assert training.warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert training.warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert training.warmup_cosine(100, 10, 100) == pytest.approx(0.1)
    assert training.warmup_cosine(55, 10, 100) == pytest.approx(0.55)
