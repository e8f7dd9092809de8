"""The central experiment of 01/02: masked vs unmasked SFT on the same held-out measures, its figure, the
prompt-loss-weight sweep over seeds and the seed-noise verdict. Imports: config … sft, scoring, results."""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import Config, out_path, replace_config, replace_sections
from .modeling import load_tokenizer
from .formatting import build_sft_dataset
from .sft import run_sft, sft_mixture
from .scoring import evaluate_checkpoint, evaluate_model
from .results import grouped_bars, save_figure


def evaluate_checkpoints(cfg: Config, names: list[str]):
    """One row per checkpoint of the profile, the same held-out measures for each (each checkpoint evaluated once,
    then reused: `scoring.evaluate_checkpoint`)."""
    import pandas as pd
    return pd.DataFrame([{"model": name, **evaluate_checkpoint(cfg, name)[0]} for name in names])


def plot_sft_comparison(histories: dict[str, list[dict]], final, path: Path) -> Path:
    """Left: held-out response-only loss of each run against steps. Then the final losses and scores side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (curve, losses, scores) = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for name, history in histories.items():
        curve.plot([h["step"] for h in history], [h["eval/response_loss"] for h in history], marker="o", label=name)
    curve.set(xlabel="optimizer step", ylabel="held-out response-only loss (nats/token)",
              title="Same held-out measure for both runs\n(their *training* losses average different tokens: "
                    "not comparable)")
    curve.legend()
    groups = [(losses, ["response_loss", "sequence_loss"], "held-out losses (lower is better)"),
              (scores, [c for c in ("exact_match", "rouge_l", "countdown_reward", "countdown_accuracy")
                        if c in final.columns], "held-out scores (higher is better)")]
    for ax, metrics, title in groups:
        grouped_bars(ax, final, metrics)
        ax.set(title=title)
    return save_figure(fig, path)


DATASET_METRICS = {"instructions": ["response_loss", "response_ppl", "sequence_loss", "exact_match", "rouge_l"],
                   "countdown": ["countdown_reward", "countdown_accuracy"]}


def write_dataset_results(final, path: Path) -> Path:
    """assets/Dataset_results.xlsx: one sheet per dataset, one row per model."""
    import pandas as pd
    path.parent.mkdir(parents=True, exist_ok=True)
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for sheet, metrics in DATASET_METRICS.items():
            final[["model"] + [m for m in metrics if m in final.columns]].to_excel(writer, sheet_name=sheet,
                                                                                  index=False)
    return path


def run_prompt_weight_sweep(cfg: Config, progress: bool = True):
    """Short SFT runs for every (prompt_loss_weight, seed) of the config; returns (per-run rows, mean ± std)."""
    import pandas as pd
    rows, tokenizer = [], load_tokenizer(out_path("checkpoints", cfg, "initial"))
    for weight in cfg.sft.sweep_weights:
        dataset = build_sft_dataset(tokenizer, sft_mixture(cfg), cfg.sft.max_length, weight)   # once for all seeds
        for seed in cfg.sft.sweep_seeds:
            stage = f"sweep/w{weight:g}_s{seed}"
            run = run_sft(cfg, stage, weight, seed=seed, max_steps=cfg.sft.sweep_steps, log=False, quiet=True,
                          dataset=dataset)
            n = cfg.sft.sweep_eval_rows
            small = replace_sections(cfg, eval=replace_config(cfg.eval, instruction_rows=n, countdown_rows=n,
                                                                loss_rows=n))
            metrics = evaluate_model(run["model"], run["tokenizer"], small)
            rows.append({"prompt_loss_weight": weight, "seed": seed, **metrics})
            shutil.rmtree(run["dir"], ignore_errors=True)
            if progress:
                print(f"weight {weight:g} seed {seed}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    runs = pd.DataFrame(rows)
    metric_cols = [c for c in runs.columns if c not in ("prompt_loss_weight", "seed")]
    agg = runs.groupby("prompt_loss_weight")[metric_cols].agg(["mean", "std"])
    summary = pd.DataFrame({"prompt_loss_weight": agg.index})
    for col in metric_cols:
        summary[col] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(agg[(col, "mean")], agg[(col, "std")])]
    return runs, summary


def seed_noise_verdict(runs, metric: str, a: float, b: float) -> str:
    """Is the difference of mean `metric` between weights a and b larger than the seed noise (2 × pooled std)?"""
    x = runs[runs.prompt_loss_weight == a][metric]
    y = runs[runs.prompt_loss_weight == b][metric]
    diff, noise = float(y.mean() - x.mean()), 2 * float(((x.std() ** 2 + y.std() ** 2) / 2) ** 0.5)
    verdict = "exceeds" if abs(diff) > noise else "is within"
    return (f"{metric}: weight {b:g} − weight {a:g} = {diff:+.4f}, which {verdict} the seed noise "
            f"(2 × pooled std = {noise:.4f}, {len(x)} and {len(y)} seeds)")
