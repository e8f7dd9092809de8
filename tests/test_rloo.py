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


def test_mixed_batches_reward_each_row_by_its_own_track():
    """Countdown rows by the rule, instruction rows by exact match (tiny) or by the reward model — never crossed."""
    cfg = config.get_config("smoke")
    countdown_task = {"track": "countdown", "nums": [3, 4], "target": 7, "prompt": []}
    instruction_task = {"track": "instructions", "reference": "12", "prompt": [{"role": "user", "content": "7+5?"}]}
    tasks = [countdown_task, instruction_task, countdown_task, instruction_task]
    completions = ["<answer> 3 + 4 </answer>", "12", "<answer> 12 </answer>", "<answer> 3 + 4 </answer>"]
    verifier = rloo.make_reward_fn(cfg)
    assert verifier([t["prompt"] for t in tasks], completions, tasks) == [1.0, 1.0, 0.1, 0.0]

    scored = []

    def fake_scores(model, tokenizer, prompts, responses, *args):
        scored.extend(responses)
        return [len(r) / 10 for r in responses]
    cfg.rloo = config.replace_config(cfg.rloo, instruction_reward="reward_model")
    original, rloo.score_responses = rloo.score_responses, fake_scores
    try:
        by_model = rloo.make_reward_fn(cfg, reward_model=("tokenizer", "model"))
        assert by_model([t["prompt"] for t in tasks], completions, tasks) == [1.0, 0.2, 0.1, 2.4]
    finally:
        rloo.score_responses = original
    assert scored == ["12", "<answer> 3 + 4 </answer>"]            # only the instruction rows reach the model
    with pytest.raises(ValueError, match="needs the reward model"):
        rloo.make_reward_fn(cfg)


def test_rl_tasks_mix_the_tracks_in_the_configured_share(tiny_tokenizer, output_dir):
    from helpers import data
    cfg = config.get_config("smoke")
    data.prepare_data(cfg)
    tasks = rloo.rl_tasks(cfg, tiny_tokenizer)
    tracks = [t["track"] for t in tasks]
    assert tracks.count("countdown") == cfg.data.countdown_train
    share = cfg.rloo.instruction_share                 # instruction prompts / all prompts
    assert 0 < share < 1 and tracks.count("instructions") == round(cfg.data.countdown_train * share / (1 - share))
    assert tracks.count("instructions") / len(tracks) == pytest.approx(share, abs=0.01)
    assert all(t["reference"] for t in tasks if t["track"] == "instructions")
    cfg.rloo = config.replace_config(cfg.rloo, instruction_share=0.0)
    assert {t["track"] for t in rloo.rl_tasks(cfg, tiny_tokenizer)} == {"countdown"}


def test_rloo_loss_takes_advantages_from_kl_shaped_rewards():
    from helpers.rloo import rloo_advantages, rloo_loss
    logps = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    rewards, kl = torch.tensor([1.0, 0.0, 0.1, 0.1]), torch.tensor([2.0, 0.0, 1.0, 0.0])
    plain = rloo_loss(logps, rewards, k=2)
    assert torch.allclose(plain, -(rloo_advantages(rewards.view(2, 2)).flatten() * logps).sum())
    shaped = rloo_loss(logps, rewards, k=2, kl=kl, kl_coef=0.5)      # rewards − 0.5·kl = [0, 0, −0.4, 0.1]
    assert torch.allclose(shaped, -(torch.tensor([0.0, 0.0, -0.5, 0.5]) * logps).sum())
    shaped.backward()                       # the advantages are numbers: the gradient is −A_i per log-prob
    assert torch.allclose(logps.grad, torch.tensor([0.0, 0.0, 0.5, -0.5]))
def test_sample_table_cells_keep_a_row_whole():
    """A completion with a pipe (or a newline) stays one cell of its row in TensorBoard's Markdown table."""
    import markdown
    row = f"| {rloo.table_cell('a | b')} | {rloo.table_cell('line1' + chr(10) + 'x|y')} | 0.50 |"
    html = markdown.markdown("| prompt | completion | reward |\n|---|---|---|\n" + row, extensions=["tables"])
    assert html.count("<td>") == 3 and "<td>0.50</td>" in html
    assert "a | b" in html and "x|y" in html


def test_memory_sized_rollouts_draw_a_whole_step_in_one_call(lively_model, tiny_tokenizer, monkeypatch):
    """With `eval.sampling_memory` on a GPU, a step's micro-batches are sampled in as few calls as the free memory
    holds (here: a pretended GPU); on the CPU (no free GPU memory) each micro-batch samples at its own turn."""
    from helpers import generation
    cfg = config.get_config("smoke", eval__sampling_memory=0.5, rloo__batch_size=2, rloo__k=2, rloo__max_new_tokens=4)
    task = lambda i: {"track": "instructions", "reference": str(i), "prompt": [{"role": "user", "content": f"{i}+1?"}]}
    batches = [{"tasks": [task(0), task(1)]}, {"tasks": [task(2), task(3)]}]
    calls = []
    real = rloo.sample_completions
    monkeypatch.setattr(rloo, "sample_completions", lambda m, t, prompts, *a: calls.append(len(prompts)) or
                        real(m, t, prompts, *a))
    for free, expected in ((None, [2, 2]), (10 ** 9, [4])):
        calls.clear()
        monkeypatch.setattr(generation, "free_gpu_bytes", lambda device: free)
        loss_fn = rloo.make_rloo_loss(cfg, tiny_tokenizer, rloo.make_reward_fn(cfg))
        loss_fn.prepare_step(lively_model, batches)
        for batch in batches:
            loss, metrics = loss_fn(lively_model, batch)
            assert torch.isfinite(loss) and metrics["rloo/response_length"] > 0
        assert calls == expected                       # prompts per sampling call


def test_memory_rows_hand_computed(lively_model, monkeypatch):
    """Rows of 100 tokens in half of 100 MB: the smoke model's KV cache is 2 layers × (K, V) × 1 head × 16 × 4 bytes
    = 256 bytes a token, its step's logits 3 × 400 × 4 = 4,800 bytes a row → 5e7 // 30,400 = 1,644 rows."""
    from helpers import generation
    assert generation.kv_bytes_per_token(lively_model) == 256
    assert generation.memory_rows(lively_model, 100, 0.5) is None          # the CPU: the configured sizes hold
    monkeypatch.setattr(generation, "free_gpu_bytes", lambda device: 10 ** 8)
    assert generation.memory_rows(lively_model, 100, 0.5) == 1644
    assert generation.memory_rows(lively_model, 100, None) is None
