"""`make robustness`: does the chain hold on another machine? Float rounding differs between CPUs, so another
machine pre-trains another base model, and every later stage moves with it — as with another pre-training seed.
This runs the whole chain (base model → sft_masked → dpo, reward model → rloo, rft) for several base models, each
stage cached under checkpoints/<profile>/robustness/seed_<s>/ (rerun: finished stages are kept), and reports every
stage's metrics per seed, as mean ± std and min–max, and how many base models meet each target.
Imports: config … rft."""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from .config import Config, config_dict, device, out_path, replace_config, replace_sections, write_atomic
from .config_file import with_added_fields
from .modeling import load_model, load_tokenizer
from .checkpoints import read_run, run_progress, start_fingerprint
from .sft import build_initial_model, run_sft
from .scoring import base_copying, evaluate_checkpoint
from .results import latest_summary, save_figure, write_summary
from .experiment import mean_std, read_cached
from .dpo import run_dpo
from .reward_model import run_reward_model
from .rloo import run_rloo
from .rft import run_rft

MEASURES_VERSION = 3      # raised when a chain reports new or newly computed measures: cached chains are measured
                          # again (their stages are kept, so that costs only the measures). 3: the evaluation's
                          # curve rows decoded apart (scoring.EVALUATION_VERSION 2)
# stage → the metrics reported for it (each stage's greedy held-out measures; the reward model's accuracy)
STAGE_METRICS = {"sft_masked": ("exact_match", "countdown_accuracy"), "dpo": ("exact_match", "countdown_accuracy"),
                 "reward_model": ("accuracy",), "rloo": ("exact_match", "countdown_accuracy"),
                 "rft": ("exact_match", "countdown_accuracy")}


def seeded(cfg: Config, seed: int) -> Config:
    """The profile's config with one seed for the base model's pre-training and for every stage of its chain."""
    sections = {name: replace_config(getattr(cfg, name), seed=seed)
                for name in ("pretrain", "sft", "dpo", "reward", "rloo", "rft")}
    return replace_sections(cfg, **sections)


def stage_name(seed: int, stage: str) -> str:
    return f"robustness/seed_{seed}/{stage}"


def kept_initial(cfg: Config, name: str) -> bool:
    """Whether checkpoints/<profile>/<name> already holds the base model this config pre-trains (same settings,
    whole): pre-training is then not repeated."""
    folder = out_path("checkpoints", cfg, name)
    try:
        saved = with_added_fields(json.loads((folder / "run_config.json").read_text()))
        start_fingerprint(folder, name)
    except (OSError, ValueError, RuntimeError):
        return False
    return all(saved.get(k) == config_dict(getattr(cfg, k)) for k in ("data", "model", "pretrain"))


def held_run(cfg: Config, name: str, section: str | tuple, start: str) -> str | None:
    """What a stage's folder holds of a run of this section's (or these sections') settings from these exact start
    weights: "finished" (kept), "unfinished" (resumed where it stopped), or None (anything else: trained from
    scratch) — checked before the stage samples pairs or computes reference log-probs, which take longer."""
    folder = out_path("checkpoints", cfg, name)
    try:
        progress = run_progress(folder)
        saved = with_added_fields(json.loads((folder / "run_config.json").read_text()))
        start_weights = start_fingerprint(out_path("checkpoints", cfg, start), start)
    except (OSError, ValueError, RuntimeError):
        return None
    for part in (section,) if isinstance(section, str) else section:
        if saved.get(part) != json.loads(json.dumps(dataclasses.asdict(getattr(cfg, part)), default=str)):
            return None
    if saved.get("start_weights") != start_weights:
        return None
    return "finished" if progress.get("finished") else "unfinished"


def run_chain(cfg: Config, seed: int, progress=print) -> dict:
    """The chain for one base model; returns {"seed", "<stage>/<metric>": value, …}. Each stage is kept when its
    folder already holds a finished run of the same settings from the same start (a rerun redoes only what changed);
    the greedy evaluations are cached by the weights' fingerprint."""
    cfg = seeded(cfg, seed)
    name = lambda stage: stage_name(seed, stage)
    result, started = {"seed": seed}, time.perf_counter()
    if cfg.restart or not kept_initial(cfg, name("initial")):
        build_initial_model(cfg, log=False, stage=name("initial"))
    again = replace_sections(cfg, restart=True)     # a stage held from other settings or weights: from scratch

    def unless_finished(stage: str, section: str, start: str, run) -> None:
        held = None if cfg.restart else held_run(cfg, name(stage), section, name(start))
        if held != "finished":
            run(cfg if held == "unfinished" else again)     # an interrupted run of these settings resumes

    unless_finished("sft_masked", "sft", "initial", lambda c: run_sft(
        c, name("sft_masked"), prompt_loss_weight=0.0, quiet=True, start=name("initial"), log=False))
    unless_finished("dpo", "dpo", "sft_masked", lambda c: run_dpo(
        c, start=name("sft_masked"), stage=name("dpo"), log=False))
    unless_finished("reward_model", "reward", "sft_masked", lambda c: run_reward_model(
        c, start=name("sft_masked"), stage=name("reward_model"), log=False))
    unless_finished("rloo", "rloo", "dpo", lambda c: run_rloo(c, start=name("dpo"), stage=name("rloo"), log=False))
    stages = ["sft_masked", "dpo", "rloo"]
    if cfg.robustness.rft:      # RFT samples at RLOO's settings: a change of either trains it again
        unless_finished("rft", ("rft", "rloo"), "dpo", lambda c: run_rft(c, start=name("dpo"), stage=name("rft"),
                                                                          log=False))
        stages.append("rft")
    initial = out_path("checkpoints", cfg, name("initial"))
    copying = base_copying(load_model(initial).to(device()), load_tokenizer(initial), cfg)
    result.update({f"initial/{k}": v for k, v in copying.items()})     # the skill whose timing varies most
    for stage in stages:
        metrics = evaluate_checkpoint(cfg, name(stage))[0]
        result.update({f"{stage}/{m}": metrics[m] for m in STAGE_METRICS[stage] if m in metrics})
    history = read_run(out_path("checkpoints", cfg, name("reward_model")))[0]["history"]
    result["reward_model/accuracy"] = history[-1]["eval/pairwise_accuracy"]
    history = read_run(out_path("checkpoints", cfg, name("dpo")))[0]["history"]
    result["dpo/preference_accuracy"] = history[-1]["eval/preference_reward_accuracy"]
    result["seconds"] = round(time.perf_counter() - started)
    progress(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)))
    return result


def settings_of(cfg: Config) -> dict:
    """What a cached seed's result depends on: every stage's settings and the data (the seeds are set per chain)."""
    keep = ("data", "model", "pretrain", "sft", "dpo", "reward", "rloo", "rft", "eval")
    return {**{k: config_dict(getattr(cfg, k)) for k in keep}, "rft_included": cfg.robustness.rft,
            "threads": torch.get_num_threads(), "measures": MEASURES_VERSION}


def machine() -> str:
    """The CPU a chain ran on (its float rounding made the base model), as /proc/cpuinfo names it."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def run_robustness(cfg: Config, seeds=None, shard: tuple[int, int] = (0, 1), progress=print,
                   name: str = "robustness") -> list[dict]:
    """The chain for every seed (default: `cfg.robustness.seeds`). Each finished chain is recorded with the settings
    it ran under, the machine and the date in evaluation_results/<profile>/<name>_runs/seed_<s>.json — committed, so
    a round longer than one sitting goes on elsewhere: a seed recorded under these settings is not run again, on any
    machine. shard = (k, n): only seeds k, k + n, … (n processes share the seeds, `make robustness JOBS=n`)."""
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard {k}/{n}: k must be in 0 … {n - 1}")
    seeds = list(cfg.robustness.seeds if seeds is None else seeds)
    folder = out_path("evaluation_results", cfg, f"{name}_runs")
    folder.mkdir(parents=True, exist_ok=True)
    settings, results = settings_of(cfg), []
    for seed in seeds[k::n]:
        path = folder / f"seed_{seed}.json"
        saved = read_cached(path, progress)
        if saved and with_added_fields(saved.get("settings", {})) == settings and not cfg.restart:
            results.append(saved["result"])
            continue
        progress(f"robustness: the chain for base model {seed} ({seeds.index(seed) + 1} of {len(seeds)})")
        result = run_chain(cfg, seed, progress)
        write_atomic(path, json.dumps({"settings": settings, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                       "result": result}, indent=1))
        results.append(result)
    return results


# what the chain changes, per base model: a stage against the one it started from (points of accuracy / 100)
CHANGES = {"dpo/countdown_change": ("dpo/countdown_accuracy", "sft_masked/countdown_accuracy"),
           "dpo/exact_match_change": ("dpo/exact_match", "sft_masked/exact_match"),
           "rloo/countdown_change": ("rloo/countdown_accuracy", "dpo/countdown_accuracy"),
           "rloo/exact_match_change": ("rloo/exact_match", "dpo/exact_match")}


def with_changes(row: dict) -> dict:
    """A chain's metrics with the changes of CHANGES added (where both ends are there)."""
    return {**row, **{name: row[a] - row[b] for name, (a, b) in CHANGES.items() if a in row and b in row}}


def targets(cfg: Config) -> list[tuple[str, str, float, str]]:
    """The profile's targets as (name, metric, threshold, how): `how` is ">=" or ">" on the metric of a chain's row
    (with its changes). None in cfg.targets: no such target."""
    t, out = cfg.targets, []
    if t.final_quality is not None:
        out.append((f"final exact match ≥ {t.final_quality:g}", "rloo/exact_match", t.final_quality, ">="))
    if t.final_countdown is not None:
        out.append((f"final Countdown ≥ {t.final_countdown:g}", "rloo/countdown_accuracy", t.final_countdown, ">="))
    if t.reward_model is not None:
        out.append((f"reward model ≥ {t.reward_model:g}", "reward_model/accuracy", t.reward_model, ">="))
    if t.dpo_preference is not None:
        out.append((f"DPO ranks held-out pairs ≥ {t.dpo_preference:g}", "dpo/preference_accuracy", t.dpo_preference,
                    ">="))
    if t.dpo_countdown_drop is not None:
        out.append((f"DPO keeps Countdown (≥ −{100 * t.dpo_countdown_drop:g} points)", "dpo/countdown_change",
                    -t.dpo_countdown_drop, ">="))
    if t.rloo_quality_drop is not None:
        out.append((f"RLOO keeps exact match (≥ −{100 * t.rloo_quality_drop:g} points)", "rloo/exact_match_change",
                    -t.rloo_quality_drop, ">="))
    if t.rloo_countdown_gain is not None:
        out.append(("RLOO raises Countdown", "rloo/countdown_change", t.rloo_countdown_gain, ">"))
    return out


def target_checks(cfg: Config, row: dict) -> dict[str, bool]:
    """Each of the profile's targets whose metric this chain's row has: {target: met?}. Accuracies are shares of
    hundreds of tasks, so a change is compared with a millionth of slack (−2.0 points is within a 2-point allowance)."""
    row = with_changes(row)
    return {name: (row[metric] >= threshold - 1e-6 if how == ">=" else row[metric] > threshold + 1e-6)
            for name, metric, threshold, how in targets(cfg) if metric in row}


def target_lines(cfg: Config, row: dict) -> list[str]:
    """A notebook's verdict on each target this run's numbers reach: met or not, the value, and where it falls
    against the committed range over base models (`make robustness`)."""
    row, lines = with_changes(row), []
    for name, ok in target_checks(cfg, row).items():
        metric = next(m for n, m, _, _ in targets(cfg) if n == name)
        stage, what = metric.split("/")
        value = row[metric]
        shown = f"{100 * value:+.1f} points" if what.endswith("change") else f"{value:.3f}"
        lines.append(f"target {name}: {'met' if ok else 'NOT met'} ({shown}); "
                     + where_in_range(cfg, stage, what, value, points=what.endswith("change")))
    return lines


def run_row(cfg: Config, stages, prefs=None) -> dict:
    """One run's chain as a row of `stage/metric` (what target_checks reads): the stage table of 05 (a DataFrame
    with a `model` column) and, where 03 wrote it, its preference summary (DPO's ranking, the reward model)."""
    row = {f"{r['model']}/{k}": v for r in stages.to_dict("records") for k, v in r.items() if k != "model"}
    if prefs is not None:
        for r in prefs.to_dict("records"):
            if r.get("model") == "dpo":
                row["dpo/preference_accuracy"] = r["preference_accuracy"]
            accuracy = r.get("reward_model_accuracy")
            if isinstance(accuracy, float) and accuracy == accuracy:              # NaN where no reward model
                row["reward_model/accuracy"] = accuracy
    return row


def target_table(cfg: Config, row: dict):
    """This run against each target: its value, PASS or FAIL, and where the committed range over base models lies
    (the table at the top of 05 and of the report)."""
    import pandas as pd
    row, out = with_changes(row), []
    for name, ok in target_checks(cfg, row).items():
        metric = next(m for n, m, _, _ in targets(cfg) if n == name)
        stage, what = metric.split("/")
        points = what.endswith("change")
        found = committed_range(cfg, stage, what)
        show = (lambda v: f"{100 * v:+.1f} points") if points else (lambda v: f"{v:.3f}")
        out.append({"target": name, "this run": show(row[metric]), "result": "PASS" if ok else "FAIL",
                    "committed range over base models": (f"{show(found[0])} to {show(found[1])} ({found[2]} base "
                                                         f"models)" if found else "none committed")})
    return pd.DataFrame(out)


def summarize(cfg: Config, results: list[dict]):
    """(per seed, summary, targets): every seed's metrics (and the changes each stage made) and target checks; each
    as mean ± std and min–max; each target with the number of base models that meet it."""
    import pandas as pd
    results = sorted((with_changes(r) for r in results), key=lambda r: r["seed"])
    metrics = [m for m in results[0] if "/" in m]
    per_seed = pd.DataFrame([{"seed": r["seed"], **{m: r[m] for m in metrics}} for r in results])
    rows = []
    for m in metrics:
        values = [r[m] for r in results]
        mean, std = mean_std(values)
        rows.append({"stage": m.split("/")[0], "metric": m.split("/")[1], "mean": mean, "std": std,
                     "min": min(values), "max": max(values), "seeds": len(values)})
    checks = [target_checks(cfg, r) for r in results]
    table = pd.DataFrame([{"target": name, "base models meeting it": f"{sum(c[name] for c in checks)} of "
                           f"{len(checks)}", "failed on seeds": ", ".join(str(r["seed"]) for r, c in
                                                                           zip(results, checks) if not c[name])
                           or "—"} for name in checks[0]])
    return per_seed, pd.DataFrame(rows), table


def write_robustness(cfg: Config, results: list[dict], name: str = "robustness") -> dict:
    """evaluation_results/<profile>/<name>/…: the per-seed table, the summary and the targets (csv/md/txt/xlsx
    each) and a figure (assets/<name>.png)."""
    per_seed, summary, targets = summarize(cfg, results)
    paths = {"per_seed": write_summary(per_seed, cfg, name + "_per_seed"),
             "summary": write_summary(summary, cfg, name), "targets": write_summary(targets, cfg, name + "_targets")}
    from .config import assets_dir
    paths["figure"] = plot_robustness(cfg, per_seed, assets_dir(cfg) / f"{name}.png")
    return paths


def plot_robustness(cfg: Config, per_seed, path):
    """One panel per target metric: each base model's value as a dot, the targets as dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = cfg.targets
    panels = [("exact match (greedy)", ["sft_masked/exact_match", "dpo/exact_match", "rloo/exact_match",
                                        "rft/exact_match"], t.final_quality),
              ("Countdown accuracy (greedy)", ["sft_masked/countdown_accuracy", "dpo/countdown_accuracy",
                                               "rloo/countdown_accuracy", "rft/countdown_accuracy"],
               t.final_countdown),
              ("reward model\n(held-out pairs)", ["reward_model/accuracy"], t.reward_model)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [1, 1, 0.45]})
    for ax, (title, columns, target) in zip(axes, panels):
        columns = [c for c in columns if c in per_seed]
        for i, column in enumerate(columns):
            ax.scatter([i] * len(per_seed), per_seed[column], s=22, alpha=0.8, color=f"C{i}")
            ax.errorbar(i + 0.18, per_seed[column].mean(), yerr=per_seed[column].std(), fmt="_", color="black",
                        capsize=4)
        if target is not None:
            ax.axhline(target, linestyle="--", color="grey", linewidth=1)
            ax.annotate(f"target {target:g}", (len(columns) - 0.5, target), fontsize=8, color="grey",
                        ha="right", va="bottom")
        ax.set_xticks(range(len(columns)), [c.split("/")[0] for c in columns])
        ax.set_xlim(-0.5, len(columns) - 0.3)
        rows = {"exact": cfg.eval.instruction_rows, "Countdown": cfg.eval.countdown_rows}
        n = next((v for k, v in rows.items() if title.startswith(k)), None)
        ax.set(title=title, ylabel=f"share of {n:,} held-out tasks" if n else "share of held-out pairs")
    fig.suptitle(f"The chain on {len(per_seed)} base models (dots: one base model each; bar: mean ± std)")
    return save_figure(fig, path)


def committed_range(cfg: Config, stage: str, metric: str, name: str = "robustness") -> tuple[float, float, int] | None:
    """(min, max, base models) of a stage's metric in the newest robustness summary of the profile, or None."""
    summary = latest_summary(cfg, name)
    if summary is None:
        return None
    row = summary[(summary["stage"] == stage) & (summary["metric"] == metric)]
    return None if row.empty else (float(row["min"].iloc[0]), float(row["max"].iloc[0]), int(row["seeds"].iloc[0]))


def where_in_range(cfg: Config, stage: str, metric: str, value: float, points: bool = False) -> str:
    """A sentence placing this run's value against the committed range over base models (`points`: a change, shown
    in points of accuracy)."""
    found = committed_range(cfg, stage, metric)
    if found is None:
        return f"no committed robustness range for {stage} {metric} in this profile (make robustness)"
    low, high, n = found
    show = (lambda v: f"{100 * v:+.1f}") if points else (lambda v: f"{v:.3f}")
    where = ("inside" if low - 1e-9 <= value <= high + 1e-9 else "below" if value < low else "above")
    return (f"{show(value)} is {where} the committed range {show(low)} to {show(high)}"
            + (" points" if points else "") + f" of {n} base models"
            + ("" if where == "inside" else ": see docs/RESULTS.md, robustness"))
