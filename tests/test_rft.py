"""Rejection-sampling fine-tuning: which completion is kept (best by verifier or reward model, ties, none), and the
sample budget: a share of RLOO's, its rounds ending where RLOO is evaluated."""
from helpers import config, rft

COUNTDOWN = {"track": "countdown"}
INSTRUCTION = {"track": "instructions"}


def samples(*texts):
    return [{"text": t} for t in texts]


def test_keep_best_by_the_verifier_first_among_equals_and_nothing_that_fails():
    tasks = [COUNTDOWN, COUNTDOWN, INSTRUCTION]
    rewards = [0.1, 1.0, 1.0,       # countdown: two correct, the first of them is kept
               0.1, 0.1, 0.0,       # countdown: nothing correct, nothing kept
               0.0, 1.0, 0.0]       # instruction (verifier): the exact answer
    kept = rft.keep_best(tasks, samples("a", "b", "c", "d", "e", "f", "g", "h", "i"), rewards, 3, use_model=False)
    assert [k["completion"] for k in kept] == ["b", "h"] and [k["task"] for k in kept] == [COUNTDOWN, INSTRUCTION]


def test_keep_best_by_the_reward_model_keeps_the_best_of_n_always():
    kept = rft.keep_best([INSTRUCTION, COUNTDOWN], samples("a", "b", "c", "d"), [-0.5, -0.2, 0.1, 0.1], 2,
                         use_model=True)
    assert [k["completion"] for k in kept] == ["b"]      # instruction: best score; countdown: still needs 1.0


def test_rft_draws_its_share_of_rloos_samples_and_its_rounds_end_at_rloos_evaluations():
    from helpers import config_file
    full = config_file.get_config("qwen", config.REPO_ROOT / "docs" / "qwen_full.yml")
    profiles = ("tiny", "smoke", "qwen", "qwen_smoke")
    for name, cfg in [*((p, config.get_config(p)) for p in profiles), ("qwen_full", full)]:
        per_round = rft.prompts_per_round(cfg) * cfg.rloo.k
        assert per_round * cfg.rft.rounds == cfg.rloo.max_steps * rft.samples_per_step(cfg) * cfg.rft.sample_share
        assert per_round % (cfg.rloo.eval_every * rft.samples_per_step(cfg)) == 0, name   # equal-sample points
    # the afternoon's qwen compares at half of RLOO's samples, as the tiny runs showed enough; qwen_full at all of them
    assert (config.get_config("qwen").rft.sample_share, full.rft.sample_share) == (0.5, 1.0)
    cfg = config.get_config("tiny", rft__sample_share=0.25)
    assert rft.prompts_per_round(cfg) * cfg.rft.rounds * cfg.rloo.k == 3200


def test_the_comparison_keeps_only_the_sample_counts_both_methods_reached():
    import pandas as pd
    points = [("rloo", 0, 0.3, 0.8), ("rloo", 3200, 0.2, 0.7), ("rloo", 6400, 0.31, 0.77), ("rloo", 9600, 0.29, 0.79),
              ("rft", 0, 0.3, 0.8), ("rft", 3200, 0.35, 0.78), ("rft", 6400, 0.36, 0.75)]
    table = pd.DataFrame([{"method": m, "samples": n, "countdown_accuracy": a, "exact_match": e}
                          for m, n, a, e in points])
    equal = rft.at_equal_samples(table)
    assert list(equal.index) == [3200, 6400]                    # not the shared start, not RLOO's 9,600 alone
    assert equal.loc[6400, ("rloo", "countdown_accuracy")] == 0.31 and equal.loc[3200, ("rft", "exact_match")] == 0.78
