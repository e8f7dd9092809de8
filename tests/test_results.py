"""Summaries: four formats that read back, markdown tables with fixed decimals."""
import pandas as pd
import pytest

from helpers import config, results


@pytest.fixture
def results_frame():
    return pd.DataFrame({"model": ["initial", "sft_masked", "dpo"],
                         "exact_match": [0.0, 0.123456789, 0.5],
                         "countdown_accuracy": [0.0625, 0.25, 1 / 3],
                         "steps": [0, 600, 200]})


def test_write_summary_writes_four_formats_that_read_back(results_frame, output_dir):
    cfg = config.get_config("smoke")
    paths = results.write_summary(results_frame, cfg, "stage_comparison", "20240101_120000")
    folder = output_dir / "evaluation_results" / "smoke" / "stage_comparison" / "20240101_120000" / "summary"
    assert set(paths) == {"csv", "md", "txt", "xlsx"}
    for ext, path in paths.items():
        assert path == folder / f"summary_20240101_120000.{ext}"
        assert path.is_file() and path.stat().st_size > 0

    for read in (pd.read_csv, pd.read_excel):
        back = read(paths["csv"] if read is pd.read_csv else paths["xlsx"])
        assert list(back.columns) == list(results_frame.columns)
        pd.testing.assert_frame_equal(back, results_frame, check_dtype=False, check_exact=False, rtol=1e-12)

    md = paths["md"].read_text().splitlines()
    assert len(md) == 2 + len(results_frame)
    assert [c.strip() for c in md[0].strip("|").split("|")] == list(results_frame.columns)
    assert set(md[1]) == {"|", "-"} and md[1].count("|") == len(results_frame.columns) + 1
    assert [c.strip() for c in md[3].strip("|").split("|")] == ["sft_masked", "0.1235", "0.2500", "600"]
    txt = paths["txt"].read_text()
    assert "sft_masked" in txt and "countdown_accuracy" in txt

    assert results.latest_summary(cfg, "stage_comparison")["model"].tolist() == ["initial", "sft_masked", "dpo"]


def test_markdown_table_formats_floats_with_four_decimals(results_frame):
    lines = results.markdown_table(results_frame).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[2] == ["initial", "0.0000", "0.0625", "0"]
    assert cells[4] == ["dpo", "0.5000", "0.3333", "200"]
    assert len({len(line) for line in lines}) == 1          # columns padded to one width
