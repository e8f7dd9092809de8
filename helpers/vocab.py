"""Domain vocabulary: how words outside the tokenizer's vocabulary fragment, adding them as tokens (with LoRA on
the new embedding rows), and a demo that the tiny model learns to produce them. Imports: lower modules only."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import Config, device, out_path, replace_config, seed_everything
from .modeling import add_lora, load_model, load_tokenizer, save_model
from .formatting import build_sft_example
from .training import train
from .sft import sft_collate, sft_loss
from .generation import generate_responses


def token_fragmentation(tokenizer, words) -> list[dict]:
    """How many tokens each word costs, standalone and mid-sentence (after a space)."""
    rows = []
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        spaced = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        rows.append({"word": word, "tokens": len(ids), "tokens_after_space": len(spaced),
                     "pieces": [tokenizer.decode([i]) for i in ids]})
    return rows


def add_new_tokens(tokenizer, model, words) -> int:
    """Add `words` as tokens; grow the embedding table only when needed; initialise every new row — of the input
    embeddings, and of the output head when it is not tied — to the mean of the trained rows.

    Qwen's tables have spare rows (151936 rows for ~151665 tokens): a new token may land on a row that exists but
    was never trained, so it is initialised whether or not the table grew. Tied embeddings stay tied.
    """
    # a word is new unless it already encodes as one token (byte-level vocabularies store "über" as "Ã¼ber")
    new = [w for w in dict.fromkeys(words) if len(tokenizer.tokenize(w)) != 1]
    trained_rows = len(tokenizer)          # rows below this were trained; above, spare or new
    added = tokenizer.add_tokens(new)
    if added == 0:
        return 0
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = tokenizer.convert_tokens_to_ids(new)
    with torch.no_grad():
        inputs = model.get_input_embeddings().weight
        inputs[new_ids] = inputs[:trained_rows].mean(dim=0)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != inputs.data_ptr():
            head.weight[new_ids] = head.weight[:trained_rows].mean(dim=0)
    return added


def lora_config_for_new_tokens(lora_cfg: dict, tokenizer, words):
    """A LoraConfig whose new-token embedding rows are trainable too (peft trainable_token_indices)."""
    from peft import LoraConfig
    ids = tokenizer.convert_tokens_to_ids(list(words))
    return LoraConfig(**{**lora_cfg, "trainable_token_indices": {"embed_tokens": ids}})


DOMAIN_FACTS = ("the middle heart chamber", "the nerve growth drug", "the test device")   # one per new token


def new_token_conversations(words, template: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": template.format(key=key)},
                          {"role": "assistant", "content": word}]} for word, key in zip(words, DOMAIN_FACTS)]


def demo_new_tokens(cfg: Config, steps: int = 160, seed: int = 0) -> dict:
    """Add cfg.new_tokens to the tiny base model, LoRA-train on a few conversations that answer with them (the new
    rows trainable), then check on held-out phrasings that the model produces each word as its single new token —
    and that save → merge → reload keeps that behaviour."""
    import tempfile
    words = list(cfg.new_tokens)[:len(DOMAIN_FACTS)]
    seed_everything(seed)
    base = out_path("checkpoints", cfg, "initial")
    tokenizer, model = load_tokenizer(base), load_model(base).to(device())
    added = add_new_tokens(tokenizer, model, words)
    lora = lora_config_for_new_tokens(dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                           task_type="CAUSAL_LM"), tokenizer, words)
    model = add_lora(model, lora)
    train_rows = (new_token_conversations(words, "What is the name of {key}?")
                  + new_token_conversations(words, "Tell me the term for {key}."))
    test_rows = new_token_conversations(words, "Which word means {key}?")
    examples = [build_sft_example(tokenizer, r["messages"], 64) for r in train_rows] * 8
    answer = lambda m: generate_responses(m, tokenizer, [r["messages"][:1] for r in test_rows], max_new_tokens=4,
                                          progress=False)
    before = answer(model)
    train_cfg = replace_config(cfg.sft, max_steps=steps, batch_size=8, lr=5e-3, warmup_steps=5, eval_every=10**9,
                               save_every=10**9, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, tokenizer, examples, train_cfg, sft_loss, sft_collate(tokenizer.pad_token_id),
              Path(tmp) / "run", restart=True, desc="new tokens")
        after = answer(model)
        merged_dir = save_model(model, Path(tmp) / "merged", tokenizer, merge=True)
        reloaded_tok, reloaded = load_tokenizer(merged_dir), load_model(merged_dir).to(device())
        reloaded_answers = generate_responses(reloaded, reloaded_tok, [r["messages"][:1] for r in test_rows],
                                              max_new_tokens=4, progress=False)
    single = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in words]
    return {"added": added, "words": words, "prompts": [r["messages"][0]["content"] for r in test_rows],
            "single_token": single, "before": before, "after": after,
            "after_merge_and_reload": reloaded_answers,
            "correct_after": sum(a == w for a, w in zip(after, words)) / len(words)}
