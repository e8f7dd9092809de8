"""report/report.md, generated from the saved summaries only (no number typed in). Imports: config, results,
comparison, experiment, evaluation."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .config import Config, out_path, output_root, quality_metric
from .results import latest_summary, markdown_table
from .experiment import conclusion, experiment_origin, headline, latest_experiment
from .comparison import paired_verdict, stage_change
from .evaluation import LEGEND, stage_tables
from .robustness import run_row, target_table, with_changes


def report_path(cfg: Config) -> Path:
    return output_root() / "report" / ("report.md" if cfg.profile == "tiny" else f"report_{cfg.profile}.md")


CHAIN = ("initial", "sft_masked", "dpo", "rloo")


def chain_notes(by: dict, quality: str, rft_share: float = 1.0, cfg: Config | None = None) -> list[str]:
    """Stage by stage along the chain, both tracks: what each stage changed and whether that is more than chance
    (a sign test on the held-out tasks gained and lost, from the saved answers; `cfg` None: no verdict) — the
    report's "what improved"."""
    notes = []
    for a, b in zip(CHAIN, CHAIN[1:]):
        if a in by and b in by:
            notes.append(f"- `{a}` → `{b}`: {stage_change(cfg, by, a, b, quality)}.")
    if "sft_masked" in by and "sft_unmasked" in by:
        change = stage_change(cfg, by, "sft_masked", "sft_unmasked", quality)
        notes.append(f"- masked → unmasked SFT (this run's single seed; the seeded experiment: `02_sft_unmasked` and "
                     f"the report's \"Masked vs unmasked SFT\"): {change}.")
    prompts = cfg.eval.sampled_rows if cfg is not None else None
    notes += best_of_n_notes(by.get("rloo", {}), prompts)
    for stage, row in by.items():            # wherever best-of-8 came out below best-of-4: is that more than noise?
        if stage != "rloo" and any(row.get(f"best_of_8_{p}", 1) < row.get(f"best_of_4_{p}", 0)
                                   for p in ("verifier", "reward_model")):
            notes += best_of_n_notes(row, prompts, f"`{stage}`")
    if "rloo" in by and "rft" in by:
        share = "as many samples as RLOO" if rft_share == 1 else f"{rft_share:.0%} of RLOO's samples"
        change = stage_change(cfg, by, "rloo", "rft", quality)
        notes.append(f"- RLOO → rejection-sampling fine-tuning, both from `dpo`, each at the end of its run (RFT draws "
                     f"{share}): {change}. At equal samples: `assets/rft_vs_rloo.png` and "
                     "`evaluation_results/<profile>/rft_vs_rloo/`.")
    return notes


def best_of_n_notes(row: dict, prompts: int | None, stage: str = "`final`'s") -> list[str]:
    """A stage's best-of-n (default `final`'s) at the two sizes, with the noise of their difference: both are shares
    of a few sampled prompts, so best-of-8 can come out below best-of-4 by chance. ±2 standard errors of a
    difference of two shares of `prompts` (as if independent: the same prompts make it smaller, so this errs towards
    "within noise")."""
    notes = []
    for picker, track in (("verifier", "Countdown"), ("reward_model", "instruction following")):
        small, large = (f"best_of_{n}_{picker}" for n in (4, 8))
        if small not in row or large not in row or not prompts:
            continue
        a, b = row[small], row[large]
        if not (0 <= a <= 1 and 0 <= b <= 1):       # not measured for this stage (NaN)
            continue
        noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / prompts)
        verdict = "within noise" if abs(b - a) <= noise else ("more than noise" if b > a else "worse, beyond noise")
        notes.append(f"- {stage} best-of-n by the {picker.replace('_', ' ')} ({track}, {prompts} sampled prompts): "
                     f"best-of-4 {a:.3f}, best-of-8 {b:.3f} ({100 * (b - a):+.1f} points; ±{100 * noise:.1f} is the "
                     f"noise of such a difference: {verdict}).")
    return notes


def robustness_section(cfg: Config, row: dict) -> list[str]:
    """The committed `make robustness` results — each target over base models, each headline as mean ± std
    (min–max) — and where this run falls among them: another machine pre-trains another base model. `row`: this run
    as `run_row` gives it ("stage/metric": value), its changes added here."""
    summary, checks = latest_summary(cfg, "robustness"), latest_summary(cfg, "robustness_targets")
    if summary is None or checks is None:
        return []
    n = int(summary["seeds"].iloc[0])
    lines = ["", "## Does it hold for another base model?", "",
             "Float rounding differs between CPUs, so another machine pre-trains another base model, and every "
             f"stage moves with it. `make robustness` ran the whole chain for {n} base models (pre-training seeds "
             "standing in for machines; settings tuned on other seeds). Each target, on every one of them:", "",
             markdown_table(checks), "", "Each stage over the base models, and this run as one more draw:", "",
             "| stage | metric | mean ± std | min–max | this run | where |", "|---|---|---|---|---|---|"]
    mine_all = with_changes(row)
    for r in summary.itertuples(index=False):
        value = mine_all.get(f"{r.stage}/{r.metric}")
        if value is None or value != value:       # not measured by this run (NaN: no such stage here)
            mine, where = "", ""
        else:
            mine = f"{value:.3f}"
            inside = r.min - 1e-9 <= value <= r.max + 1e-9
            where = "inside" if inside else "below" if value < r.min else "above"
        lines.append(f"| {r.stage} | {r.metric} | {r.mean:.3f} ± {r.std:.3f} | {r.min:.3f}–{r.max:.3f} "
                     f"| {mine} | {where} |")
    return lines + ["", "![robustness](../assets/robustness.png)"]


def iterate_section(cfg: Config) -> list[str]:
    """The committed `make iterate` round, if there is one: the pairs each rule kept, both rounds beside the model
    they started from with their paired verdicts, and whether another round helped, hurt or did nothing."""
    table, pairs = latest_summary(cfg, "iterate"), latest_summary(cfg, "iterate_pairs")
    if table is None or pairs is None:
        return []
    start, epochs = pairs["latest"].iloc[0], pairs["epochs"].iloc[0]
    verdicts = [c for c in table.columns if " vs " in c]
    lines = ["", "## Another preference round (`make iterate`)", "",
             f"From `{start}`, one more DPO round ({epochs:g} passes over its pairs) on pairs of its own samples "
             f"(chosen) over `{pairs['previous'].iloc[0]}`'s (rejected) for the same {int(pairs['prompts'].iloc[0])} "
             "training prompts — the brief's pipeline b: every pair whose samples differ (`round_latest`), or only "
             "those the judge scores higher (`round_judged`) — and one on SPIN's pairs (the reference answer over the "
             "previous model's sample; `round_spin`) at `round_latest`'s count. Pairs each rule kept:", "",
             markdown_table(pairs[["rule", "pairs kept", "trained on"]]), "", markdown_table(table), ""]
    for row in table.iloc[1:].to_dict("records"):
        said = [str(row[c]) for c in verdicts]
        word = ("hurt" if any(v.startswith("worse") for v in said) else
                "helped" if any(v.startswith("improved") for v in said) else "did nothing within noise")
        lines.append(f"- `{row['checkpoint']}`: another round {word} "
                     f"({'; '.join(f'{c}: {v}' for c, v in zip(verdicts, said))}).")
    return lines + ["", "`final` stays the chain's end: neither round is kept in its place."]


def write_report(cfg: Config, stages, final: str) -> Path:
    """report/report.md from the saved summaries: the target table first, then setup, metrics per stage, figures,
    masked vs unmasked with its seed noise, and notes on what improved and what did not — numbers only from the
    files, nothing typed in."""
    quality = quality_metric(cfg)
    manifests = sorted(out_path("data", cfg).glob("*/manifest.json"))
    sizes = {p.parent.name: json.loads(p.read_text())["splits"] for p in manifests}
    lines = [f"# Report — profile `{cfg.profile}`", "",
             f"Generated by `05_evaluation` on {time.strftime('%Y-%m-%d %H:%M')} from "
             f"`evaluation_results/{cfg.profile}/`. Model: `{cfg.model.name}`"
             + (f" ({cfg.model.num_layers} layers, hidden {cfg.model.hidden_size})"
                if cfg.model.name == "tiny" else ""),
             "", "## Targets", "", "This run against each target of the profile, and the range `make robustness` "
             "measured over base models (another machine pre-trains another base model):", ""]
    prefs = latest_summary(cfg, "dpo")      # written by 03_dpo: the preference-learning evidence
    mine = run_row(cfg, stages, prefs)
    checks = target_table(cfg, mine)
    lines += [markdown_table(checks) if len(checks) else "(no target applies to this profile's stages)", "",
              "## Setup", "", "| dataset | splits |", "|---|---|"]
    lines += [f"| {name} | {', '.join(f'{k}: {v}' for k, v in split.items())} |" for name, split in sizes.items()]
    lines += ["", f"SFT: {cfg.sft.max_steps} steps, batch {cfg.sft.batch_size}, lr {cfg.sft.lr}; "
              f"DPO: β = {cfg.dpo.beta}, "
              f"{cfg.dpo.max_steps} steps; RLOO: k = {cfg.rloo.k}, {cfg.rloo.max_steps} steps, KL {cfg.rloo.kl_coef}. "
              f"Sampled measures: temperature {cfg.eval.temperature}, top_p {cfg.eval.top_p}, top_k {cfg.eval.top_k}, "
              f"{cfg.eval.n_samples} samples on {cfg.eval.sampled_rows} prompts.", "",
              "## Every stage on the same held-out sets", ""]
    for theme, part in stage_tables(stages).items():
        lines += [f"**{theme}**", "", markdown_table(part), ""]
    lines += ["<details><summary>What each column measures</summary>", ""]
    lines += [f"- `{m}`: {meaning}" for m, meaning in LEGEND.items() if m in stages.columns]
    lines += ["", "</details>", "",
              f"`final` = `{final}`, the end of the chain `sft_masked` → `dpo` → `rloo`.", "",
              "![stage metrics](../assets/stage_metrics.png)", "",
              "![learning curves](../assets/learning_curves.png)", "",
              "## Masked vs unmasked SFT", "", "![comparison](../assets/Comparison.png)", ""]
    results = latest_experiment(cfg)
    if results:
        rows = [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in h.items()}
                for h in headline(results, ("response_loss", quality, "countdown_accuracy"))]
        import pandas as pd
        lines += [experiment_origin(cfg), "",
                  "Seeded comparison at full length (`make experiment`; mean over seeds, difference against "
                  "2 × pooled std):", "", markdown_table(pd.DataFrame(rows)[["comparison", "metric", "from", "to",
                                                                              "difference", "noise", "verdict"]]),
                  "", "![grid](../assets/sweep_heatmap.png)", "", "**Conclusion.** " + " ".join(conclusion(results,
                                                                                                        quality)), ""]
    by = {r["model"]: r for r in stages.to_dict("records")}
    notes = chain_notes(by, quality, cfg.rft.sample_share, cfg)
    if prefs is not None and {"sft_masked", "dpo"} <= set(prefs.model):
        acc = dict(zip(prefs.model, prefs.preference_accuracy))
        verdict = ""
        if {"preference_pairs_gained", "preference_pairs_lost"} <= set(prefs.columns):
            row = prefs[prefs.model == "dpo"].iloc[0]
            gained, lost = int(row.preference_pairs_gained), int(row.preference_pairs_lost)
            verdict = f" ({paired_verdict(gained, lost, unit='pair')})"
        notes.append(f"- held-out preference accuracy, each model ranking by its own log-probs: `sft_masked` "
                     f"{acc['sft_masked']:.3f} → `dpo` {acc['dpo']:.3f}{verdict}.")
        rm_accuracy = prefs.reward_model_accuracy.dropna()
        if len(rm_accuracy):
            notes.append(f"- reward model (Bradley–Terry, on `sft_masked`): held-out pairwise accuracy "
                         f"{rm_accuracy.iloc[-1]:.3f}.")
    lines += ["", "## What improved and what did not", ""] + notes
    lines += iterate_section(cfg)
    lines += robustness_section(cfg, mine)
    path = report_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
