"""Scores: pass@k and best-of-n by hand."""
import pytest

from helpers import config, scoring


@pytest.mark.parametrize("n, c, k, expected", [
    (8, 0, 1, 0.0),          # nothing correct: never passes
    (8, 8, 4, 1.0),          # everything correct
    (4, 1, 1, 0.25),         # 1 − C(3,1)/C(4,1) = 1 − 3/4
    (4, 1, 2, 0.5),          # 1 − C(3,2)/C(4,2) = 1 − 3/6
    (5, 2, 2, 0.7),          # 1 − C(3,2)/C(5,2) = 1 − 3/10
    (8, 2, 4, 1 - 15 / 70),  # 1 − C(6,4)/C(8,4)
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert scoring.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 2, 3), (4, 1, 4), (8, 5, 4), (2, 1, 2)])
def test_pass_at_k_is_one_when_every_k_subset_holds_a_correct_sample(n, c, k):
    assert n - c < k
    assert scoring.pass_at_k(n, c, k) == 1.0


def test_pass_at_1_is_the_plain_accuracy():
    assert [scoring.pass_at_k(8, c, 1) for c in range(9)] == pytest.approx([c / 8 for c in range(9)])


SCORES = [[0.1, 0.9, 0.5, 0.2],
          [0.8, 0.3, 0.8, 0.1],     # a tie at n=4 between sample 0 (wrong) and sample 2 (right): the first wins
          [0.2, 0.2, 0.9, 0.95]]    # a tie at n=2 (first wins: right); the best of all four is only seen at n=4


CORRECT = [[0, 1, 0, 0],
           [0, 1, 1, 0],
           [1, 0, 0, 1]]


@pytest.mark.parametrize("n, expected", [
    (1, 1 / 3),   # picks sample 0 everywhere: 0, 0, 1
    (2, 2 / 3),   # picks 1, 0 (0.8 > 0.3), 0 (tie → first): 1, 0, 1
    (3, 1 / 3),   # picks 1, 0, 2: 1, 0, 0
    (4, 2 / 3),   # picks 1, 0 (tie with 2 → first), 3: 1, 0, 1
])
def test_best_of_n_by_hand(n, expected):
    assert scoring.best_of_n(SCORES, CORRECT, n) == pytest.approx(expected)


def test_best_of_n_uses_only_the_first_n_samples():
    scores = [[0.5, 0.1, 9.0], [0.2, 0.7, 0.1]]
    correct = [[1, 0, 0], [0, 1, 1]]
    assert scoring.best_of_n(scores, correct, 2) == 1.0      # sample 2 of the first prompt (wrong, 9.0) is not seen
    assert scoring.best_of_n(scores, correct, 3) == 0.5
    assert scoring.best_of_n(scores, [[0.5, 0.25, 0], [0, 1.0, 1]], 2) == pytest.approx(0.75)   # graded quality


def test_base_copying_reads_the_equation_a_base_model_continues_with(output_dir, monkeypatch):
    """A stand-in model that continues every restatement with a fixed text: both numbers copied and right, copied
    but wrong, or not copied — counted as such."""
    import torch
    from helpers import data, generation, scoring
    cfg = config.get_config("smoke")
    data.write_dataset(cfg, "countdown", {"test": [{"nums": [17, 2], "target": 34}, {"nums": [3, 4], "target": 7},
                                                   {"nums": [5, 6], "target": 1}]}, source="unit test")
    continuations = iter([" 17 * 2 = 34.", " 3 - 4 = 7.", " 5 - 7 = 2."])

    class Tokenizer:
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2, 3]}

        def decode(self, ids, skip_special_tokens=True):
            return next(continuations)

    class Model(torch.nn.Linear):
        def generate(self, input_ids, attention_mask, **kwargs):
            return torch.zeros(len(input_ids), input_ids.shape[1] + 2, dtype=torch.long)
    monkeypatch.setattr(generation, "merged_adapters", lambda model: __import__("contextlib").nullcontext())
    got = scoring.base_copying(Model(1, 1), Tokenizer(), cfg)
    assert got == {"copies": 2 / 3, "solves": 1 / 3}


def test_a_stage_evaluation_decodes_the_curve_rows_in_a_call_of_their_own(tiny_tokenizer, lively_model, monkeypatch):
    """RLOO's and RFT's curves score the first `curve_rows` Countdown tasks; a stage's evaluation reuses its first
    answers as the curve's last point, so it decodes them batched exactly as a curve point does."""
    cfg = config.get_config("smoke", eval__countdown_rows=8, eval__curve_rows=3)
    tasks = [{"prompt": [{"role": "user", "content": "make " + "1 " * (i % 4) + f"{i} from {i} and {i + 1}"}],
              "target": i, "nums": [i, i + 1]} for i in range(8)]       # prompts of several lengths
    monkeypatch.setattr(scoring, "countdown_tasks", lambda c, split, rows: tasks[:rows])
    calls, real = [], scoring.generate_eval
    monkeypatch.setattr(scoring, "generate_eval", lambda m, t, prompts, e: calls.append(len(prompts)) or
                        real(m, t, prompts, e))
    tasks, answers, _ = scoring.greedy_countdown(lively_model, tiny_tokenizer, cfg)
    assert calls == [3, 5] and len(answers) == 8
    assert scoring.greedy_countdown(lively_model, tiny_tokenizer, cfg, rows=3)[1] == answers[:3]
    assert calls[-1] == 3
