"""The generated report: numbers come from the tables it is given; the chain is read stage by stage on both tracks,
and a stage that loses more than 2 points of the other track is called out."""
import pandas as pd

from helpers import config, report


def test_report_reads_the_chain_stage_by_stage(output_dir):
    cfg = config.get_config("smoke")
    stages = pd.DataFrame([{"model": "initial", "exact_match": 0.0, "countdown_accuracy": 0.0},
                           {"model": "sft_masked", "exact_match": 0.5, "countdown_accuracy": 0.2},
                           {"model": "dpo", "exact_match": 0.75, "countdown_accuracy": 0.1},
                           {"model": "rloo", "exact_match": 0.76, "countdown_accuracy": 0.3}])
    path = report.write_report(cfg, stages, "rloo")
    assert path == output_dir / "report" / "report_smoke.md"
    text = path.read_text()
    assert "`final` = `rloo`, the end of the chain" in text
    # no checkpoints here: the changes without a sign-test verdict (that needs both models' saved answers)
    assert ("`sft_masked` → `dpo`: exact_match 0.500 → 0.750 (+25.0 points); countdown_accuracy 0.200 → "
            "0.100 (-10.0 points).") in text
    assert "`dpo` → `rloo`: exact_match 0.750 → 0.760 (+1.0 points); countdown_accuracy 0.100 → 0.300" in text
    assert "**Countdown**" in text and "**instruction following**" in text
    assert text.index("## Targets") < text.index("## Setup") < text.index("## Every stage")    # the report opens with
    targets = " ".join(text.split("## Targets")[1].split("## Setup")[0].split())                # the target table
    assert "| final Countdown ≥ 0.3 | 0.300 | PASS | none committed |" in targets
    assert "| DPO keeps Countdown (≥ −2 points) | -10.0 points | FAIL |" in targets


def test_best_of_8_below_best_of_4_on_a_few_prompts_is_called_noise_not_worse():
    """48 prompts: 2 fewer right at best-of-8 is well within the noise of a difference of two such shares; a jump
    from 0.25 to 0.75 is not."""
    notes = report.best_of_n_notes({"best_of_4_verifier": 0.5, "best_of_8_verifier": 23 / 48,
                                    "best_of_4_reward_model": 0.25, "best_of_8_reward_model": 0.75}, 48)
    assert len(notes) == 2
    assert "best-of-4 0.500, best-of-8 0.479 (-2.1 points; ±20.4 is the noise" in notes[0]
    assert notes[0].endswith("within noise).")
    assert notes[1].endswith("more than noise).")
    assert report.best_of_n_notes({"best_of_4_verifier": float("nan"), "best_of_8_verifier": 0.5}, 48) == []
    assert report.best_of_n_notes({"best_of_4_verifier": 0.5, "best_of_8_verifier": 0.5}, None) == []


def test_the_robustness_section_places_every_measure_of_this_run_changes_included(monkeypatch):
    """Each committed measure over base models gets this run's value and where it falls — the stage-to-stage changes
    too (they were left blank, and they were the ones outside the range)."""
    summary = pd.DataFrame([{"stage": "dpo", "metric": "countdown_change", "mean": 0.03, "std": 0.04, "min": -0.04,
                             "max": 0.10, "seeds": 8},
                            {"stage": "reward_model", "metric": "accuracy", "mean": 0.97, "std": 0.01, "min": 0.96,
                             "max": 0.99, "seeds": 8},
                            {"stage": "rft", "metric": "exact_match", "mean": 0.8, "std": 0.05, "min": 0.75,
                             "max": 0.885, "seeds": 8}])
    monkeypatch.setattr(report, "latest_summary", lambda cfg, name: summary if name == "robustness" else
                        pd.DataFrame([{"target": "t", "base models meeting it": "8 of 8"}]))
    row = {"sft_masked/countdown_accuracy": 0.64, "dpo/countdown_accuracy": 0.78, "reward_model/accuracy": 0.93}
    lines = report.robustness_section(config.get_config("smoke"), row)
    assert "| dpo | countdown_change | 0.030 ± 0.040 | -0.040–0.100 | 0.140 | above |" in lines
    assert "| reward_model | accuracy | 0.970 ± 0.010 | 0.960–0.990 | 0.930 | below |" in lines
    assert "| rft | exact_match | 0.800 ± 0.050 | 0.750–0.885 |  |  |" in lines       # not measured by this run
