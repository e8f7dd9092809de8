"""The demo's comparison: the same held-out measures for every checkpoint, read once and reused."""
import shutil

import pytest

from helpers import comparison, config, scoring


def test_evaluate_checkpoints_reuses_each_checkpoint_evaluation(output_dir, monkeypatch, chat_model_dir):
    cfg = config.get_config("smoke")
    for name in ("sft_masked", "sft_unmasked"):
        shutil.copytree(chat_model_dir, config.out_path("checkpoints", cfg, name))
    calls = []
    monkeypatch.setattr(scoring, "evaluate_model", lambda model, tok, c, path=None, records=None:
                        calls.append(1) or {"exact_match": 0.5})
    (output_dir / "data" / "smoke").mkdir(parents=True)
    first = comparison.evaluate_checkpoints(cfg, ["sft_masked", "sft_unmasked"])
    again = comparison.evaluate_checkpoints(cfg, ["sft_masked"])
    assert list(first.model) == ["sft_masked", "sft_unmasked"] and len(calls) == 2 and list(again.exact_match) == [0.5]


def test_countdown_changes_counts_lost_and_gained_tasks_and_missing_tags(monkeypatch):
    from helpers import comparison
    answers = {"a": [("<answer> 1 + 2 </answer>", 1.0), ("<answer> 2 </answer>", 0.1), ("x", 0.0)],
               "b": [("broken <answer", 0.0), ("<answer> 1 + 1 </answer>", 1.0), ("y", 0.0)]}
    records = {name: [{"task": "countdown", "nums": [1, 2], "target": 3, "response": r, "reward": w}
                      for r, w in rows] + [{"task": "instruction", "response": "z"}] for name, rows in answers.items()}
    monkeypatch.setattr(comparison, "evaluate_checkpoint", lambda cfg, name: ({}, records[name]))
    got = comparison.countdown_changes(None, "a", "b")
    assert (got["tasks"], got["lost"], got["gained"]) == (3, 1, 1)
    assert got["no_answer_tag"] == {"a": 1, "b": 2}
    assert got["examples"] == [{"task": "[1, 2] → 3", "a": "<answer> 1 + 2 </answer>", "b": "broken <answer"}]
    assert got["gained_examples"] == [{"task": "[1, 2] → 3", "a": "<answer> 2 </answer>",
                                       "b": "<answer> 1 + 1 </answer>"}]


def test_unfaithful_reasoning_counts_correct_answers_that_restate_another_target():
    from helpers.comparison import unfaithful_reasoning
    row = lambda think, reward: {"task": "countdown", "target": 261, "reward": reward,
                                 "response": f"<think> {think} </think>\n<answer> 9 * 29 </answer>"}
    records = [row("Numbers [9, 29] make 26: 9 * 29 = 261", 1.0), row("Numbers [9, 29] make 261: 9 * 29", 1.0),
               row("Numbers [9, 29] make 5: 9 - 4", 0.1), row("no restatement", 1.0)]
    got = unfaithful_reasoning(records)
    assert (got["correct"], got["wrong_target_in_think"]) == (3, 1) and "make 26:" in got["examples"][0]


def test_a_change_is_called_better_or_worse_only_beyond_chance():
    """A sign test on the tasks that changed, by hand: 11 gained and 4 lost is p = 2 × (1 + 15 + 105 + 455 + 1365) /
    2^15 = 0.118 (not clear); 10 gained and 0 lost is p = 2 / 2^10 = 0.002; one task lost of 200 is not "worse"."""
    assert comparison.sign_test(11, 4) == pytest.approx(2 * 1941 / 2 ** 15)
    assert comparison.sign_test(10, 0) == pytest.approx(2 / 2 ** 10)
    assert comparison.sign_test(0, 0) == 1.0 and comparison.sign_test(0, 1) == 1.0
    assert comparison.paired_verdict(11, 4).startswith("no clear change: 11 tasks gained, 4 lost")
    assert comparison.paired_verdict(0, 10).startswith("worse") and comparison.paired_verdict(10, 0).startswith(
        "improved")
    assert comparison.paired_verdict(0, 1).startswith("no clear change")
    assert comparison.paired_verdict(10, 0, unit="pair").startswith("improved: 10 pairs gained, 0 lost")


def test_a_difference_of_two_unpaired_shares_is_read_against_its_noise():
    """0.700 → 0.725 of 200 tasks: 2 × √((0.7·0.3 + 0.725·0.275) / 200) = 2 × 0.0451 = ±9.0 points — within noise;
    0.50 → 0.75 of 200 is +25 points, beyond it; the same fall is called worse."""
    assert comparison.share_difference(0.700, 0.725, 200) == (
        "+2.5 points; within noise (±9.0, 2 standard errors of such a difference)")
    assert "more than noise" in comparison.share_difference(0.50, 0.75, 200)
    assert "worse, beyond noise" in comparison.share_difference(0.75, 0.50, 200)


def test_stage_change_carries_a_verdict_on_both_tracks():
    by = {"a": {"exact_match": 0.780, "countdown_accuracy": 0.640},
          "b": {"exact_match": 0.815, "countdown_accuracy": 0.780}}
    line = comparison.stage_change(None, by, "a", "b", "exact_match",
                                   changed={"exact_match": (21, 14), "countdown_accuracy": (37, 9)})
    assert line.startswith("exact_match 0.780 → 0.815 (+3.5 points; no clear change: 21 tasks gained, 14 lost")
    assert "countdown_accuracy 0.640 → 0.780 (+14.0 points; improved: 37 tasks gained, 9 lost" in line
    assert "1 task gained" in comparison.paired_verdict(1, 2)
    # without saved answers (a report made from summaries alone) the numbers stand without a verdict
    assert comparison.stage_change(None, by, "a", "b", "exact_match") == \
        "exact_match 0.780 → 0.815 (+3.5 points); countdown_accuracy 0.640 → 0.780 (+14.0 points)"
