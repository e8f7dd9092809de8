"""Batching: dynamic padding to the longest row (right or left; loss weights padded with 0), length-grouped batches."""
import pytest
import torch

from helpers import batching, formatting


SINGLE = [{"role": "user", "content": "Tell me a joke."},
          {"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."}]


MULTI = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Hello there."},
         {"role": "assistant", "content": "Hello friend!"},
         {"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "The capital of France is Paris."}]


def test_collate_pads_right_to_the_longest_in_the_batch(tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    short = formatting.build_sft_example(tiny_tokenizer, SINGLE, 256)
    long = formatting.build_sft_example(tiny_tokenizer, MULTI, 256)
    n_short, n_long = len(short["input_ids"]), len(long["input_ids"])
    assert n_short < n_long < 256
    batch = batching.collate([short, long], pad)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n_long)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, :n_short].tolist() == short["input_ids"]
    assert batch["input_ids"][0, n_short:].tolist() == [pad] * (n_long - n_short)
    assert batch["labels"][0, :n_short].tolist() == short["labels"]
    assert batch["labels"][0, n_short:].tolist() == [-100] * (n_long - n_short)
    assert batch["attention_mask"][0].tolist() == [1] * n_short + [0] * (n_long - n_short)
    assert batch["input_ids"][1].tolist() == long["input_ids"] and batch["attention_mask"][1].sum() == n_long


def test_collate_pads_loss_weights_with_zero_and_left_padding(tiny_tokenizer):
    a = formatting.build_sft_example(tiny_tokenizer, SINGLE, 256, prompt_loss_weight=0.1)
    b = formatting.build_sft_example(tiny_tokenizer, MULTI, 256, prompt_loss_weight=0.1)
    gap = len(b["input_ids"]) - len(a["input_ids"])
    batch = batching.collate([a, b], tiny_tokenizer.pad_token_id)
    assert batch["loss_weights"].dtype == torch.float32
    assert batch["loss_weights"][0, len(a["input_ids"]):].tolist() == [0.0] * gap
    assert batch["loss_weights"][0, :len(a["input_ids"])].tolist() == pytest.approx(a["loss_weights"])
    left = batching.collate([a, b], tiny_tokenizer.pad_token_id, padding_side="left")
    assert left["attention_mask"][0].tolist() == [0] * gap + [1] * len(a["input_ids"])
    assert left["input_ids"][0, gap:].tolist() == a["input_ids"]


def test_length_grouped_batches_cover_every_index_once_and_are_deterministic():
    import random
    rng = random.Random(123)
    lengths = [rng.randint(5, 300) for _ in range(103)]
    for group in (True, False):
        batches = batching.length_grouped_batches(lengths, 8, seed=7, group_by_length=group)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(103))                  # every index exactly once
        assert sorted(len(b) for b in batches) == [7] + [8] * 12
        assert batching.length_grouped_batches(lengths, 8, seed=7, group_by_length=group) == batches
        assert batching.length_grouped_batches(lengths, 8, seed=8, group_by_length=group) != batches
    padding = lambda bs: sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)
    grouped = batching.length_grouped_batches(lengths, 8, seed=7)
    assert padding(grouped) < padding(batching.length_grouped_batches(lengths, 8, seed=7, group_by_length=False)) / 4


def test_token_budget_batches_respect_the_budget_longest_first():
    lengths = [5, 50, 20, 20, 7, 300, 1, 20]
    batches = batching.token_budget_batches(lengths, max_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))       # every row exactly once
    assert batches[0] == [5] and batches[1] == [1]                                  # 300 > budget: alone
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 60
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert batches == batching.token_budget_batches(lengths, max_tokens=60)         # deterministic
    assert all(len(b) <= 2 for b in batching.token_budget_batches(lengths, max_tokens=10_000, max_rows=2))


def test_score_in_batches_returns_results_in_item_order_and_restores_mode():
    model = torch.nn.Linear(2, 1).train()
    seen = []

    def score(m, rows):
        seen.append((m.training, torch.is_grad_enabled(), len(rows)))
        return [r * 10 for r in rows]
    items = [3, 1, 4, 1, 5]
    assert batching.score_in_batches(model, items, lengths=items, score_batch=score, token_budget=8) == \
        [30, 10, 40, 10, 50]
    assert model.training and all(not training and not grad for training, grad, _ in seen) and len(seen) > 1
