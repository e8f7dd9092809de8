"""Config: unknown profiles and fields are named, overrides do not leak, outputs live under OUTPUT_DIR."""
import pytest

from helpers import config


def test_get_config_unknown_profile_names_it():
    with pytest.raises(ValueError, match="'nope'"):
        config.get_config("nope")


def test_get_config_unknown_field_names_it():
    with pytest.raises(ValueError, match="sft__not_a_field"):
        config.get_config("tiny", sft__not_a_field=1)
    with pytest.raises(ValueError, match="nosection__max_steps"):
        config.get_config("tiny", nosection__max_steps=1)
    with pytest.raises(ValueError, match="profile__x"):
        config.get_config("tiny", profile__x=1)


def test_get_config_overrides_do_not_leak():
    assert config.get_config("smoke", sft__max_steps=3).sft.max_steps == 3
    assert config.get_config("smoke", data__seed=5).data.seed == 5
    assert config.get_config("smoke").sft.max_steps == 6 and config.get_config("smoke").data.seed == 0
    assert config.get_config("tiny").sft.max_steps == config.SFTConfig().max_steps


def test_profile_env_var_picks_the_profile(monkeypatch):
    monkeypatch.delenv("PROFILE", raising=False)
    assert config.get_config().profile == "tiny"
    monkeypatch.setenv("PROFILE", "smoke")
    assert config.get_config().profile == "smoke"
    assert config.get_config().sft.max_steps == 6
    assert config.get_config("tiny").profile == "tiny"                 # an explicit profile wins
    monkeypatch.setenv("PROFILE", "nope")
    with pytest.raises(ValueError, match="'nope'"):
        config.get_config()


def test_replace_config_names_unknown_fields():
    sft = config.get_config("smoke").sft
    assert config.replace_config(sft, lr=0.5).lr == 0.5 and sft.lr != 0.5
    with pytest.raises(ValueError, match="bogus"):
        config.replace_config(sft, bogus=1)


def test_out_path_lives_under_output_dir(output_dir):
    cfg = config.get_config("smoke")
    assert config.output_root() == output_dir
    assert config.out_path("data", cfg, "x") == output_dir / "data" / "smoke" / "x"
    assert config.out_path("checkpoints", cfg, "sweep", 3) == output_dir / "checkpoints" / "smoke" / "sweep" / "3"
    assert config.out_path("data", cfg) == output_dir / "data" / "smoke"


def test_describe_config_is_one_short_readable_summary():
    text = config.describe_config(config.get_config("tiny").dpo)
    assert text.startswith("DPOConfig: ") and "lr 0.0005" in text and "beta 0.1" in text
    assert all(len(line) <= 112 for line in text.splitlines())


def test_a_range_belongs_to_the_class_that_declares_the_field():
    """RLOOConfig.k must be ≥ 2; a field called k elsewhere inherits nothing. Every stage's max_steps is
    TrainConfig's (≥ 1), through the class hierarchy; types come from the annotations themselves."""
    from dataclasses import dataclass

    @dataclass
    class Other(config.Checked):
        k: int = 1
        share: float | None = None

    assert Other(k=1).k == 1 and Other(share=2).share == 2       # an int is a float; None where the hint allows it
    with pytest.raises(config.ConfigError, match=r"RLOOConfig.k = 1: must be ≥ 2"):
        config.RLOOConfig(k=1)
    with pytest.raises(config.ConfigError, match=r"DPOConfig.max_steps = 0: must be ≥ 1"):
        config.DPOConfig(max_steps=0)
    with pytest.raises(config.ConfigError, match=r"Other.share = 'x': must be float or None, not str"):
        Other(share="x")
    with pytest.raises(config.ConfigError, match=r"must be int, not bool"):
        Other(k=True)
