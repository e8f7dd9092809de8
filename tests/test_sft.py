"""SFT: the loss is the mean over trained tokens; the response-token normalisation of the experiment's control."""
import math


from helpers import formatting, modeling, sft


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


def test_response_token_normalization_gives_the_response_the_masked_runs_gradient(sft_world):
    """The experiment's control: whole-sequence loss divided by the response tokens (not by every trained token)
    puts exactly the masked run's weight on each response token; the prompt's term comes on top."""
    cfg, tokenizer, _ = sft_world
    turn = lambda question, answer: {"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}
    rows = [turn("What is 2 + 3?", "5"), turn("Which number follows 8?", "9")]
    masked, _ = formatting.build_sft_dataset(tokenizer, rows, 64, 0.0)
    whole, _ = formatting.build_sft_dataset(tokenizer, rows, 64, 1.0)
    masked_batch = sft.sft_collate(tokenizer.pad_token_id)(masked)
    plain = sft.sft_collate(tokenizer.pad_token_id)(whole)
    controlled = sft.sft_collate(tokenizer.pad_token_id, "response_tokens")(whole)
    assert float(controlled["normalizer"]) == float(masked_batch["normalizer"]) < float(plain["normalizer"])
    model = fresh_model(cfg, tokenizer)
    masked_loss = sft.sft_loss(model, masked_batch)[0] / masked_batch["normalizer"]
    whole_loss = sft.sft_loss(model, controlled)[0] / controlled["normalizer"]
    assert float(whole_loss) > float(masked_loss)             # the prompt's tokens add to it
