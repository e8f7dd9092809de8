"""The TensorBoard logger: namespaced scalars and text read back by step; the null logger accepts the same calls."""
from helpers import logger


def test_scalars_read_back_in_step_order(tmp_path):
    log = logger.TensorBoardLogger(tmp_path / "run")
    for step, value in [(2, 0.5), (1, 1.0), (3, 0.25)]:
        log.scalars({"train/loss": value, "eval/accuracy": 1 - value}, step)
    log.text("rloo/samples", "| a | b |", 1)
    log.close()
    curves = logger.read_tensorboard_scalars(tmp_path / "run")
    assert curves["train/loss"] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert curves["eval/accuracy"] == [(1, 0.0), (2, 0.5), (3, 0.75)]


def test_fresh_logger_replaces_an_earlier_run(tmp_path):
    for value in (1.0, 2.0):
        log = logger.TensorBoardLogger(tmp_path / "run")
        log.scalars({"train/loss": value}, 1)
        log.close()
    assert logger.read_tensorboard_scalars(tmp_path / "run")["train/loss"] == [(1, 2.0)]


def test_null_logger_takes_every_call():
    log = logger.NullLogger()
    log.scalars({"train/loss": 1.0}, 1)
    log.text("tag", "text", 1)
    log.close()


def test_progress_bar_is_text_and_honours_tqdm_disable(monkeypatch, capsys):
    from helpers.logger import progress_bar
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(3), desc="x", disable=False).disable      # an explicit False does not override it
    monkeypatch.delenv("TQDM_DISABLE")
    bar = progress_bar(total=2, desc="steps")
    assert not bar.disable
    bar.update(2)
    bar.close()
    assert "steps: 100%" in capsys.readouterr().err
