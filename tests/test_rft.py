"""Rejection-sampling fine-tuning: which completion is kept (best by verifier or reward model, ties, none), and the
sample budget equal to RLOO's."""
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


def test_rft_draws_as_many_samples_as_rloo():
    for profile in ("tiny", "smoke", "qwen"):
        cfg = config.get_config(profile)
        total_rft = rft.prompts_per_round(cfg) * cfg.rft.rounds * cfg.rloo.k
        assert total_rft == cfg.rloo.max_steps * rft.samples_per_step(cfg), profile
