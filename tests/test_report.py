"""The generated report: numbers come from the tables it is given, and the direction of each change is named."""
import pandas as pd

from helpers import config, report


def test_report_names_what_improved_and_what_did_not(output_dir):
    cfg = config.get_config("smoke")
    stages = pd.DataFrame([{"model": "initial", "exact_match": 0.0, "countdown_accuracy": 0.0},
                           {"model": "sft_masked", "exact_match": 0.5, "countdown_accuracy": 0.2},
                           {"model": "dpo", "exact_match": 0.75, "countdown_accuracy": 0.1}])
    path = report.write_report(cfg, stages, "dpo")
    assert path == output_dir / "report" / "report_smoke.md"
    text = path.read_text()
    assert "`final` = `dpo`" in text
    assert "exact_match: `initial` 0.000 → `sft_masked` 0.500 (improved, +50.0 points)" in text
    assert "countdown_accuracy: `sft_masked` 0.200 → `dpo` 0.100 (got worse, -10.0 points)" in text
