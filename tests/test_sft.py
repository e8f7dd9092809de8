"""SFT: the loss is the mean over trained tokens."""
import math


from helpers import modeling, sft


def fresh_model(cfg, tokenizer):
    return modeling.build_tiny_model(tokenizer, cfg.model, seed=0)


def test_sft_loss_is_mean_over_trained_tokens(sft_world):
    cfg, tokenizer, examples = sft_world
    model = fresh_model(cfg, tokenizer)
    batch = sft.sft_collate(tokenizer.pad_token_id)(examples[:4])
    summed, _ = sft.sft_loss(model, batch)
    # reference: HF's own shifted cross-entropy over labels != -100
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert math.isclose(float(summed / batch["normalizer"]), float(out.loss), rel_tol=1e-5)
