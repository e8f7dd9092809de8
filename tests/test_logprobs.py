"""Sequence log-probs: the shared-prompt path equals full sequences in value and gradient."""
import torch

from helpers import batching, config, generation, logprobs, modeling, rloo, sft


def test_shared_prompt_logps_equal_full_sequences_in_value_and_gradient(tiny_tokenizer):
    """Running each prompt once and repeating its KV cache k times must not change log π(y|x) or its gradient."""
    cfg = config.get_config("smoke")
    model = modeling.build_tiny_model(tiny_tokenizer, cfg.model, seed=0)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}],
               [{"role": "user", "content": "Which number is the largest: 4, 7, 1?"}]]
    torch.manual_seed(0)
    samples = generation.sample_completions(model, tiny_tokenizer, prompts, k=3, max_new_tokens=8, temperature=1.0)
    for i, s in enumerate(samples):                                   # responses of different lengths: right padding
        s["response_ids"] = s["response_ids"][:3 + i % 4]
    assert len({len(s["prompt_ids"]) for s in samples}) == 2          # prompts of different lengths: left padding
    weights = torch.linspace(-1, 1, len(samples))
    full = logprobs.sequence_logps(model, batching.collate(rloo.sample_rows(samples), tiny_tokenizer.pad_token_id))
    (weights * full).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared = logprobs.shared_prompt_logps(model, samples, 3, tiny_tokenizer.pad_token_id)
    (weights * shared).sum().backward()
    assert torch.allclose(full, shared, atol=1e-4)
    for p, g in zip(model.parameters(), full_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)


def full_logits_logps(model, batch):
    """The reference: every position's logits materialised, log_softmax, gather (what the chunked path avoids)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    token = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return token, labels != -100


def qwen_vocabulary_model(vocab_size=151_936, tie=True):
    """Qwen2.5's vocabulary size on a two-layer, 32-wide body: the projection is as wide as the real model's."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        tie_word_embeddings=tie, max_position_embeddings=128))


def random_batch(vocab, rows=3, length=12, seed=0):
    """Rows of different lengths (right padding), the first half of each row masked like a prompt."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for r in range(rows):
        n = length - 2 * r
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return batching.collate(examples, pad_token_id=0)


def grads_of(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_chunked_equals_full(model, batch, chunk_logits):
    token, mask = full_logits_logps(model, batch)
    full = (token * mask).sum(-1)
    weights = torch.tensor([1.0, -2.0, 0.5])[:len(full)]
    full_grads = grads_of(model, (weights * full).sum())
    saved, calls = logprobs.CHUNK_LOGITS, []
    logprobs.CHUNK_LOGITS = chunk_logits           # several chunks, the last one partial
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        chunked = logprobs.sequence_logps(model, batch)
        chunked_grads = grads_of(model, (weights * chunked).sum())
    finally:
        logprobs.CHUNK_LOGITS = saved
        hook.remove()
    trained = int((batch["labels"][:, 1:] != -100).sum())
    rows = chunk_logits // model.config.vocab_size
    assert calls[:-(-trained // rows)] == [rows] * (trained // rows) + ([trained % rows] if trained % rows else [])
    assert len(calls) == 2 * -(-trained // rows)      # each chunk projected again in backward, not kept
    assert torch.allclose(chunked, full.detach(), atol=1e-5)
    assert len(chunked_grads) == len(full_grads)
    for a, b in zip(chunked_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_logps_equal_full_logits_on_the_tiny_model(tiny_tokenizer):
    model = modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, seed=0)
    vocab = model.config.vocab_size
    assert_chunked_equals_full(model, random_batch(vocab), chunk_logits=5 * vocab)


def test_a_single_chunk_is_projected_once_and_equals_full_logits(tiny_tokenizer):
    """Positions that fit one chunk (every tiny batch) are not recomputed in backward: one head call, same numbers."""
    model = modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, seed=0)
    batch = random_batch(model.config.vocab_size)
    token, mask = full_logits_logps(model, batch)
    full_grads = grads_of(model, (token * mask).sum())
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        single = logprobs.sequence_logps(model, batch)
        grads = grads_of(model, single.sum())
    finally:
        hook.remove()
    assert len(calls) == 1
    assert torch.allclose(single, (token * mask).sum(-1).detach(), atol=1e-5)
    for a, b in zip(grads, full_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_logps_equal_full_logits_at_qwen_vocabulary_size():
    for tie in (True, False):
        model = qwen_vocabulary_model(tie=tie)
        assert_chunked_equals_full(model, random_batch(151_936), chunk_logits=4 * 151_936)


def test_sft_loss_and_held_out_loss_equal_full_logits(tiny_tokenizer):
    """Masked, unmasked and fractional weights: the chunked SFT loss is the full cross-entropy, value and gradient."""
    model = modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, seed=0)
    batch = random_batch(model.config.vocab_size)
    fractional = dict(batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100),
                      loss_weights=torch.where(batch["labels"] != -100, 1.0, 0.1) * batch["attention_mask"])
    for case in (batch, fractional):
        token, mask = full_logits_logps(model, case)
        weights = case["loss_weights"][:, 1:] if "loss_weights" in case else mask.float()
        full = -(token * weights).sum()
        full_grads = grads_of(model, full)
        chunked, _ = sft.sft_loss(model, case)
        assert torch.allclose(chunked, full.detach(), atol=1e-4)
        for a, b in zip(grads_of(model, chunked), full_grads):
            assert torch.allclose(a, b, atol=1e-5)
