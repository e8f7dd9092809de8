"""Sequence log-probs: the shared-prompt path equals full sequences in value and gradient."""
import torch

from helpers import batching, config, generation, logprobs, modeling, rloo


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
