"""Evaluation of every stage: the chain's wiring (which checkpoint each stage starts from), `final` as the end of the
chain, and the win rate against a reference model."""
import json
import shutil

import pytest

from helpers import checkpoints, config, data, dpo, evaluation, reward_model, rft, rloo, sft, training


class Loaded(Exception):
    """Raised by a stand-in loader, carrying the folder a stage tried to start from."""


@pytest.mark.parametrize("run, start", [(lambda cfg: dpo.run_dpo(cfg, log=False), "sft_masked"),
                                        (lambda cfg: rloo.run_rloo(cfg, log=False), "dpo"),
                                        (lambda cfg: rft.run_rft(cfg, log=False), "dpo"),
                                        (lambda cfg: rloo.run_rloo(cfg, start="sft_masked", log=False), "sft_masked")])
def test_the_chain_wiring_each_stage_starts_from_the_one_before(monkeypatch, output_dir, run, start):
    """sft_masked → dpo → rloo (and rft beside rloo, from the same start); a `start` argument branches."""
    def loader(path, *args, **kwargs):
        raise Loaded(str(path))
    for module in (dpo, rloo, rft):
        monkeypatch.setattr(module, "load_tokenizer", loader)
    monkeypatch.setattr(training, "start_fingerprint", loader)     # checked first (`open_stage`): a finished start
    with pytest.raises(Loaded) as loaded:
        run(config.get_config("smoke"))
    assert loaded.value.args[0] == str(config.out_path("checkpoints", config.get_config("smoke"), start))


def test_final_is_a_copy_of_the_end_of_the_chain(output_dir, chat_model_dir):
    cfg = config.get_config("smoke")
    rloo_dir = config.out_path("checkpoints", cfg, "rloo")
    shutil.copytree(chat_model_dir, rloo_dir)
    (rloo_dir / "training_state.pt").write_bytes(b"state")
    checkpoints.write_checksums(rloo_dir, progress={"step": 3, "finished": False})
    with pytest.raises(checkpoints.CheckpointError, match="unfinished run of `rloo`"):
        evaluation.publish_final(cfg)                  # `final` is never a half-trained chain
    checkpoints.write_checksums(rloo_dir, progress={"step": 4, "finished": True})
    assert evaluation.publish_final(cfg) == "rloo"
    final = config.out_path("checkpoints", cfg, "final")
    assert (final / "model.safetensors").read_bytes() == (rloo_dir / "model.safetensors").read_bytes()
    assert not (final / "training_state.pt").exists() and "rloo" in (final / "FINAL_IS.txt").read_text()
    assert checkpoints.weights_fingerprint(final) == checkpoints.weights_fingerprint(rloo_dir)   # verified copy


def test_win_rate_against_a_reference_model(tmp_path, monkeypatch):
    """Win rate on the held-out preference prompts, judged by the reward model: a model against itself ties on every
    prompt, and a tie counts half."""
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
