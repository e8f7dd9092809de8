"""01/02's comparison of the demo's own runs: masked vs unmasked SFT on the same held-out measures, its figure and
the per-dataset workbook, and a stage's change with its noise verdict (the seeded experiment is `experiment`).
Imports: config, modeling, checkpoints, sft, scoring, results."""
from __future__ import annotations

import math
from pathlib import Path

from .config import Config, device, out_path, quality_metric
from .modeling import load_model, load_tokenizer
from .checkpoints import CheckpointError
from .sft import example_losses, heldout_loss_examples
from .scoring import evaluate_checkpoint
from .results import grouped_bars, log_axis, save_figure


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
    curve.set(xlabel="optimizer step", ylabel="held-out response-only loss (nats/token, log scale)",
              title="The same held-out measure for both runs\n(their training losses average different tokens: "
                    "not comparable)")
    log_axis(curve)                # step 0 (the base model, 10 nats or more) would squash the gap between the runs
    curve.legend()
    groups = [(losses, ["response_loss", "sequence_loss"], "held-out losses (lower is better)", "nats per token"),
              (scores, [c for c in ("exact_match", "rouge_l", "countdown_reward", "countdown_accuracy")
                        if c in final.columns], "held-out scores (higher is better)", "score (0–1)")]
    for ax, metrics, title, unit in groups:
        grouped_bars(ax, final, metrics)
        ax.set(title=title, ylabel=unit)
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


def countdown_changes(cfg: Config, before: str, after: str, n: int = 3) -> dict:
    """What a stage did to Countdown, read from both checkpoints' saved greedy answers to the same held-out tasks:
    answers without an `<answer>` tag, tasks solved only before / only after, and up to n lost tasks side by side."""
    rows = {name: [r for r in evaluate_checkpoint(cfg, name)[1] if r["task"] == "countdown"]
            for name in (before, after)}
    pairs = list(zip(rows[before], rows[after]))
    lost = [(b, a) for b, a in pairs if b["reward"] == 1.0 and a["reward"] < 1.0]
    gained = [(b, a) for b, a in pairs if b["reward"] < 1.0 and a["reward"] == 1.0]
    side_by_side = lambda found: [{"task": f"{b['nums']} → {b['target']}", before: b["response"], after: a["response"]}
                                  for b, a in found[:n]]
    return {"tasks": len(pairs),
            "no_answer_tag": {name: sum("<answer>" not in r["response"] for r in rs) for name, rs in rows.items()},
            "lost": len(lost), "gained": len(gained), "examples": side_by_side(lost),
            "gained_examples": side_by_side(gained)}


def sign_test(gained: int, lost: int) -> float:
    """Two-sided exact sign test on the tasks that changed between two checkpoints (same held-out tasks): the
    chance of a split at least this uneven if a change were as likely to be a gain as a loss."""
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_verdict(gained: int, lost: int, alpha: float = 0.05, unit: str = "task") -> str:
    """"improved" / "worse" when the tasks gained and lost differ by more than chance (sign test, p < alpha), else
    "no clear change" — a −0.5-point move (one task of 200) is not called worse."""
    p = sign_test(gained, lost)
    word = ("improved" if gained > lost else "worse") if p < alpha else "no clear change"
    return f"{word}: {gained} {unit}{'' if gained == 1 else 's'} gained, {lost} lost, sign test p = {p:.2g}"


def share_difference(a: float, b: float, n: int) -> str:
    """Two shares of n items each, from `a` to `b`, without per-item pairing: "+2.5 points; within noise (±8.9, 2
    standard errors of such a difference)". As if independent: the same items make the noise smaller, so this errs
    towards "within noise"."""
    noise = 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / max(1, n))
    word = "within noise" if abs(b - a) <= noise else ("more than noise" if b > a else "worse, beyond noise")
    return f"{100 * (b - a):+.1f} points; {word} (±{100 * noise:.1f}, 2 standard errors of such a difference)"


def task_changes(cfg: Config, before: str, after: str) -> dict[str, tuple[int, int]]:
    """{metric: (tasks gained, tasks lost)} from `before` to `after`, from both checkpoints' saved greedy answers to
    the same held-out tasks: instruction quality (a better or worse score per prompt) and Countdown accuracy."""
    records = {name: evaluate_checkpoint(cfg, name)[1] for name in (before, after)}
    out = {}
    metric = quality_metric(cfg)
    pairs = list(zip(*([r for r in records[name] if r["task"] == "instruction"] for name in (before, after))))
    out[metric] = (sum(a[metric] > b[metric] for b, a in pairs), sum(a[metric] < b[metric] for b, a in pairs))
    pairs = list(zip(*([r for r in records[name] if r["task"] == "countdown"] for name in (before, after))))
    out["countdown_accuracy"] = (sum(a["reward"] == 1.0 > b["reward"] for b, a in pairs),
                                 sum(b["reward"] == 1.0 > a["reward"] for b, a in pairs))
    return out


def loss_change(cfg: Config, before: str, after: str, resamples: int = 2000) -> str:
    """Held-out response-only loss (per token, as the tables give it) from checkpoint `before` to `after`, with a
    paired bootstrap over the held-out conversations (the same ones for both, resampled together; seeded): "0.381 →
    0.328 (−0.053 nats; lower: 95 % interval −0.071 to −0.036 …)". "lower"/"higher" only where the interval
    excludes 0. Per conversation, how many went down and up is said too: a mean per token can fall while most
    conversations rise (a few long answers weigh more)."""
    import random
    per = {}
    for name in (before, after):
        folder = out_path("checkpoints", cfg, name)
        tokenizer, model = load_tokenizer(folder), load_model(folder).to(device())
        per[name] = example_losses(model, heldout_loss_examples(cfg, tokenizer)["response"], tokenizer.pad_token_id)
    rows = [(b, a, n) for (b, n), (a, _) in zip(per[before], per[after])]     # summed losses, tokens (same mask)
    mean = lambda rs, i: sum(r[i] for r in rs) / max(1.0, sum(r[2] for r in rs))
    rng = random.Random(0)
    deltas = sorted(mean(s, 1) - mean(s, 0) for s in ([rng.choice(rows) for _ in rows] for _ in range(resamples)))
    low, high = deltas[int(0.025 * resamples)], deltas[int(0.975 * resamples) - 1]
    word = "lower" if high < 0 else "higher" if low > 0 else "no clear change"
    down = sum(a / max(n, 1.0) < b / max(n, 1.0) for b, a, n in rows)
    up = sum(a / max(n, 1.0) > b / max(n, 1.0) for b, a, n in rows)
    return (f"{mean(rows, 0):.3f} → {mean(rows, 1):.3f} ({mean(rows, 1) - mean(rows, 0):+.3f} nats; {word}: 95 % "
            f"bootstrap interval {low:+.3f} to {high:+.3f} over {len(rows)} held-out conversations; per "
            f"conversation {down} lower, {up} higher)")


def stage_change(cfg: Config | None, by: dict, a: str, b: str, quality: str, changed: dict | None = None) -> str:
    """From checkpoint `a` to `b` on both tracks — "exact_match 0.780 → 0.815 (+3.5 points; no clear change: 21
    tasks gained, 14 lost, sign test p = 0.31); countdown_accuracy …" — the verdict from the held-out tasks gained
    and lost (their saved greedy answers; `changed` = task_changes' result when the caller has it; without a cfg or
    saved answers, no verdict). by = {checkpoint: {metric: value}}."""
    if changed is None:
        try:
            changed = task_changes(cfg, a, b) if cfg is not None else {}
        except CheckpointError:
            changed = {}
    parts = []
    for metric in (quality, "countdown_accuracy"):
        delta = by[b][metric] - by[a][metric]
        verdict = f"; {paired_verdict(*changed[metric])}" if metric in changed else ""
        parts.append(f"{metric} {by[a][metric]:.3f} → {by[b][metric]:.3f} ({100 * delta:+.1f} points{verdict})")
    return "; ".join(parts)


def unfaithful_reasoning(records: list[dict]) -> dict:
    """Correct Countdown answers whose <think> restates another target ("make 26:" for 261): the reward checks only
    the <answer>, so it pays for reasoning that is wrong. Counts the greedy answers of one checkpoint."""
    import re
    correct = [r for r in records if r.get("task") == "countdown" and r["reward"] == 1.0]
    wrong = [r for r in correct
             if (m := re.search(r"make (\d+)", r["response"].split("</think>")[0])) and int(m[1]) != r["target"]]
    return {"correct": len(correct), "wrong_target_in_think": len(wrong),
            "examples": [f"target {r['target']}: {r['response']}" for r in wrong[:2]]}
