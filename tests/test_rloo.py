"""RLOO: leave-one-out advantages and a toy where the update provably raises the expected reward."""
import pytest
import torch

from helpers import config, logprobs, modeling, rloo


def test_advantages_hand_computed_grid():
    rewards = torch.tensor([[1.0, 0.0, 0.1], [0.1, 0.1, 0.1]])
    expected = torch.tensor([[1.0 - 0.05, 0.0 - 0.55, 0.1 - 0.5], [0.0, 0.0, 0.0]])
    assert torch.allclose(rloo.rloo_advantages(rewards), expected, atol=1e-6)


def test_advantages_need_two_samples():
    with pytest.raises(ValueError):
        rloo.rloo_advantages(torch.ones(3, 1))


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
        advantages = rloo.rloo_advantages(reward[samples])
        loss = -(advantages * dist.log_prob(samples.T).T).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert start == pytest.approx(0.24)
    assert expected() > 0.9


def test_rloo_loss_is_the_same_on_the_full_sequence_path(tiny_tokenizer):
    """With gradient checkpointing (no KV cache) RLOO scores full sequences; same samples, same loss."""
    cfg = config.get_config("smoke")
    model = modeling.build_tiny_model(tiny_tokenizer, cfg.model, seed=0)
    tasks = [{"prompt": [{"role": "user", "content": f"What is {i} + 2?"}], "answer": str(i + 2)} for i in range(3)]
    reward_fn = lambda prompts, completions, rows: [float(len(c) % 3) for c in completions]
    losses = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        assert logprobs.can_share_prompt(model) is not checkpointing
        torch.manual_seed(0)
        loss, _ = rloo.make_rloo_loss(cfg, tiny_tokenizer, reward_fn, reference=model)(model, {"tasks": tasks})
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    assert losses[0] != 0.0
