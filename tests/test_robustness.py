"""make robustness: one seed for a whole chain, the cached and resumable runner, the summary (mean ± std, min–max),
the target checks per base model, and the sentence that places a run against the committed range."""
import json
import shutil

import pytest

from helpers import config, robustness


def row(seed, **values):
    base = {"sft_masked/exact_match": 0.6, "sft_masked/countdown_accuracy": 0.30, "dpo/exact_match": 0.80,
            "dpo/countdown_accuracy": 0.30, "reward_model/accuracy": 0.95, "dpo/preference_accuracy": 0.93,
            "rloo/exact_match": 0.80, "rloo/countdown_accuracy": 0.35, "rft/exact_match": 0.78,
            "rft/countdown_accuracy": 0.36}
    return {"seed": seed, **base, **values}


def test_a_seed_sets_the_base_model_and_every_stage():
    cfg = robustness.seeded(config.get_config("tiny"), 7)
    assert {getattr(cfg, s).seed for s in ("pretrain", "sft", "dpo", "reward", "rloo", "rft")} == {7}
    assert cfg.data.seed == 0 and config.get_config("tiny").pretrain.seed == 0      # the world and the preset stay


def test_every_target_is_checked_per_base_model():
    cfg = config.get_config("tiny")
    assert all(robustness.target_checks(cfg, row(1)).values())
    failed = robustness.target_checks(cfg, row(2, **{"rloo/countdown_accuracy": 0.27, "dpo/countdown_accuracy": 0.27,
                                                     "reward_model/accuracy": 0.89}))
    assert [name for name, ok in failed.items() if not ok] == [
        "final Countdown ≥ 0.3", "reward model ≥ 0.9", "DPO keeps Countdown (≥ −2 points)", "RLOO raises Countdown"]
    # at the allowance exactly: kept (−2.0 points), and RLOO's exact match within 2 points of DPO's
    edge = robustness.target_checks(cfg, row(3, **{"dpo/countdown_accuracy": 0.28, "rloo/exact_match": 0.78}))
    assert all(edge.values())


def test_the_summary_gives_mean_std_range_and_who_failed(output_dir):
    cfg = config.get_config("tiny")
    results = [row(1), row(2, **{"rloo/countdown_accuracy": 0.25}), row(3, **{"rloo/countdown_accuracy": 0.45})]
    per_seed, summary, targets = robustness.summarize(cfg, results)
    final = summary[(summary.stage == "rloo") & (summary.metric == "countdown_accuracy")].iloc[0]
    assert final["mean"] == pytest.approx(0.35) and final["std"] == pytest.approx(0.1)
    assert (final["min"], final["max"], final["seeds"]) == (0.25, 0.45, 3)
    line = targets[targets.target == "final Countdown ≥ 0.3"].iloc[0]
    assert line["base models meeting it"] == "2 of 3" and line["failed on seeds"] == "2"
    paths = robustness.write_robustness(cfg, results)
    assert paths["figure"].exists() and paths["summary"]["md"].exists()
    assert robustness.committed_range(cfg, "rloo", "countdown_accuracy") == (0.25, 0.45, 3)
    assert "inside the committed range 0.250 to 0.450 of 3 base models" in robustness.where_in_range(
        cfg, "rloo", "countdown_accuracy", 0.3)
    below = robustness.where_in_range(cfg, "rloo", "countdown_accuracy", 0.145)
    assert below.startswith("0.145 is below the committed range") and "docs/RESULTS.md" in below
    # one run's target table (05 and the report): read from its stage table and 03's preference summary
    import pandas as pd
    stages = pd.DataFrame([{"model": "sft_masked", "exact_match": 0.5, "countdown_accuracy": 0.3},
                           {"model": "dpo", "exact_match": 0.8, "countdown_accuracy": 0.25},
                           {"model": "rloo", "exact_match": 0.8, "countdown_accuracy": 0.145}])
    prefs = pd.DataFrame([{"model": "sft_masked", "preference_accuracy": 0.8, "reward_model_accuracy": float("nan")},
                          {"model": "dpo", "preference_accuracy": 0.95, "reward_model_accuracy": 0.92}])
    table = robustness.target_table(cfg, robustness.run_row(cfg, stages, prefs)).set_index("target")
    assert table.loc["final Countdown ≥ 0.3", "result"] == "FAIL"
    assert table.loc["final Countdown ≥ 0.3", "committed range over base models"] == "0.250 to 0.450 (3 base models)"
    assert table.loc["reward model ≥ 0.9", ["this run", "result"]].tolist() == ["0.920", "PASS"]
    assert table.loc["DPO keeps Countdown (≥ −2 points)", ["this run", "result"]].tolist() == ["-5.0 points", "FAIL"]
    assert table.loc["DPO ranks held-out pairs ≥ 0.9", "result"] == "PASS"


def test_the_runner_keeps_finished_seeds_and_reruns_changed_settings(output_dir, monkeypatch):
    cfg = config.get_config("smoke")
    ran = []
    monkeypatch.setattr(robustness, "run_chain", lambda cfg, seed, progress: ran.append(seed) or row(seed))
    robustness.run_robustness(cfg, progress=lambda *_: None)
    robustness.run_robustness(cfg, progress=lambda *_: None)
    assert ran == [1, 2]                                        # the second run read both from the cache
    cfg.rloo = config.replace_config(cfg.rloo, kl_coef=0.5)
    robustness.run_robustness(cfg, shard=(1, 2), progress=lambda *_: None)
    assert ran == [1, 2, 2]                                     # another setting: that seed again (its shard only)
    record = json.loads((output_dir / "evaluation_results" / "smoke" / "robustness_runs" / "seed_2.json").read_text())
    assert record["settings"]["rloo"]["kl_coef"] == 0.5 and record["machine"] and record["date"]


def test_a_round_goes_on_from_the_committed_records_on_another_machine(output_dir, monkeypatch):
    cfg = config.get_config("smoke")
    ran = []
    monkeypatch.setattr(robustness, "run_chain", lambda cfg, seed, progress: ran.append(seed) or row(seed))
    robustness.run_robustness(cfg, shard=(0, 2), progress=lambda *_: None, name="candidate")   # seed 1, then stop
    folder = output_dir / "evaluation_results" / "smoke" / "candidate_runs"
    for scratch in ("outputs", "checkpoints"):                  # a fresh clone elsewhere: only the records
        shutil.rmtree(output_dir / scratch, ignore_errors=True)
    monkeypatch.setattr(robustness, "machine", lambda: "another CPU")
    results = robustness.run_robustness(cfg, progress=lambda *_: None, name="candidate")
    assert ran == [1, 2] and [r["seed"] for r in results] == [1, 2]     # seed 1 kept from its record
    assert json.loads((folder / "seed_2.json").read_text())["machine"] == "another CPU"
    assert not (output_dir / "evaluation_results" / "smoke" / "robustness_runs").exists()   # the name kept apart


def test_the_whole_chain_runs_and_is_kept_on_a_rerun(output_dir, capsys, monkeypatch):
    """Two smoke base models end to end, then once more: every stage is kept, nothing trains again."""
    from helpers import data
    cfg = config.get_config("smoke")
    data.prepare_data(cfg)
    first = robustness.run_chain(cfg, 1, progress=lambda *_: None)
    assert 0 <= first["rloo/countdown_accuracy"] <= 1 and 0 <= first["reward_model/accuracy"] <= 1
    folder = output_dir / "checkpoints" / "smoke" / "robustness" / "seed_1"
    assert {p.name for p in folder.iterdir()} >= {"initial", "sft_masked", "dpo", "reward_model", "rloo", "rft"}
    capsys.readouterr()
    again = robustness.run_chain(cfg, 1, progress=lambda *_: None)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    out = capsys.readouterr().out
    assert "pretrain" not in out and "training it again" not in out
    # an interrupted stage of the same settings from the same start resumes; of other settings, starts afresh
    seeded = robustness.seeded(cfg, 1)                          # the settings run_chain trained seed 1 with
    assert robustness.held_run(seeded, "robustness/seed_1/dpo", "dpo", "robustness/seed_1/sft_masked") == "finished"
    other = config.replace_sections(seeded, dpo=config.replace_config(seeded.dpo, beta=0.5))
    assert robustness.held_run(other, "robustness/seed_1/dpo", "dpo", "robustness/seed_1/sft_masked") is None
    # RFT samples at RLOO's settings: another RLOO temperature trains RFT again too (it used to refuse the old run)
    hotter = config.replace_sections(seeded, rloo=config.replace_config(seeded.rloo,
                                                                        temperature=seeded.rloo.temperature + 0.3))
    assert robustness.held_run(seeded, "robustness/seed_1/rft", ("rft", "rloo"), "robustness/seed_1/dpo") == "finished"
    assert robustness.held_run(hotter, "robustness/seed_1/rft", ("rft", "rloo"), "robustness/seed_1/dpo") is None
    restarts = {}
    for stage in ("run_sft", "run_dpo", "run_reward_model", "run_rloo", "run_rft"):
        monkeypatch.setattr(robustness, stage, lambda c, *a, _s=stage, **k: restarts.update({_s: c.restart}))
    monkeypatch.setattr(robustness, "run_progress", lambda folder: {"step": 1, "finished": False})
    robustness.run_chain(cfg, 1, progress=lambda *_: None)
    assert restarts == {"run_sft": False, "run_dpo": False, "run_reward_model": False, "run_rloo": False,
                        "run_rft": False}
    monkeypatch.setattr(robustness, "run_progress", lambda folder: {"step": 100, "finished": True})
    restarts.clear()
    robustness.run_chain(config.replace_sections(cfg, rloo=config.replace_config(cfg.rloo, temperature=0.9)), 1,
                         progress=lambda *_: None)
    assert restarts == {"run_rloo": True, "run_rft": True}          # only what the change touches, from scratch


def test_a_notebook_gets_one_line_per_target_it_reached_or_missed(output_dir):
    cfg = config.get_config("tiny")
    robustness.write_robustness(cfg, [row(1), row(2, **{"dpo/countdown_accuracy": 0.29}), row(3)])
    lines = robustness.target_lines(cfg, {"sft_masked/countdown_accuracy": 0.30, "dpo/countdown_accuracy": 0.21})
    assert lines == ["target DPO keeps Countdown (≥ −2 points): NOT met (-9.0 points); -9.0 is below the committed "
                     "range -1.0 to +0.0 points of 3 base models: see docs/RESULTS.md, robustness"]
