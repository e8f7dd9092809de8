"""The masked-vs-unmasked comparison: the seed-noise verdict on a hand-computed case."""
import pandas as pd

from helpers import comparison


def test_seed_noise_verdict_by_hand():
    # weight 0: 0.5, 0.6, 0.7 (mean 0.6, std 0.1); weight 1: 0.2, 0.3, 0.4 (mean 0.3, std 0.1)
    runs = pd.DataFrame({"prompt_loss_weight": [0.0] * 3 + [1.0] * 3, "seed": [0, 1, 2] * 2,
                         "exact_match": [0.5, 0.6, 0.7, 0.2, 0.3, 0.4]})
    verdict = comparison.seed_noise_verdict(runs, "exact_match", 0.0, 1.0)
    # difference −0.3; noise 2 × sqrt((0.1² + 0.1²) / 2) = 0.2: exceeds
    assert "-0.3000" in verdict and "0.2000" in verdict and "exceeds" in verdict
    close = runs.assign(exact_match=[0.5, 0.6, 0.7, 0.45, 0.55, 0.65])       # difference −0.05 < 0.2
    assert "is within" in comparison.seed_noise_verdict(close, "exact_match", 0.0, 1.0)
