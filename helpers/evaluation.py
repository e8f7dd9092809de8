"""05_evaluation: every stage on the same held-out sets — greedy and sampled Countdown, pass@k, best-of-n by
verifier and reward model, win rate — the choice of `final`, and the stage figures. Imports: lower modules only."""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import Config, STAGES, device, out_path, quality_metric
from .countdown import countdown_reward
from .data import countdown_tasks, write_jsonl
from .modeling import load_model, load_tokenizer
from .checkpoints import CHECKSUMS, PROGRESS, start_fingerprint, swap_in, write_checksums
from .logger import read_tensorboard_scalars
from .formatting import fit_prompts
from .generation import generate_eval
from .scoring import best_of_n, evaluate_checkpoint, exact_match, instruction_test_rows, pass_at_k, rouge_l
from .results import grouped_bars, log_axis, save_figure
from .preference import preference_data
from .reward_model import load_reward_model, score_responses


def sample_many(model, tokenizer, prompts, n: int, cfg: Config, seed: int) -> list[list[str]]:
    """n sampled responses per prompt with the course's evaluation sampling settings."""
    e = cfg.eval
    flat = generate_eval(model, tokenizer, [p for p in prompts for _ in range(n)], e, temperature=e.temperature,
                         top_p=e.top_p, top_k=e.top_k, seed=seed)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


def win_rate(model, tokenizer, cfg: Config, judge, reference, cache: dict) -> tuple[float, list[dict]]:
    """The course's measure: on held-out preference prompts (UltraFeedback test_prefs in the hub world), the share
    where the judge scores this model's greedy answer above the reference model's (a tie counts half).
    `judge` and `reference` are (tokenizer, model) pairs; the reference's scored answers are cached for every stage."""
    judge_tok, judge_model = judge
    if "opponent" not in cache:
        rows = preference_data(cfg, "test")
        fits, _ = fit_prompts(tokenizer, [r["prompt"] for r in rows], cfg.data.max_prompt_tokens)
        prompts = [r["prompt"] for r, ok in zip(rows, fits) if ok][:cfg.eval.win_rate_rows]
        theirs = generate_eval(reference[1], reference[0], prompts, cfg.eval)
        cache["opponent"] = prompts, theirs, score_responses(judge_model, judge_tok, prompts, theirs)
    prompts, theirs, their_scores = cache["opponent"]
    mine = generate_eval(model, tokenizer, prompts, cfg.eval)
    my_scores = score_responses(judge_model, judge_tok, prompts, mine)
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(my_scores, their_scores)]
    records = [{"task": "win_rate", "prompt": p, "response": m, "reference_response": t, "judge_score": a,
                "reference_judge_score": b, "win": w}
               for p, m, t, a, b, w in zip(prompts, mine, theirs, my_scores, their_scores, wins)]
    return sum(wins) / max(1, len(wins)), records


def evaluate_stage(model, tokenizer, cfg: Config, name: str, reward_model=None, judge=None, reference=None,
                   cache: dict | None = None) -> dict:
    """Every held-out measure of one checkpoint; responses go to outputs/<profile>/<name>/responses.jsonl.
    `reward_model` (ours) picks best-of-n; `judge` and `reference` ((tokenizer, model) pairs) give the win rate;
    `cache` keeps what is the same for every checkpoint (the win-rate opponent's scored answers)."""
    cache = {} if cache is None else cache
    e, seed = cfg.eval, cfg.eval.seed
    greedy, records = evaluate_checkpoint(cfg, name)          # losses, greedy quality, greedy Countdown (cached)
    metrics, records = dict(greedy), list(records)
    settings = {"temperature": e.temperature, "top_p": e.top_p, "top_k": e.top_k, "seed": seed}
    # Countdown, sampled: mean reward, accuracy, pass@k and verifier best-of-n
    tasks = countdown_tasks(cfg, "test", e.sampled_rows)
    samples = sample_many(model, tokenizer, [t["prompt"] for t in tasks], e.n_samples, cfg, seed)
    rewards = [[countdown_reward(s, t["target"], t["nums"]) for s in row] for row, t in zip(samples, tasks)]
    correct = [[float(r == 1.0) for r in row] for row in rewards]
    metrics["countdown_reward_sampled"] = sum(map(sum, rewards)) / (len(tasks) * e.n_samples)
    metrics["countdown_accuracy_sampled"] = sum(map(sum, correct)) / (len(tasks) * e.n_samples)
    for k in (1, 2, 4, 8):
        if k <= e.n_samples:
            metrics[f"pass@{k}"] = sum(pass_at_k(e.n_samples, int(sum(c)), k) for c in correct) / len(tasks)
            metrics[f"best_of_{k}_verifier"] = best_of_n(rewards, correct, k)
    for t, row, row_r in zip(tasks, samples, rewards):
        records += [{"task": "countdown", "nums": t["nums"], "target": t["target"], "response": s, "reward": r,
                     **settings} for s, r in zip(row, row_r)]
    # instruction following, sampled, best-of-n chosen by the reward model
    rows = instruction_test_rows(cfg, tokenizer, e.sampled_rows)
    prompts = [r["messages"][:-1] for r in rows]
    references = [r.get("reference", r["messages"][-1]["content"]) for r in rows]
    scorer = rouge_l if quality_metric(cfg) == "rouge_l" else exact_match
    if reward_model is not None:
        rm_tok, rm = reward_model
        samples = sample_many(model, tokenizer, prompts, e.n_samples, cfg, seed)
        flat_scores = score_responses(rm, rm_tok, [p for p in prompts for _ in range(e.n_samples)],
                                      [s for row in samples for s in row], e.token_budget)
        scores = [flat_scores[i * e.n_samples:(i + 1) * e.n_samples] for i in range(len(prompts))]
        quality = [[scorer(s, ref) for s in row] for row, ref in zip(samples, references)]
        for k in (1, 2, 4, 8):
            if k <= e.n_samples:
                metrics[f"best_of_{k}_reward_model"] = best_of_n(scores, quality, k)
        for p, row, row_s, row_q in zip(prompts, samples, scores, quality):
            records += [{"task": "instruction", "prompt": p, "response": s, "reward_model_score": sc,
                         scorer.__name__: q, **settings} for s, sc, q in zip(row, row_s, row_q)]
    if judge is not None and reference is not None:
        metrics["win_rate"], won = win_rate(model, tokenizer, cfg, judge, reference, cache)
        records += won
    write_jsonl(out_path("outputs", cfg, name, "responses.jsonl"), records)
    return metrics


def publish_final(cfg: Config) -> str | None:
    """checkpoints/<profile>/final: a copy of the chain's last stage (`cfg.eval.final_stage`), the fully fine-tuned
    weights — without the training state, so it loads as a plain model. None (and a note) while that stage does not
    exist yet."""
    final = cfg.eval.final_stage
    source, target = out_path("checkpoints", cfg, final), out_path("checkpoints", cfg, "final")
    if not source.exists():
        print(f"no `final` yet: it is a copy of the chain's end, {source}, which does not exist (run 04_rloo)")
        return None
    fingerprint = start_fingerprint(source, final)        # whole and finished, or a one-line CheckpointError
    tmp = target.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("training_state.pt", CHECKSUMS, PROGRESS))
    (tmp / "FINAL_IS.txt").write_text(f"{final}: the end of the chain sft_masked → dpo → rloo "
                                      f"(weights {fingerprint})\n")
    write_checksums(tmp)
    swap_in(tmp, target)
    return final


def evaluate_all_stages(cfg: Config, stages=STAGES):
    """One row per existing checkpoint of the profile, one column per metric; `final` is published as a copy of the
    chain's last stage. Returns (table, the name of the stage `final` copies)."""
    import pandas as pd
    found = [s for s in stages if any((out_path("checkpoints", cfg, s) / f).exists()
                                      for f in ("config.json", "adapter_config.json"))]
    reward_model = judge = reference = None
    rm_dir = out_path("checkpoints", cfg, "reward_model")
    if (rm_dir / "config.json").exists():
        tok, model = load_reward_model(rm_dir)
        reward_model = (tok, model.to(device()))
    judge = reward_model                        # the win rate's judge: ours, unless the config names another
    if cfg.eval.judge:
        judge_tok, judge_model = load_reward_model(cfg.eval.judge)
        judge = (judge_tok, judge_model.to(device()))
    if cfg.eval.reference_model:
        reference = (load_tokenizer(cfg.eval.reference_model), load_model(cfg.eval.reference_model).to(device()))
    rows, cache = [], {}
    for name in found:
        folder = out_path("checkpoints", cfg, name)
        tokenizer, model = load_tokenizer(folder), load_model(folder).to(device())
        rows.append({"model": name, **evaluate_stage(model, tokenizer, cfg, name, reward_model, judge, reference,
                                                     cache)})
        print(f"evaluated {name}")
    return pd.DataFrame(rows), publish_final(cfg)


# Tables a person reads: one theme each, stages as rows, every metric defined once (the wide table stays in the
# csv/xlsx). pass@1 is the sampled accuracy and pass@8 the verifier's best of 8, so neither is repeated.
THEMES = {
    "instruction following": ["exact_match", "rouge_l", "best_of_4_reward_model", "best_of_8_reward_model",
                              "win_rate"],
    "Countdown": ["countdown_accuracy", "countdown_reward", "countdown_accuracy_sampled", "pass@4", "pass@8"],
    "held-out losses": ["response_loss", "response_ppl", "sequence_loss"],
}
LEGEND = {
    "exact_match": "greedy answer equals the one correct answer (tiny world)",
    "rouge_l": "ROUGE-L F1 of the greedy answer against the reference (hub data)",
    "best_of_4_reward_model": "exact match of the answer the reward model picks among 4 samples",
    "best_of_8_reward_model": "the same among 8 samples (the 4 among them): it can come out lower, as the reward model "
                              "may prefer a wrong answer it did not see among 4; the notes say whether that is noise",
    "win_rate": "share of preference test prompts where the judge prefers this model's answer to the reference "
                "model's (a tie counts half)",
    "countdown_accuracy": "greedy answer is a correct equation (reward 1.0)",
    "countdown_reward": "mean rule-based reward of the greedy answer (0 no answer, 0.1 wrong, 1 correct)",
    "countdown_accuracy_sampled": "share of sampled answers that are correct (= pass@1)",
    "pass@4": "chance that at least one of 4 samples is correct (unbiased estimator over all samples: the expected "
              "best of 4 by the verifier; the notes' best-of-4 is one draw of it, the first 4 samples)",
    "pass@8": "the same for 8 samples",
    "response_loss": "held-out loss on response tokens only (nats per token)",
    "response_ppl": "exp(response loss): roughly how many tokens the model hesitates between; it can exceed the "
                    "vocabulary's size when the model is confidently wrong",
    "sequence_loss": "held-out loss on every token, prompt included",
}


def stage_tables(table) -> dict:
    """The stage table split by theme ({theme: DataFrame}), numbers at 3 decimals, ≤ 6 columns each."""
    out = {}
    for theme, metrics in THEMES.items():
        present = [m for m in metrics if m in table.columns]
        if present:
            out[theme] = table[["model"] + present].round(3)
    return out


def plot_stage_metrics(table, path: Path, cfg: Config | None = None) -> Path:
    """One panel per theme, stages as groups of bars, each axis labelled with its unit; with `cfg`, error bars of ±2
    standard errors on every share (of the profile's held-out tasks or sampled prompts)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = {"instruction following\n(higher is better)": [m for m in ("exact_match", "rouge_l", "win_rate")
                                                            if m in table.columns],
              "Countdown\n(higher is better)": [m for m in ("countdown_accuracy", "countdown_reward", "pass@8")
                                                if m in table.columns],
              "held-out response-only loss\n(lower is better)": ["response_loss"]}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1, 1.3, 0.8]})
    e = cfg.eval if cfg is not None else None
    counts = {} if e is None else {"exact_match": e.instruction_rows, "win_rate": e.win_rate_rows,
                                   "countdown_accuracy": e.countdown_rows, "pass@8": e.sampled_rows}
    for ax, (title, metrics) in zip(axes, panels.items()):
        grouped_bars(ax, table, metrics, labels=True, counts=counts)
        ax.set(title=title, ylabel="nats per token" if "loss" in title else "share of held-out tasks")
        if "loss" in title:
            log_axis(ax)
        ax.get_legend().remove()
    # one legend for the stages, below the panels, where it covers no bar
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(table), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, path, tight=False)


def plot_learning_curves(cfg: Config, path: Path) -> Path:
    """A grid, one panel per stage, its key curves read back from the TensorBoard logs: y-labels with units, a
    second axis where two scales meet, markers where there are only a few measured points (no implied trend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("pretrain", "train/loss", "training loss (nats/token)", "eval/loss", None),
              ("sft_masked", "eval/response_loss", "held-out response loss (nats/token)", None, None),
              ("sft_unmasked", "eval/response_loss", "held-out response loss (nats/token)", None, None),
              ("dpo", "rewards/margins", "reward margin β·Δlog-ratio (nats)", "eval/preference_reward_accuracy",
               "held-out preference accuracy"),
              ("reward_model", "eval/pairwise_accuracy", "held-out pairwise accuracy", None, None),
              ("rloo", "rloo/reward_mean", "mean sampled reward", "eval/countdown_accuracy",
               "held-out Countdown accuracy (greedy)")]
    present = [p for p in panels if out_path("tensorboard_events", cfg, p[0]).exists()]
    cols = 3
    rows = max(1, -(-len(present) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.6 * rows), squeeze=False)
    for ax, (stage, left, left_label, right, right_label) in zip(axes.flat, present):
        curves = read_tensorboard_scalars(out_path("tensorboard_events", cfg, stage))
        points = curves.get(left, [])
        if points:
            ax.plot(*zip(*points), color="C0", marker="o" if len(points) < 25 else None, ms=3, label=left)
        if stage == "pretrain" and "eval/loss" in curves:
            ax.plot(*zip(*curves["eval/loss"]), color="C1", marker="o", ms=3, label="eval/loss")
            ax.legend(fontsize=7)
        elif right and right in curves:
            twin = ax.twinx()
            # DPO's implicit reward is 0 for every pair at step 0 (policy = reference): no ranking to draw there
            measured = [(s, v) for s, v in curves[right] if not (s == 0 and right.startswith("eval/preference_reward"))]
            twin.plot(*zip(*measured), color="C3", marker="o", ms=4, linestyle="none", label=right)
            twin.set_ylabel(right_label, color="C3", fontsize=8)
            twin.set_ylim(0, 1)
        ax.set(title=stage, xlabel="optimizer step")
        ax.set_ylabel(left_label, color="C0", fontsize=8)
        if "loss" in left and points and max(v for _, v in points) > 5 * min(v for _, v in points):
            log_axis(ax)                # step 0 would squash the rest of the curve
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    return save_figure(fig, path)
