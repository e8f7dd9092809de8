"""Evaluation of every stage: the final-checkpoint rule and the win rate against a reference model."""
import json

import pandas as pd
import pytest

from helpers import config, data, evaluation, reward_model, sft


def test_choose_final_picks_the_max_and_the_later_row_on_ties():
    table = pd.DataFrame({"model": ["initial", "sft_masked", "sft_unmasked", "dpo", "rloo"],
                          "exact_match": [0.0, 0.50, 0.40, 0.50, 0.30],
                          "countdown_accuracy": [0.0, 0.10, 0.20, 0.05, 0.60],
                          "mean_quality": [0.0, 0.30, 0.30, 0.275, 0.45]})
    assert evaluation.choose_final(table, "exact_match") == "dpo"          # tie with sft_masked: the later row
    assert evaluation.choose_final(table, "countdown_accuracy") == "rloo"
    assert evaluation.choose_final(table.iloc[:4], "mean_quality") == "sft_unmasked"   # tie 0.30 / 0.30 → later
    with pytest.raises(ValueError, match="no_such_metric"):
        evaluation.choose_final(table, "no_such_metric")


def test_win_rate_against_a_reference_model(tmp_path, monkeypatch):
    """Win rate on the held-out preference prompts, judged by the reward model: a model against itself ties on every
    prompt, and a tie counts half."""
    import shutil
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path))
    cfg = config.get_config("smoke")
    data.prepare_data(cfg)
    initial = sft.build_initial_model(cfg, log=False)
    shutil.copytree(initial, config.out_path("checkpoints", cfg, "sft_masked"))
    reward_model.run_reward_model(cfg, log=False)
    cfg.eval.reference_model = str(initial)
    table, _ = evaluation.evaluate_all_stages(cfg, stages=("initial", "sft_masked"))
    assert list(table["win_rate"][:2]) == [0.5, 0.5]     # both are the reference model itself
    rows = [json.loads(line) for line in config.out_path("outputs", cfg, "initial", "responses.jsonl").open()]
    won = [r for r in rows if r["task"] == "win_rate"]
    prompts = [r["prompt"] for r in data.load_split(cfg, "preferences", "test")][:cfg.eval.win_rate_rows]
    assert [r["prompt"] for r in won] == prompts and all(r["win"] == 0.5 for r in won)
