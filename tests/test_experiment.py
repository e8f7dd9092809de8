"""The central experiment: mean ± std and the seed-noise verdict by hand, the grid's cells, and a grid that resumes
without redoing finished cells."""
import json
import math

import pytest

from helpers import config, experiment


def test_mean_std_and_the_noise_verdict_by_hand():
    assert experiment.mean_std([0.5, 0.6, 0.7]) == (pytest.approx(0.6), pytest.approx(0.1))
    assert experiment.mean_std([0.3]) == (0.3, 0.0)
    # 0.5, 0.6, 0.7 → 0.2, 0.3, 0.4: difference −0.3; noise 2 × sqrt((0.1² + 0.1²) / 2) = 0.2 → exceeds
    verdict = experiment.noise_verdict([0.5, 0.6, 0.7], [0.2, 0.3, 0.4], "exact_match")
    assert verdict["difference"] == pytest.approx(-0.3) and verdict["noise"] == pytest.approx(0.2)
    assert verdict["verdict"] == "exceeds the seed noise"
    close = experiment.noise_verdict([0.5, 0.6, 0.7], [0.45, 0.55, 0.65], "exact_match")
    assert close["difference"] == pytest.approx(-0.05) and close["verdict"] == "within the seed noise"


def test_the_grid_has_every_cell_and_the_controlled_arm():
    cfg = config.get_config("tiny")
    cells = experiment.grid_cells(cfg)
    assert len(cells) == 4 * 3 * 3 + 2 * 3
    controlled = [c for c in cells if c["normalization"] == "response_tokens"]
    assert {(c["weight"], c["size"]) for c in controlled} == {(0.1, 3000), (1.0, 3000)}
    assert len({experiment.cell_key(c) for c in cells}) == len(cells)


def test_flattened_asks_whether_the_last_fifth_still_lowered_the_loss():
    assert experiment.flattened([(0, 9.0), (400, 0.71), (480, 0.71), (600, 0.70)], 600, 0.03)    # −1.4 %: flat
    assert experiment.flattened([(0, 9.0), (300, 1.2), (480, 1.3), (600, 1.4)], 600, 0.03)       # rising: overfit
    assert not experiment.flattened([(0, 9.0), (400, 0.9), (480, 0.8), (600, 0.7)], 600, 0.03)   # −22 %: learning
    assert not experiment.flattened([(0, 9.0)], 600, 0.03)                                        # no tail


def fake_run(calls):
    def run(cfg, cell):
        calls.append(experiment.cell_key(cell))
        if len(calls) == 3 and not any("done" in c for c in calls):
            raise KeyboardInterrupt                    # the user stops the grid in its third cell
        score = 0.5 - 0.2 * cell["weight"] + 0.01 * cell["seed"]
        return {**cell, "exact_match": score, "response_loss": 1.0 + cell["weight"], "countdown_accuracy": 0.1,
                "flattened": True, "curve": [(0, 9.0), (3, 1.0 + cell["weight"])]}
    return run


def test_an_interrupted_grid_finishes_without_redoing_finished_cells(output_dir):
    cfg = config.get_config("smoke")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(cfg, run=fake_run(calls), progress=lambda line: None)
    assert len(calls) == 3                             # two finished, the third interrupted
    calls.append("done")
    lines = []
    results = experiment.run_experiment(cfg, run=fake_run(calls), progress=lines.append)
    cells = experiment.grid_cells(cfg)
    assert calls[4:] == [experiment.cell_key(c) for c in cells[2:]]     # resumed at the interrupted cell
    assert len(results) == len(cells) and "to go" in lines[0] and "min" in lines[0]
    cfg.experiment = config.replace_config(cfg.experiment, steps=4)     # another setting: every cell again
    calls.clear()
    experiment.run_experiment(cfg, run=fake_run(["done"] + calls), progress=lambda line: None)


def test_headline_and_written_results(output_dir):
    cfg = config.get_config("smoke")
    results = experiment.run_experiment(cfg, run=fake_run(["done"]), progress=lambda line: None)
    lines = experiment.headline(results)
    masked_unmasked = [h for h in lines if h["comparison"] == "masked → unmasked" and h["metric"] == "exact_match"]
    assert masked_unmasked[0]["difference"] == pytest.approx(-0.2)
    paths = experiment.write_experiment(cfg, results)
    assert paths["heatmap"].exists() and paths["comparison"].exists()
    saved = experiment.latest_experiment(cfg)              # as run, with `flattened` judged again from each curve
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("flattened", "flat_tolerance")} for r in rows]
    assert strip(saved) == strip(json.loads(json.dumps(results)))
    assert not any(r["flattened"] for r in saved)          # the fake curves fall 9 → ~1 in their last fifth
    assert {r["flat_tolerance"] for r in saved} == {cfg.experiment.flat_tolerance}
    assert not math.isnan(masked_unmasked[0]["noise"])


def test_shards_share_the_grid_and_a_plain_run_then_trains_nothing(output_dir):
    cfg = config.get_config("smoke")
    calls = ["done"]
    for k in range(3):
        experiment.run_experiment(cfg, run=fake_run(calls), progress=lambda line: None, shard=(k, 3))
    cells = [experiment.cell_key(c) for c in experiment.grid_cells(cfg)]
    assert sorted(calls[1:]) == sorted(cells)                  # every cell once, by one of the shards
    before = len(calls)
    assert len(experiment.run_experiment(cfg, run=fake_run(calls), progress=lambda line: None)) == len(cells)
    assert len(calls) == before
    with pytest.raises(ValueError, match="shard 3/3"):
        experiment.run_experiment(cfg, run=fake_run(calls), shard=(3, 3))


def cells_of(scores: dict) -> list[dict]:
    """Results for conclusion(): {(weight, size): [exact match per seed]}, per-token normalisation."""
    return [{"weight": w, "size": n, "seed": s, "normalization": "trained_tokens", "exact_match": v,
             "response_loss": 1.0, "countdown_accuracy": 0.1}
            for (w, n), values in scores.items() for s, v in enumerate(values)]


def test_the_conclusion_judges_the_best_weight_against_seed_noise():
    # at 300 conversations weight 0.1 beats masking by 10 points, std 0.01 each: beyond the noise (0.02);
    # at 3000 masking is best
    clear = cells_of({(0.0, 300): [0.40, 0.41, 0.42], (0.1, 300): [0.50, 0.51, 0.52], (1.0, 300): [0.3, 0.3, 0.3],
                      (0.0, 3000): [0.60, 0.61, 0.62], (0.1, 3000): [0.58, 0.59, 0.60], (1.0, 3000): [0.4] * 3})
    text = " ".join(experiment.conclusion(clear))
    assert "0.1 at 300 conversations (+10.0 points over masking, beyond the seed noise)" in text
    assert "0 at 3000 conversations" in text and "as Shi et al. would predict" in text
    # the same means with std 0.1: the 10 points are within the noise, so no claim that prompt loss helps
    noisy = cells_of({(0.0, 300): [0.31, 0.41, 0.51], (0.1, 300): [0.41, 0.51, 0.61], (1.0, 300): [0.3, 0.3, 0.3],
                      (0.0, 3000): [0.60, 0.61, 0.62], (0.1, 3000): [0.58, 0.59, 0.60], (1.0, 3000): [0.4] * 3})
    text = " ".join(experiment.conclusion(noisy))
    assert "within the seed noise" in text and "no sign that prompt loss helps" in text
    assert "masked → unmasked" not in text and "With 3 seeds at full length on 3000 conversations" in text


def test_the_conclusion_says_how_many_runs_had_stopped_learning():
    runs = cells_of({(0.0, 300): [0.4, 0.4, 0.4], (0.0, 3000): [0.6, 0.6, 0.6]})
    for r in runs:
        r["flattened"], r["flat_tolerance"] = r["size"] == 300 or r["seed"] == 0, 0.05
    text = " ".join(experiment.conclusion(runs))
    assert "less than 5 %) 3 of 3 runs at 300 conversations, 1 of 3 runs at 3000 conversations" in text


def test_the_conclusion_says_what_a_small_prompt_weight_costs_and_buys():
    runs = cells_of({(0.0, 300): [0.40, 0.41, 0.42], (0.01, 300): [0.40, 0.41, 0.42],
                     (0.0, 3000): [0.6, 0.6, 0.6], (0.01, 3000): [0.6, 0.6, 0.6]})
    for r in runs:
        r["sequence_loss"] = 8.0 if r["weight"] == 0 else 0.5
    text = " ".join(experiment.conclusion(runs))
    assert ("a small weight models the prompts at no measurable cost: at 300 conversations weight 0.01 reaches "
            "0.410 (masked 0.410) with a whole-sequence loss of 0.50 nats/token against masking's 8.00.") in text
    assert len(experiment.conclusion(runs)) <= 5


def test_shard_argument_is_checked_at_the_door():
    import argparse
    from helpers.cli import shard_arg
    assert shard_arg("1/2") == (1, 2)
    for bad in ("2/2", "1", "a/2", "-1/2", "1/0"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected K/N"):
            shard_arg(bad)


def test_heat_map_text_is_light_on_dark_cells_in_either_colour_map(tmp_path, monkeypatch):
    """The response-loss map runs the other way (viridis_r: high = dark): each cell's text colour follows the cell."""
    import matplotlib.colors
    import pandas as pd
    rows = [{"normalization": "trained_tokens", "size": size, "weight": weight, "seeds": 3,
             "exact_match_mean": value, "exact_match_std": 0.01, "response_loss_mean": value, "response_loss_std": 0.01}
            for size, weight, value in ((300, 0.0, 0.1), (300, 1.0, 0.9), (3000, 0.0, 0.5), (3000, 1.0, 0.3))]
    figures = []
    monkeypatch.setattr(experiment, "save_figure", lambda fig, path: figures.append(fig) or path)
    experiment.plot_grid(pd.DataFrame(rows), tmp_path / "grid.png")
    maps = [ax for ax in figures[0].axes if ax.texts]       # the two maps (the colour bars hold no text)
    assert len(maps) == 2
    for ax in maps:
        image = ax.images[0]
        for text in ax.texts:
            value = float(text.get_text().split("\n")[0])
            r, g, b, _ = image.cmap(image.norm(value))
            dark_cell = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            assert matplotlib.colors.to_hex(text.get_color()) == ("#ffffff" if dark_cell else "#000000")
    loss_map = maps[1]
    darkest = [t for t in loss_map.texts if t.get_text().startswith("0.90")][0]   # high loss: dark in viridis_r
    assert matplotlib.colors.to_hex(darkest.get_color()) == "#ffffff"
