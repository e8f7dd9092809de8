"""RLOO: leave-one-out advantages and a toy where the update provably raises the expected reward."""
import pytest
import torch

import helpers as H


def test_advantages_hand_computed_grid():
    rewards = torch.tensor([[1.0, 0.0, 0.1], [0.1, 0.1, 0.1]])
    expected = torch.tensor([[1.0 - 0.05, 0.0 - 0.55, 0.1 - 0.5], [0.0, 0.0, 0.0]])
    assert torch.allclose(H.rloo_advantages(rewards), expected, atol=1e-6)


def test_advantages_need_two_samples():
    with pytest.raises(ValueError):
        H.rloo_advantages(torch.ones(3, 1))


def test_rloo_raises_expected_reward_on_a_bandit():
    """A softmax policy over 5 answers, reward 1 for answer 3 only: the RLOO loss
    −mean A_i log π(y_i) must raise the expected reward."""
    torch.manual_seed(0)
    logits = torch.zeros(1, 5, requires_grad=True)
    reward = torch.tensor([0.0, 0.1, 0.1, 1.0, 0.0])
    optimizer = torch.optim.SGD([logits], lr=0.5)
    expected = lambda: float((logits.softmax(-1) * reward).sum())
    start = expected()
    for _ in range(50):
        dist = torch.distributions.Categorical(logits=logits.expand(8, 5))   # 8 prompts (same), k = 4
        samples = dist.sample((4,)).T                                         # [8, 4]
        advantages = H.rloo_advantages(reward[samples])
        loss = -(advantages * dist.log_prob(samples.T).T).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert start == pytest.approx(0.24)
    assert expected() > 0.9


def test_sample_completions_returns_exact_sampled_ids():
    cfg = H.get_config("smoke")
    world = H.build_tiny_world(cfg.data)
    tokenizer = H.train_tiny_tokenizer([r["text"] for r in world["pretrain"]["train"]], cfg.model.vocab_size)
    model = H.build_tiny_model(tokenizer, cfg.model, seed=0)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    torch.manual_seed(0)
    samples = H.sample_completions(model, tokenizer, prompts, k=3, max_new_tokens=6, temperature=1.0)
    assert len(samples) == 6
    for i, s in enumerate(samples):
        prompt_text = H.render_chat(tokenizer, prompts[i // 3], add_generation_prompt=True)
        assert s["prompt_ids"] == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        assert 1 <= len(s["response_ids"]) <= 6
        stops = set(H.stop_token_ids(tokenizer))
        assert not any(t in stops for t in s["response_ids"][:-1])    # cut right after the first stop token


def test_shared_prompt_logps_equal_full_sequences_in_value_and_gradient(tiny_tokenizer):
    """Running each prompt once and repeating its KV cache k times must not change log π(y|x) or its gradient."""
    cfg = H.get_config("smoke")
    model = H.build_tiny_model(tiny_tokenizer, cfg.model, seed=0)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}],
               [{"role": "user", "content": "Which number is the largest: 4, 7, 1?"}]]
    torch.manual_seed(0)
    samples = H.sample_completions(model, tiny_tokenizer, prompts, k=3, max_new_tokens=8, temperature=1.0)
    for i, s in enumerate(samples):                                   # responses of different lengths: right padding
        s["response_ids"] = s["response_ids"][:3 + i % 4]
    assert len({len(s["prompt_ids"]) for s in samples}) == 2          # prompts of different lengths: left padding
    weights = torch.linspace(-1, 1, len(samples))
    full = H.sequence_logps(model, H.collate(H.sample_rows(samples), tiny_tokenizer.pad_token_id))
    (weights * full).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared = H.shared_prompt_logps(model, samples, 3, tiny_tokenizer.pad_token_id)
    (weights * shared).sum().backward()
    assert torch.allclose(full, shared, atol=1e-4)
    for p, g in zip(model.parameters(), full_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_rloo_loss_is_the_same_on_the_full_sequence_path(tiny_tokenizer):
    """With gradient checkpointing (no KV cache) RLOO scores full sequences; same samples, same loss."""
    cfg = H.get_config("smoke")
    model = H.build_tiny_model(tiny_tokenizer, cfg.model, seed=0)
    tasks = [{"prompt": [{"role": "user", "content": f"What is {i} + 2?"}], "answer": str(i + 2)} for i in range(3)]
    reward_fn = lambda prompts, completions, rows: [float(len(c) % 3) for c in completions]
    losses = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        assert H.can_share_prompt(model) is not checkpointing
        torch.manual_seed(0)
        loss, _ = H.make_rloo_loss(cfg, tiny_tokenizer, reward_fn, reference=model)(model, {"tasks": tasks})
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    assert losses[0] != 0.0
