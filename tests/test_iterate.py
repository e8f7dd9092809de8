"""Another preference round (`iterate`): each rule's pairs by hand (latest over previous, judged, SPIN), both rules
trained at the same count, and a whole round on the smoke profile that leaves `final` as it was."""
import pytest

from conftest import lively_tiny_model
from helpers import checkpoints, config, data, iterate, modeling, report

TASKS = [{"prompt": [{"role": "user", "content": f"q{i}"}], "track": "instructions", "reference": f"a{i}"}
         for i in range(4)]


def test_each_rule_keeps_the_pairs_it_says_by_hand():
    previous = ["a0", "x1", "same", "x3"]
    latest = ["y0", "a1", "same", "x3 "]                 # task 2 and 3: the same text twice (whitespace aside)
    pairs = iterate.round_pairs(TASKS, previous, latest, ([1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]))
    assert [(p["chosen"], p["rejected"]) for p in pairs["latest"]] == [("y0", "a0"), ("a1", "x1")]
    assert [(p["chosen"], p["rejected"]) for p in pairs["latest, judged"]] == [("a1", "x1")]  # the judge agrees
    assert [(p["chosen"], p["rejected"]) for p in pairs["spin"]] == [("a1", "x1"), ("a2", "same"), ("a3", "x3")]
    ours, spin = iterate.equal_count(pairs["latest"], pairs["spin"])
    assert len(ours) == len(spin) == 2 and spin[0]["prompt"] == ours[1]["prompt"]     # a shared prompt first


def test_a_round_trains_each_rule_and_leaves_final_as_it_was(tiny_tokenizer, output_dir):
    cfg = config.get_config("smoke")
    data.prepare_data(cfg)
    for name, std in (("dpo", 0.3), ("final", 0.35)):
        modeling.save_model(lively_tiny_model(tiny_tokenizer, std), config.out_path("checkpoints", cfg, name),
                            tiny_tokenizer)
    final = config.out_path("checkpoints", cfg, "final")
    before = checkpoints.weights_fingerprint(final)
    result = iterate.run_round(cfg, settings=iterate.RoundSettings(prompts=8, steps=2))
    assert set(result["counts"]) == {"latest", "latest, judged", "spin"} and result["trained_pairs"] >= 1
    trained = {"round_latest": result["counts"]["latest"], "round_judged": result["counts"]["latest, judged"],
               "round_spin": result["trained_pairs"]}
    assert result["trained_pairs"] == min(result["counts"]["latest"], result["counts"]["spin"])   # SPIN at that count
    for stage, count in trained.items():
        if count:
            assert checkpoints.run_progress(config.out_path("checkpoints", cfg, stage))["finished"]
            saved = checkpoints.read_run(config.out_path("checkpoints", cfg, stage))[1]
            assert saved["train_pairs"] == count and saved["start"] == "final"
    assert list(result["table"]["checkpoint"]) == ["final", *[s for s, count in trained.items() if count]]
    assert "countdown_accuracy vs final" in result["table"] and result["paths"]["md"].exists()
    assert checkpoints.weights_fingerprint(final) == before          # the round branches; `final` stays the chain's
    section = "\n".join(report.iterate_section(cfg))                   # the report says what the round did
    assert "## Another preference round" in section and "- `round_spin`: another round " in section


@pytest.mark.hostile
def test_a_round_without_its_checkpoints_names_the_missing_one(output_dir):
    cfg = config.get_config("smoke")
    with pytest.raises(checkpoints.CheckpointError, match=r"no `dpo` checkpoint in .*make it first"):
        iterate.run_round(cfg, settings=iterate.RoundSettings(prompts=4, steps=1))
