"""The demo's comparison: the same held-out measures for every checkpoint, read once and reused."""
import shutil

from helpers import comparison, config, scoring


def test_evaluate_checkpoints_reuses_each_checkpoint_evaluation(output_dir, monkeypatch, chat_model_dir):
    cfg = config.get_config("smoke")
    for name in ("sft_masked", "sft_unmasked"):
        shutil.copytree(chat_model_dir, config.out_path("checkpoints", cfg, name))
    calls = []
    monkeypatch.setattr(scoring, "evaluate_model", lambda model, tok, c, path=None, records=None:
                        calls.append(1) or {"exact_match": 0.5})
    monkeypatch.setattr(scoring, "checkpoint_fingerprint", lambda folder: "same")
    (output_dir / "data" / "smoke").mkdir(parents=True)
    first = comparison.evaluate_checkpoints(cfg, ["sft_masked", "sft_unmasked"])
    again = comparison.evaluate_checkpoints(cfg, ["sft_masked"])
    assert list(first.model) == ["sft_masked", "sft_unmasked"] and len(calls) == 2 and list(again.exact_match) == [0.5]
