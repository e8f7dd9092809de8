"""Domain vocabulary: fragmentation, adding tokens with mean-initialised rows (grown or spare, tied or untied),
and a LoRA adapter with trainable new-token rows that survives save/load and merging."""
import copy

import pytest
import torch

from helpers import config, data, modeling, sft, vocab


WORDS = ["mediventricular", "neurogenix", "X-23S"]


@pytest.fixture
def tok(tiny_tokenizer):
    return copy.deepcopy(tiny_tokenizer)          # add_new_tokens changes the tokenizer; the fixture is shared


def test_invented_words_fragment_then_become_one_token(tok):
    before = {r["word"]: r for r in vocab.token_fragmentation(tok, WORDS)}
    for word, row in before.items():
        assert row["tokens"] > 1 and row["tokens_after_space"] > 1
        assert "".join(row["pieces"]) == word
    assert before["X-23S"]["tokens"] >= 4              # digits are split one by one: X - 2 3 S
    model = modeling.build_tiny_model(tok, config.get_config("smoke").model, seed=0)
    assert vocab.add_new_tokens(tok, model, WORDS) == 3
    for word in WORDS:
        assert len(tok(word)["input_ids"]) == 1
    after = {r["word"]: r for r in vocab.token_fragmentation(tok, WORDS)}
    assert all(after[w]["tokens"] == 1 and after[w]["pieces"] == [w] for w in WORDS)
    # mid-sentence the word is still one token, after the space's own token
    ids = tok("the neurogenix dose", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("neurogenix") in ids


def qwen2(tokenizer, vocab_size=None, tie=True, seed=0, hidden=32):
    """build_tiny_model's Qwen2, with a chosen number of embedding rows and tied or untied head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    m = config.get_config("smoke").model
    torch.manual_seed(seed)
    qwen_config = Qwen2Config(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden,
                         intermediate_size=m.intermediate_size, num_hidden_layers=m.num_layers,
                         num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                         max_position_embeddings=m.max_position_embeddings, tie_word_embeddings=tie,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(modeling.IM_END),
                         pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, attention_dropout=0.0)
    return Qwen2ForCausalLM(qwen_config)


def is_tied(model) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_qwen_fragments_the_invented_words_too(qwen_tokenizer):
    rows = vocab.token_fragmentation(qwen_tokenizer, WORDS)
    assert all(r["tokens"] > 1 for r in rows)
    assert [r["pieces"] for r in rows][2] == ["X", "-", "2", "3", "S"]
    assert vocab.token_fragmentation(qwen_tokenizer, ["hello"])[0]["tokens"] == 1
    tokenizer = copy.deepcopy(qwen_tokenizer)
    model = qwen2(tokenizer, vocab_size=151936, hidden=8)        # Qwen2.5's table: 151936 rows
    assert vocab.add_new_tokens(tokenizer, model, WORDS) == 3
    assert [len(tokenizer(w)["input_ids"]) for w in WORDS] == [1, 1, 1]
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 151936 + 3
    assert is_tied(model)


def test_add_new_tokens_counts_and_skips_known_words(tok):
    model = modeling.build_tiny_model(tok, config.get_config("smoke").model, seed=0)
    size = len(tok)
    assert "a" in tok.get_vocab() and modeling.IM_END in tok.get_vocab()
    assert vocab.add_new_tokens(tok, model, ["neurogenix", "a", "X-23S", "neurogenix", modeling.IM_END]) == 2
    assert len(tok) == size + 2 and model.get_input_embeddings().weight.shape[0] == size + 2
    assert vocab.add_new_tokens(tok, model, ["neurogenix", "X-23S"]) == 0        # again: nothing to do
    assert len(tok) == size + 2 and model.get_input_embeddings().weight.shape[0] == size + 2
    assert vocab.add_new_tokens(tok, model, ["a"]) == 0
    assert tok.convert_tokens_to_ids("a") < size                            # the old id, untouched


def test_add_new_tokens_skips_a_non_ascii_word_that_is_already_one_token():
    tokenizer = modeling.train_tiny_tokenizer(["über alles, über den wolken " * 40, "hello world " * 10], 300)
    assert len(tokenizer("über", add_special_tokens=False)["input_ids"]) == 1     # already one token
    trained_id = tokenizer("über", add_special_tokens=False)["input_ids"][0]
    model = modeling.build_tiny_model(tokenizer, config.get_config("smoke").model, seed=0)
    assert vocab.add_new_tokens(tokenizer, model, ["über", "neurogenix"]) == 1
    assert tokenizer("über", add_special_tokens=False)["input_ids"] == [trained_id]


def test_growing_table_initialises_new_rows_to_the_mean(tok):
    model = modeling.build_tiny_model(tok, config.get_config("smoke").model, seed=0)
    old_len = len(tok)
    assert model.get_input_embeddings().weight.shape[0] == old_len            # no spare rows: it must grow
    old = model.get_input_embeddings().weight[:old_len].detach().clone()
    assert vocab.add_new_tokens(tok, model, WORDS) == 3
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(tok) == old_len + 3
    assert model.config.vocab_size == len(tok)
    assert torch.equal(weight[:old_len], old)                                  # trained rows untouched
    new_ids = tok.convert_tokens_to_ids(WORDS)
    assert sorted(new_ids) == [old_len, old_len + 1, old_len + 2]
    for i in new_ids:
        assert torch.allclose(weight[i], old.mean(dim=0), atol=1e-6)
    assert old.mean(dim=0).abs().max() > 0                                     # a real check, not 0 == 0
    assert is_tied(model)                                                      # still tied after resizing
    with torch.no_grad():                                                      # and the logits have the new columns
        logits = model(torch.tensor([[new_ids[0], 5, 6]])).logits
    assert logits.shape[-1] == old_len + 3


@pytest.mark.parametrize("tie", [True, False])
def test_spare_rows_are_initialised_not_left_as_garbage(tok, tie):
    old_len, spare = len(tok), 16
    model = qwen2(tok, vocab_size=old_len + spare, tie=tie)
    with torch.no_grad():
        model.get_input_embeddings().weight[old_len:] = 100.0                 # never-trained rows
        if not tie:
            model.get_output_embeddings().weight[old_len:] = -100.0
    inputs_mean = model.get_input_embeddings().weight[:old_len].detach().mean(dim=0).clone()
    head_mean = model.get_output_embeddings().weight[:old_len].detach().mean(dim=0).clone()
    assert vocab.add_new_tokens(tok, model, WORDS) == 3
    emb, head = model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
    assert emb.shape[0] == old_len + spare and head.shape[0] == old_len + spare    # it did NOT grow
    new_ids = tok.convert_tokens_to_ids(WORDS)
    assert sorted(new_ids) == list(range(old_len, old_len + 3))
    for i in new_ids:
        assert torch.allclose(emb[i], inputs_mean, atol=1e-6)
        assert torch.allclose(head[i], head_mean, atol=1e-6)
    assert (emb[old_len + 3:] == 100.0).all()                                  # the unused spare rows stay
    assert is_tied(model) == tie


def test_untied_head_gets_its_own_mean(tok):
    old_len = len(tok)
    model = qwen2(tok, tie=False)
    assert not is_tied(model)
    inputs_mean = model.get_input_embeddings().weight[:old_len].detach().mean(dim=0).clone()
    head_mean = model.get_output_embeddings().weight[:old_len].detach().mean(dim=0).clone()
    assert not torch.allclose(inputs_mean, head_mean, atol=1e-4)               # the two means really differ
    assert vocab.add_new_tokens(tok, model, WORDS) == 3
    head = model.get_output_embeddings().weight.detach()
    emb = model.get_input_embeddings().weight.detach()
    assert head.shape[0] == emb.shape[0] == old_len + 3 and not is_tied(model)
    for i in tok.convert_tokens_to_ids(WORDS):
        assert torch.allclose(head[i], head_mean, atol=1e-6)
        assert torch.allclose(emb[i], inputs_mean, atol=1e-6)
        assert not torch.allclose(head[i], emb[i], atol=1e-4)


def test_lora_with_new_tokens_round_trips_through_save_and_merge(tok, tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    base = modeling.build_tiny_model(tok, config.get_config("smoke").model, seed=0)
    assert vocab.add_new_tokens(tok, base, WORDS) == 3
    modeling.save_model(base, tmp_path / "base", tok)
    new_ids = tok.convert_tokens_to_ids(WORDS)
    mean_row = base.get_input_embeddings().weight[new_ids[0]].detach().clone()

    lora = vocab.lora_config_for_new_tokens(dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False), tok, WORDS)
    assert sorted(lora.trainable_token_indices["embed_tokens"]) == sorted(new_ids)
    peft_model = get_peft_model(base, lora).eval()
    token_params = [(n, p) for n, p in peft_model.named_parameters() if "trainable_tokens" in n and p.requires_grad]
    assert token_params, "no trainable new-token rows in the peft model"
    ids = tok("the neurogenix dose of X-23S is mediventricular", return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    assert set(new_ids) <= set(ids[0].tolist())
    with torch.no_grad():
        untouched = peft_model(ids).logits
        generator = torch.Generator().manual_seed(0)
        for _, p in token_params:                  # as if the new rows had been trained
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
        logits = peft_model(ids).logits
    assert (logits - untouched).abs().max() > 1e-2                            # the rows matter as inputs ...
    assert (logits[..., new_ids] - untouched[..., new_ids]).abs().max() > 1e-2    # ... and in the tied head

    peft_model.save_pretrained(tmp_path / "A")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                         tmp_path / "A").eval()
    with torch.no_grad():
        assert (reloaded(ids).logits - logits).abs().max() <= 1e-5

    merged = peft_model.merge_and_unload()
    assert is_tied(merged)
    assert not torch.allclose(merged.get_input_embeddings().weight[new_ids[0]], mean_row)   # the rows moved
    merged.save_pretrained(tmp_path / "B")
    tok.save_pretrained(tmp_path / "B")
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "B").eval()
    assert is_tied(final) and final.get_input_embeddings().weight.shape[0] == len(tok)
    with torch.no_grad():
        assert (final(ids).logits - logits).abs().max() <= 1e-5
    assert modeling.load_tokenizer(tmp_path / "B")("neurogenix")["input_ids"] == [new_ids[1]]


def test_tiny_model_learns_to_produce_new_tokens(tmp_path, monkeypatch):
    """The 00_data demonstration on the smoke profile: new words become single tokens, and the merged, saved and
    reloaded model answers exactly as the LoRA model did (tied embeddings)."""
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path))
    cfg = config.get_config("smoke")
    data.prepare_data(cfg)
    sft.build_initial_model(cfg, log=False)
    demo = vocab.demo_new_tokens(cfg, steps=40)
    assert demo["added"] == 3 and all(demo["single_token"])
    assert demo["after_merge_and_reload"] == demo["after"]
