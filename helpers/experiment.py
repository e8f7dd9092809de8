"""The central experiment, credible (`make experiment`): masked vs whole-sequence loss with seeds at full length,
the gradient-dilution confound controlled, and a prompt-loss-weight × SFT-data-size grid. Every cell is a cached
run (interrupt and rerun: finished cells are not redone); the aggregation gives mean ± std and a verdict against
seed noise. Imports: config … comparison."""
from __future__ import annotations

import json
import math
import shutil
import time

from .config import (Config, ExperimentConfig, assets_dir, config_dict, out_path, replace_config, replace_sections,
                     write_atomic)
from .modeling import load_tokenizer
from .formatting import build_sft_dataset
from .sft import run_sft, sft_mixture
from .scoring import evaluate_model
from .checkpoints import start_fingerprint
from .results import log_axis, machine, save_figure, timestamp, write_summary

METRICS = ("response_loss", "exact_match", "rouge_l", "countdown_accuracy", "countdown_reward", "sequence_loss")


def grid_cells(cfg: Config) -> list[dict]:
    """Every run of the experiment: weights × data sizes × seeds with the plain per-token normalisation, and the
    controlled arm (`controlled_weights` at the largest size, normalised by response tokens)."""
    e = cfg.experiment
    cells = [dict(weight=w, size=n, seed=s, normalization="trained_tokens")
             for n in e.data_sizes for w in e.weights for s in e.seeds]
    cells += [dict(weight=w, size=max(e.data_sizes), seed=s, normalization="response_tokens")
              for w in e.controlled_weights for s in e.seeds]
    return cells


def cell_key(cell: dict) -> str:
    norm = "" if cell["normalization"] == "trained_tokens" else "_respnorm"
    return f"w{cell['weight']:g}_n{cell['size']}_s{cell['seed']}{norm}"


def flattened(curve: list[tuple[int, float]], steps: int, tolerance: float) -> bool:
    """Has the run stopped learning? The last fifth of its steps lowered the best held-out response loss by less
    than `tolerance` (relative): a flat tail, or one that rises again (small sets overfit), has learned what it can;
    a tail still falling has not."""
    before = [loss for step, loss in curve if step < 0.8 * steps]
    tail = [loss for step, loss in curve if step >= 0.8 * steps]
    return bool(before and tail) and min(tail) >= (1 - tolerance) * min(before)


def run_cell(cfg: Config, cell: dict, dataset=None) -> dict:
    """One SFT run of the grid at full length, evaluated on the held-out sets; its response-loss curve kept."""
    e = cfg.experiment
    sft = replace_config(cfg.sft, prompt_loss_weight=cell["weight"], seed=cell["seed"], max_steps=e.steps,
                         train_conversations=cell["size"], loss_normalization=cell["normalization"],
                         eval_every=max(1, e.steps // 10), save_every=max(1, e.steps // 5))
    cell_cfg = replace_sections(cfg, sft=sft, eval=replace_config(cfg.eval, instruction_rows=e.eval_rows,
                                                                  countdown_rows=e.eval_rows, loss_rows=e.eval_rows))
    run = run_sft(cell_cfg, f"experiment/{cell_key(cell)}", log=False, quiet=True, dataset=dataset)
    metrics = evaluate_model(run.model, run.tokenizer, cell_cfg)
    curve = [(h["step"], h["eval/response_loss"]) for h in run.history]
    shutil.rmtree(run.dir, ignore_errors=True)
    return {**cell, **metrics, "curve": curve}      # whether it had stopped learning: write_experiment judges


def base_weights(cfg: Config) -> str | None:
    """The fingerprint of the profile's base model (checkpoints/<profile>/initial), or None while there is none."""
    try:
        return start_fingerprint(out_path("checkpoints", cfg, "initial"), "initial")
    except RuntimeError:
        return None


def read_cached(path, progress=print) -> dict | None:
    """A cached result file, or None when there is none — or when it cannot be read (a truncated or edited file):
    then it says which file and the run computes it again, instead of stopping on a JSON error."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        progress(f"{path} is unreadable ({type(err).__name__}): computing it again")
        return None
    return saved if isinstance(saved, dict) else None


def run_experiment(cfg: Config, run=run_cell, progress=print, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Every cell, each cached in outputs/<profile>/experiment/<cell>.json with the settings it ran under: a rerun
    (after an interruption, or to add cells) does only the missing ones. Prints progress and an ETA.

    shard = (k, n) runs only cells k, k + n, k + 2n, … (their results only are returned): n processes share the
    grid (`make experiment JOBS=n`; tiny SFT runs as fast on one thread as on two), then a plain run reads
    every cached cell and writes the results."""
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard {k}/{n}: k must be in 0 … {n - 1}")
    folder = out_path("outputs", cfg, "experiment")
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"experiment": config_dict(cfg.experiment), "sft": config_dict(cfg.sft), "data": config_dict(cfg.data),
                "initial_weights": base_weights(cfg)}        # another base model: every cell runs again
    cells, results, took = grid_cells(cfg)[k::n], [], []
    datasets, tokenizer = {}, None
    for i, cell in enumerate(cells, 1):
        path = folder / f"{cell_key(cell)}.json"
        saved = read_cached(path, progress)
        if saved and saved.get("settings") == settings:
            results.append(saved["result"])
            continue
        started = time.perf_counter()
        if run is run_cell:                    # tokenize each (weight, size, normalisation) once for all its seeds
            tokenizer = tokenizer or load_tokenizer(out_path("checkpoints", cfg, "initial"))
            key = (cell["weight"], cell["size"])
            if key not in datasets:
                size_cfg = replace_sections(cfg, sft=replace_config(cfg.sft, train_conversations=cell["size"]))
                datasets[key] = build_sft_dataset(tokenizer, sft_mixture(size_cfg), cfg.sft.max_length, cell["weight"])
            result = run(cfg, cell, datasets[key])
        else:
            result = run(cfg, cell)
        write_atomic(path, json.dumps({"settings": settings, "result": result}, default=str))
        results.append(result)
        took.append(time.perf_counter() - started)
        left = sum(1 for c in cells[i:] if not (folder / f"{cell_key(c)}.json").exists())
        eta = left * sum(took) / len(took)
        progress(f"[{i}/{len(cells)}] {cell_key(cell)}: exact match {result.get('exact_match', float('nan')):.3f}, "
                 f"response loss {result.get('response_loss', float('nan')):.3f} ({took[-1]:.0f} s); "
                 f"{left} to go, about {eta / 60:.0f} min")
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std of one value is 0."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def noise_verdict(a: list[float], b: list[float], metric: str, names=("a", "b")) -> dict:
    """Is mean(b) − mean(a) larger than the seed noise, 2 × the pooled standard deviation of the two groups?"""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    noise = 2 * math.sqrt((sa ** 2 + sb ** 2) / 2)
    diff = mb - ma
    return {"metric": metric, names[0]: ma, f"{names[0]}_std": sa, names[1]: mb, f"{names[1]}_std": sb,
            "difference": diff, "noise": noise, "verdict": "exceeds the seed noise" if abs(diff) > noise else
            "within the seed noise"}


def summarize(results: list[dict]):
    """Mean ± std per (normalisation, data size, weight) of every measure, and how many runs had flattened."""
    import pandas as pd
    runs = pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in results])
    rows = []
    for (norm, size, weight), part in runs.groupby(["normalization", "size", "weight"], sort=True):
        row = {"normalization": norm, "size": size, "weight": weight, "seeds": len(part),
               "flattened": int(part["flattened"].sum())}
        for metric in METRICS:
            if metric in part:
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(list(part[metric]))
        rows.append(row)
    return runs, pd.DataFrame(rows)


def headline(results: list[dict], metrics=("response_loss", "exact_match", "countdown_accuracy")) -> list[dict]:
    """Masked (weight 0) against unmasked (weight 1) at the largest data size, per-token normalisation — and the
    controlled arm: unmasked normalised by response tokens against masked, and against plain unmasked."""
    size = max(r["size"] for r in results)
    pick = lambda w, norm: [r for r in results if r["weight"] == w and r["size"] == size and r["normalization"] == norm]
    masked, unmasked = pick(0.0, "trained_tokens"), pick(1.0, "trained_tokens")
    controlled = pick(1.0, "response_tokens")
    out = []
    for metric in metrics:
        if masked and unmasked and metric in masked[0]:
            out.append({"comparison": "masked → unmasked", **noise_verdict(
                [r[metric] for r in masked], [r[metric] for r in unmasked], metric, ("from", "to"))})
        if masked and controlled and metric in masked[0]:
            out.append({"comparison": "masked → unmasked, response-normalised", **noise_verdict(
                [r[metric] for r in masked], [r[metric] for r in controlled], metric, ("from", "to"))})
        if unmasked and controlled and metric in unmasked[0]:
            out.append({"comparison": "unmasked → unmasked, response-normalised", **noise_verdict(
                [r[metric] for r in unmasked], [r[metric] for r in controlled], metric, ("from", "to"))})
    return out


def write_experiment(cfg: Config, results: list[dict]) -> dict:
    """The experiment's results: per-run table (sft_sweep), mean ± std per cell (sft_sweep_mean_std), the headline
    verdicts (sft_headline) as csv/md/txt/xlsx, every run with its curve as results.json beside them, and the
    heat map and Comparison.png in assets/."""
    import pandas as pd
    stamp = timestamp()
    e = cfg.experiment
    results = [{**r, "flattened": flattened(r["curve"], e.steps, e.flat_tolerance), "flat_tolerance": e.flat_tolerance}
               for r in results]            # judged here, from each curve, under the tolerance it records
    runs, summary = summarize(results)
    paths = {"runs": write_summary(runs, cfg, "sft_sweep", stamp),
             "mean_std": write_summary(summary, cfg, "sft_sweep_mean_std", stamp),
             "headline": write_summary(pd.DataFrame(headline(results)), cfg, "sft_headline", stamp)}
    raw = out_path("evaluation_results", cfg, "sft_sweep", stamp, "results.json")
    origin = {"made": time.strftime("%Y-%m-%d"), "machine": machine(), "initial_weights": base_weights(cfg)}
    raw.write_text(json.dumps({"experiment": config_dict(cfg.experiment), "origin": origin, "results": results},
                              default=str))
    paths["heatmap"] = plot_grid(summary, assets_dir(cfg) / "sweep_heatmap.png")
    paths["comparison"] = plot_headline(results, assets_dir(cfg) / "Comparison.png")
    return paths


def latest_experiment(cfg: Config) -> list[dict] | None:
    """The newest committed experiment's runs (with their curves), or None if `make experiment` never ran."""
    found = sorted(out_path("evaluation_results", cfg, "sft_sweep").glob("*/results.json"))
    return json.loads(found[-1].read_text())["results"] if found else None


def experiment_origin(cfg: Config) -> str:
    """Where the committed experiment comes from, said beside it: which run (its folder), how many seeds, when and on
    what machine it was made, and whether from this base model (the fingerprint of checkpoints/<profile>/initial)
    or another one — never from this kernel."""
    found = sorted(out_path("evaluation_results", cfg, "sft_sweep").glob("*/results.json"))
    if not found:
        return "no experiment yet for this profile"
    saved = json.loads(found[-1].read_text())
    origin, stamp = saved.get("origin") or {}, found[-1].parent.name
    seeds = len({r["seed"] for r in saved.get("results", []) if "seed" in r})
    made = origin.get("made") or f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} (its folder's stamp)"
    where = (f"The experiment shown here is a committed run, not this kernel's: "
             f"`evaluation_results/{cfg.profile}/sft_sweep/{stamp}/` ({seeds} seeds), made by `make experiment` on "
             f"{made}")
    if not origin:                  # made before runs recorded their base model and data world
        return (where + ", before runs recorded their base model: its base model and tiny world are not known, and "
                "both have changed since (docs/LOG.md). Its numbers describe that run, not this notebook's; "
                "`make experiment` remakes them from this base model.")
    same = origin.get("initial_weights") == base_weights(cfg)
    return (where + f" ({origin.get('machine', 'machine not recorded')}), from "
            + ("this notebook's own base model." if same else
               "another base model than this notebook's (another machine or seed): its numbers are that base "
               "model's; `make experiment` remakes them from this one."))


def conclusion(results: list[dict], quality: str = "exact_match") -> list[str]:
    """The experiment's finding in five sentences or fewer, every number from the runs: the headline difference
    against seed noise; how much of it the control (same response gradient) explains; the best weight per data size
    and what a small weight costs; how that relates to the two papers; the caveats, with how many runs had stopped
    learning. "No difference" where that is what the numbers say."""
    lines, heads = [], {(h["comparison"], h["metric"]): h for h in headline(results, ("response_loss", quality,
                                                                                       "countdown_accuracy"))}
    size, seeds = max(r["size"] for r in results), len({r["seed"] for r in results})
    main = heads.get(("masked → unmasked", quality))
    if main:
        cd = heads.get(("masked → unmasked", "countdown_accuracy"))
        lines.append(f"With {seeds} seeds at full length on {size} conversations, loss on the whole sequence moved "
                     f"held-out {quality.replace('_', ' ')} from {main['from']:.3f} ± {main['from_std']:.3f} (masked) "
                     f"to {main['to']:.3f} ± {main['to_std']:.3f}: {100 * main['difference']:+.1f} points, "
                     f"{main['verdict']} (2 × pooled std = {100 * main['noise']:.1f} points)"
                     + (" — no difference these seeds can tell apart" if main["verdict"].startswith("within") else "")
                     + (f"; Countdown accuracy moved {100 * cd['difference']:+.1f} points ({cd['verdict']})"
                        if cd and quality != "countdown_accuracy" else "") + ".")
    control = heads.get(("masked → unmasked, response-normalised", quality))
    if main and control and abs(main["difference"]) > 1e-9:
        closed = 1 - control["difference"] / main["difference"]
        cd_control = heads.get(("masked → unmasked, response-normalised", "countdown_accuracy"))
        cd_closed = (1 - cd_control["difference"] / cd["difference"] if cd and cd_control
                     and abs(cd["difference"]) > 1e-9 and quality != "countdown_accuracy" else None)
        lines.append(f"Normalising the whole-sequence loss by response tokens — the response then gets the same "
                     f"gradient as in the masked run — leaves a {quality.replace('_', ' ')} difference of "
                     f"{100 * control['difference']:+.1f} points ({control['verdict']}): about {100 * closed:.0f} % "
                     f"of that gap is gradient dilution, the rest is what training on the prompt itself does"
                     + (f"; on Countdown accuracy the same control closes about {100 * cd_closed:.0f} % of the gap "
                        f"({100 * cd_control['difference']:+.1f} points left, {cd_control['verdict']})"
                        if cd_closed is not None else "") + ".")
    best = {}
    for r in results:
        if r["normalization"] == "trained_tokens":
            best.setdefault(r["size"], {}).setdefault(r["weight"], []).append(r[quality])
    caveats = f"one data world and one model size, differences judged against {seeds} seeds only"
    if len(best) > 1:
        picks = {n: max(ws, key=lambda w: mean_std(ws[w])[0]) for n, ws in sorted(best.items())}
        # does the best weight beat masking (weight 0) by more than the seed noise?
        beats = {n: w != 0 and 0 in best[n] and noise_verdict(best[n][0], best[n][w], quality)["verdict"]
                 == "exceeds the seed noise" for n, w in picks.items()}
        said = []
        for n, w in picks.items():
            gain = mean_std(best[n][w])[0] - mean_std(best[n][0])[0] if 0 in best[n] else float("nan")
            said.append(f"{w:g} at {n} conversations" + ("" if w == 0 else f" ({100 * gain:+.1f} points over "
                        f"masking, {'beyond' if beats[n] else 'within'} the seed noise)"))
        grid = "The best prompt-loss weight by mean " + quality.replace("_", " ") + " is " + ", ".join(said)
        cheap = [w for w in best[min(best)] if 0 < w < 1]
        if 0 in best[min(best)] and cheap and all("sequence_loss" in r for r in results):
            n, w = min(best), min(cheap)
            seq_of = lambda weight: mean_std([r["sequence_loss"] for r in results if r["size"] == n
                                              and r["weight"] == weight and r["normalization"] == "trained_tokens"])[0]
            same = noise_verdict(best[n][0], best[n][w], quality)["verdict"].startswith("within")
            grid += (f"; a small weight models the prompts {'at no measurable cost' if same else 'but costs'}: at "
                     f"{n} conversations weight {w:g} reaches {mean_std(best[n][w])[0]:.3f} (masked "
                     f"{mean_std(best[n][0])[0]:.3f}) with a whole-sequence loss of {seq_of(w):.2f} nats/token "
                     f"against masking's {seq_of(0):.2f}")
        lines.append(grid + ".")
        small, large = min(picks), max(picks)
        lines.append("Shi et al. (2024) find loss on the instructions helps most when the SFT set is small and "
                     "completions are short, Huerta-Enochian & Ko (2024) a small prompt-loss weight best; here "
                     + ("a non-zero weight beats masking beyond the seed noise at the smallest size but not at the "
                        "largest, as Shi et al. would predict." if beats[small] and not beats[large] else
                        "a non-zero weight beats masking beyond the seed noise at every size." if all(beats.values())
                        else "no non-zero weight beats masking beyond the seed noise at any size: this setting gives "
                        "no sign that prompt loss helps."
                        if not any(beats.values()) else
                        "prompt loss helps beyond the seed noise only at some sizes, not in the direction Shi et al. "
                        "report."))
    plain = [r for r in results if r["normalization"] == "trained_tokens" and "flattened" in r]
    if plain:
        counts = ", ".join(f"{sum(r['flattened'] for r in plain if r['size'] == n)} of "
                           f"{sum(r['size'] == n for r in plain)} runs at {n} conversations"
                           for n in sorted({r["size"] for r in plain}))
        # results written before the tolerance was recorded were judged under the config's default
        tolerance = plain[0].get("flat_tolerance", ExperimentConfig.flat_tolerance)
        caveats = (f"by the stated rule (the last fifth of the steps lowered the best held-out response loss by less "
                   f"than {100 * tolerance:g} %) {counts} had stopped learning, and a run still learning would score "
                   f"higher with more steps; " + caveats)
    lines.append(f"Caveats: {caveats}.")
    return lines


def plot_grid(summary, path, metrics=("exact_match", "response_loss")):
    """Heat maps: data size (rows) × prompt-loss weight (columns), mean over seeds, per-token normalisation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    part = summary[summary.normalization == "trained_tokens"]
    metrics = [m for m in metrics if f"{m}_mean" in part]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid = part.pivot(index="size", columns="weight", values=f"{metric}_mean")
        std = part.pivot(index="size", columns="weight", values=f"{metric}_std")
        image = ax.imshow(grid.values, cmap="viridis" if metric != "response_loss" else "viridis_r", aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [f"{w:g}" for w in grid.columns])
        ax.set_yticks(range(len(grid.index)), [str(n) for n in grid.index])
        ax.set(xlabel="prompt-loss weight (0 = masked, 1 = whole sequence)", ylabel="SFT conversations",
               title=f"held-out {metric.replace('_', ' ')} (mean ± std, {int(part.seeds.max())} seeds)")
        for (i, j), value in np.ndenumerate(grid.values):
            r, g, b, _ = image.cmap(image.norm(value))      # the cell's own colour (either colour map's direction)
            ax.text(j, i, f"{value:.2f}\n±{std.values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
        fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_headline(results: list[dict], path):
    """Comparison.png: the held-out response-only loss of every seed, masked and unmasked (largest data size), and
    the final scores as mean ± std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    size = max(r["size"] for r in results)
    arms = {"masked": (0.0, "trained_tokens"), "unmasked": (1.0, "trained_tokens"),
            "unmasked, response-normalised": (1.0, "response_tokens")}
    fig, (curves, scores) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    metrics = [m for m in ("exact_match", "rouge_l", "countdown_accuracy") if m in results[0]]
    for j, (name, (weight, norm)) in enumerate(arms.items()):
        runs = [r for r in results if r["weight"] == weight and r["size"] == size and r["normalization"] == norm]
        for i, r in enumerate(runs):
            steps, losses = zip(*r["curve"])
            curves.plot(steps[1:], losses[1:], color=f"C{j}", alpha=0.8, marker=".",
                        label=f"{name} ({len(runs)} seeds)" if i == 0 else None)
        if runs:
            stats = [mean_std([r[m] for r in runs]) for m in metrics]
            scores.bar([k + 0.27 * j for k in range(len(metrics))], [m for m, _ in stats], 0.27,
                       yerr=[s for _, s in stats], capsize=3, color=f"C{j}", label=name)
    curves.set(xlabel="optimizer step (after the first evaluation)", ylabel="held-out response-only loss (nats/token)",
               title="Every seed, the same held-out measure")
    log_axis(curves)
    curves.legend(fontsize=8)
    scores.set_xticks([k + 0.27 for k in range(len(metrics))], [m.replace("_", " ") for m in metrics])
    scores.set(ylabel="held-out score (mean ± std over seeds)", title="Final scores", ylim=(0, 1))
    scores.legend(fontsize=8)
    return save_figure(fig, path)
