"""YAML config files (`--config FILE`, CONFIG=FILE): a printed profile round-trips to the same config, overrides
apply under --set, every kind of bad file is refused in one line naming the file, the line and the key, and each
checkpoint saves its whole resolved config as config.yml."""
import os

import pytest
import yaml

from helpers import checkpoints, cli, config, config_file, modeling, sft, training


def write(tmp_path, text, name="run.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("profile", ["tiny", "smoke", "qwen"])
def test_a_printed_profile_round_trips_to_the_same_config(tmp_path, profile):
    expected = config.get_config(profile)
    text = config_file.config_yaml(expected)
    assert "# α of the RPO term" in text                      # commented from the source
    again = config_file.get_config(profile, write(tmp_path, text))
    assert config.config_dict(again) == config.config_dict(expected)


def test_the_committed_small_card_file_loads_on_the_qwen_profile():
    cfg = config_file.get_config("qwen", config.REPO_ROOT / "docs" / "qwen_12gb.yml")
    assert (cfg.model.quant, cfg.rloo.batch_size * cfg.rloo.grad_accum) == (4, 32)     # the same prompts a step


def test_a_file_overrides_the_profile_and_set_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "dpo:\n  beta: 0.2\n  loss_type: ipo\neval:\n  countdown_rows: 4\nrestart: true\n")
    cfg = config_file.get_config("smoke", path, dpo__beta=0.3)
    assert (cfg.dpo.beta, cfg.dpo.loss_type, cfg.eval.countdown_rows, cfg.restart) == (0.3, "ipo", 4, True)
    monkeypatch.setenv("CONFIG", str(path))                    # what the notebooks and make demo read
    assert config_file.get_config("smoke").dpo.loss_type == "ipo"
    assert config_file.get_config("smoke", write(tmp_path, "", "empty.yml")).dpo.beta == 0.1   # empty: the profile


@pytest.mark.hostile
@pytest.mark.parametrize("text, message", [
    ("- dpo\n- sft\n", r"line 1: expected a mapping of sections"),
    ("dpoo:\n  beta: 0.2\n", r"line 1: unknown section or field 'dpoo'; allowed: data, model"),
    ("dpo:\n  betta: 0.2\n", r"line 2: unknown field dpo.'betta'; the fields of dpo: .*beta"),
    ("dpo:\n  beta: high\n", r"line 2: DPOConfig.beta = 'high': must be float"),
    ("dpo:\n  beta: -1.0\n", r"line 2: DPOConfig.beta = -1.0: must be > 0"),
    ("sft:\n  lr: 1e-5\n", r"line 2: SFTConfig.lr = '1e-5': must be float.*write 1.0e-5"),
    ("dpo: 0.2\n", r"line 1: section 'dpo' must be a mapping of its fields"),
    ("profile: qwen\n", r"line 1: the profile is chosen with --profile"),
    ("dpo:\n  beta: !!python/object/apply:os.system ['echo pwned']\n", r"line 2: not readable YAML \(could not "
                                                                      r"determine a constructor for the tag"),
    ("dpo:\n  beta: [0.1\n", r"not readable YAML"),
])
def test_a_bad_file_is_refused_in_one_line_with_its_line_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError, match=message) as err:
        config_file.get_config("smoke", path)
    assert str(err.value).startswith(f"config file {path}: ") and "\n" not in str(err.value)


@pytest.mark.hostile
def test_the_cli_refuses_a_bad_file_in_one_line_and_prints_a_starting_file(tmp_path, capsys):
    assert cli.main(["config", "--profile", "smoke", "--set", "dpo__beta=0.25"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["dpo"]["beta"] == 0.25
    bad = write(tmp_path, "rloo:\n  k: 1\n")
    assert cli.main(["train", "--stage", "dpo", "--profile", "smoke", "--config", str(bad)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: config file {bad}: line 2: RLOOConfig.k = 1: must be ≥ 2 (leave-one-out)"
    missing = tmp_path / "nowhere.yml"
    assert cli.main(["run-notebook", "x.ipynb", "--config", str(missing)]) == 2
    assert "config file" in capsys.readouterr().err and os.environ.get("CONFIG") != str(missing)


def test_a_checkpoint_saves_its_whole_resolved_config_as_config_yml(sft_world, tmp_path):
    cfg, tokenizer, examples = sft_world
    train_cfg = config.replace_config(cfg.sft, max_steps=2, batch_size=4, save_every=2, eval_every=100)
    resolved = config.replace_sections(cfg, dpo=config.replace_config(cfg.dpo, beta=0.25))
    run_config = {"sft": config.config_dict(train_cfg), checkpoints.RESOLVED: config_file.config_yaml(resolved, False)}
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    training.train(model, tokenizer, examples, train_cfg, sft.sft_loss, sft.sft_collate(tokenizer.pad_token_id),
                   tmp_path / "s", run_config=run_config)
    saved = yaml.safe_load((tmp_path / "s" / "config.yml").read_text())
    assert saved["dpo"]["beta"] == 0.25 and saved["sft"] == config.config_dict(cfg.sft)
    assert checkpoints.RESOLVED not in checkpoints.read_run(tmp_path / "s")[1]      # not part of what is compared
    other = {**run_config, checkpoints.RESOLVED: config_file.config_yaml(cfg, False)}   # another eval, same stage
    assert checkpoints.stage_status(tmp_path / "s", other)[0] == "finished"
    assert config_file.get_config(cfg.profile, tmp_path / "s" / "config.yml").dpo.beta == 0.25   # usable as --config
