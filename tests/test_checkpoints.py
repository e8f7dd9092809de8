"""Checkpoints: resume after an interruption gives the same weights; a finished stage is kept, not retrained; a
changed config, a corrupt or foreign checkpoint is refused with the file and the fix; crashed saves are cleaned."""
import dataclasses

import pytest
import torch

from helpers import checkpoints, config, config_file, modeling, sft, training


def fresh_model(cfg, tokenizer):
    return modeling.build_tiny_model(tokenizer, cfg.model, seed=0)


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_gives_the_same_weights(sft_world, tmp_path):
    """Interrupted at step 3 (last checkpoint at step 2), resumed: same weights as an uninterrupted run."""
    cfg, tokenizer, examples = sft_world
    train_cfg = config.replace_config(cfg.sft, max_steps=6, batch_size=4, save_every=2, eval_every=3)
    collate_fn = sft.sft_collate(tokenizer.pad_token_id)
    eval_fn = lambda m: {"eval/loss": sft.evaluate_loss(m, examples[:8], tokenizer.pad_token_id)}

    straight = fresh_model(cfg, tokenizer)
    history = training.train(straight, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, tmp_path / "a",
                      eval_fn=eval_fn, restart=True)

    interrupted = fresh_model(cfg, tokenizer)
    training.train(interrupted, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, tmp_path / "b",
            eval_fn=eval_fn, stop_after_steps=3)
    resumed = fresh_model(cfg, tokenizer)     # a new process would start from scratch weights too
    history_b = training.train(resumed, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, tmp_path / "b",
                        eval_fn=eval_fn)
    diff = (flat_params(straight) - flat_params(resumed)).abs().max().item()
    assert diff <= 1e-6
    assert [h["step"] for h in history_b] == [h["step"] for h in history]
    # the saved checkpoint loads with AutoModelForCausalLM and equals the in-memory model
    reloaded = modeling.load_model(tmp_path / "b")
    assert (flat_params(reloaded) - flat_params(resumed)).abs().max().item() == 0.0
    assert (tmp_path / "b" / "model.safetensors").exists() and (tmp_path / "b" / "run_config.json").exists()


def run_of(cfg, tokenizer, examples, folder, **changes):
    train_cfg = config.replace_config(cfg.sft, max_steps=4, batch_size=4, save_every=2, eval_every=100, **changes)
    model = fresh_model(cfg, tokenizer)
    history = training.train(model, tokenizer, examples, train_cfg, sft.sft_loss,
                             sft.sft_collate(tokenizer.pad_token_id), folder)
    return model, history, train_cfg


@pytest.mark.hostile
def test_a_finished_stage_is_kept_not_trained_again(sft_world, tmp_path):
    cfg, tokenizer, examples = sft_world
    trained, history, _ = run_of(cfg, tokenizer, examples, tmp_path / "s")
    stamp = (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns
    again, history_again, _ = run_of(cfg, tokenizer, examples, tmp_path / "s")
    assert (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns == stamp          # not overwritten
    assert history_again == history and torch.equal(flat_params(again), flat_params(trained))


def test_a_field_added_since_a_run_was_saved_reads_as_the_value_that_reproduces_it(sft_world, tmp_path,
                                                                                     monkeypatch):
    cfg, tokenizer, examples = sft_world
    run_of(cfg, tokenizer, examples, tmp_path / "s")
    saved = checkpoints.read_run(tmp_path / "s")[1]
    monkeypatch.setattr(config_file, "ADDED_FIELDS", {"train": {"new_option": "old way"}})
    same = {**saved, "train": {**saved["train"], "new_option": "old way"}}
    assert checkpoints.stage_status(tmp_path / "s", same)[0] == "finished"          # kept, not trained again
    other = {**saved, "train": {**saved["train"], "new_option": "new way"}}
    with pytest.raises(checkpoints.CheckpointError, match="new_option"):
        checkpoints.stage_status(tmp_path / "s", other)


@pytest.mark.hostile
def test_a_changed_config_is_refused_naming_the_difference_and_the_fix(sft_world, tmp_path):
    cfg, tokenizer, examples = sft_world
    _, _, train_cfg = run_of(cfg, tokenizer, examples, tmp_path / "s")
    with pytest.raises(checkpoints.CheckpointError, match=r"finished run of another config \(train\.lr: 0\.001 → 0\.002"
                       r".*restart=True"):
        run_of(cfg, tokenizer, examples, tmp_path / "s", lr=2e-3)
    model = fresh_model(cfg, tokenizer)              # asked explicitly: trained again from scratch
    other = config.replace_config(train_cfg, lr=2e-3)
    training.train(model, tokenizer, examples, other, sft.sft_loss, sft.sft_collate(tokenizer.pad_token_id),
                   tmp_path / "s", restart=True)
    assert checkpoints.read_run(tmp_path / "s")[1]["train"]["lr"] == 2e-3


@pytest.mark.hostile
@pytest.mark.parametrize("damage", ["truncated weights", "flipped byte", "truncated state", "garbage config",
                                    "missing config", "foreign folder"])
def test_a_corrupt_checkpoint_is_named_with_the_fix(sft_world, tmp_path, damage):
    cfg, tokenizer, examples = sft_world
    folder = tmp_path / "s"
    run_of(cfg, tokenizer, examples, folder)
    weights, state = folder / "model.safetensors", folder / "training_state.pt"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncated state":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "garbage config":
        (folder / "run_config.json").write_text("{not json")
    elif damage == "missing config":
        (folder / "run_config.json").unlink()
    else:
        for p in folder.iterdir():
            p.unlink()
        (folder / "notes.txt").write_text("someone else's files")
    with pytest.raises(checkpoints.CheckpointError) as err:
        run_of(cfg, tokenizer, examples, folder)
    message = str(err.value)
    assert str(folder) in message and "restart=True" in message and "Traceback" not in message


@pytest.mark.hostile
def test_a_crash_inside_a_save_leaves_nothing_behind(sft_world, tmp_path):
    """Killed after the old folder was moved aside and before the new one was moved in: the complete new copy is
    put back and every temporary (a full model copy each) is removed."""
    cfg, tokenizer, examples = sft_world
    folder = tmp_path / "s"
    trained, history, train_cfg = run_of(cfg, tokenizer, examples, folder)
    (tmp_path / "s.tmp-999999").mkdir()                                  # an incomplete save of a dead process
    (tmp_path / "s.tmp-999999" / "model.safetensors").write_bytes(b"half")
    folder.rename(tmp_path / "s.tmp-123456")                             # the complete new copy, not yet swapped in
    again, history_again, _ = run_of(cfg, tokenizer, examples, folder)
    assert history_again == history and torch.equal(flat_params(again), flat_params(trained))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_resume_state_of_an_unfinished_run(sft_world, tmp_path):
    cfg, tokenizer, examples = sft_world
    collate_fn = sft.sft_collate(tokenizer.pad_token_id)
    train_cfg = config.replace_config(cfg.sft, max_steps=4, batch_size=4, save_every=2)
    training.train(fresh_model(cfg, tokenizer), tokenizer, examples, train_cfg, sft.sft_loss, collate_fn,
                   tmp_path / "c", stop_after_steps=2)
    status, state = checkpoints.stage_status(tmp_path / "c", {"train": dataclasses.asdict(train_cfg)})
    assert status == "resume" and state["step"] == 2


def test_rft_resumes_where_it_stopped_with_the_same_weights(output_dir, chat_model_dir, monkeypatch, capsys):
    """RFT keeps and resumes runs as every stage does: stopped inside its second round (smoke: 2 rounds of 2 SFT
    steps), then run again, it draws that round's samples again from the saved weights and random streams and ends
    with the weights and curve of an uninterrupted run; run once more, the finished run is kept."""
    import shutil
    from safetensors.torch import load_file
    from helpers import data, rft
    cfg = config.get_config("smoke")
    data.prepare_data(cfg)
    start = config.out_path("checkpoints", cfg, "dpo")
    shutil.copytree(chat_model_dir, start)
    checkpoints.write_checksums(start)
    # keep every prompt's first sample, right or not: each round trains on text that depends on the random streams
    monkeypatch.setattr(rft, "keep_best", lambda tasks, samples, rewards, n, use_model: [
        {"task": t, "completion": samples[i * n]["text"], "reward": rewards[i * n]} for i, t in enumerate(tasks)])
    weights = lambda stage: load_file(config.out_path("checkpoints", cfg, stage) / "model.safetensors")
    straight = rft.run_rft(cfg, stage="rft_a", log=False)
    rft.run_rft(cfg, stage="rft_b", log=False, stop_after_steps=3)
    assert checkpoints.run_progress(config.out_path("checkpoints", cfg, "rft_b")) == {"step": 2, "finished": False}
    resumed = rft.run_rft(cfg, stage="rft_b", log=False)
    assert "resuming rft_b at round 2 of 2" in capsys.readouterr().out
    a, b = weights("rft_a"), weights("rft_b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max(float((a[k] - load_file(start / "model.safetensors")[k]).abs().max()) for k in a) > 0   # it trained
    assert resumed.history == straight.history and resumed["kept"] == straight["kept"]
    rft.run_rft(cfg, stage="rft_b", log=False)
    assert "already holds this finished run" in capsys.readouterr().out
