"""Rejection-sampling fine-tuning (RFT; expert iteration, as in the brief's Qwen-7B project): sample n completions
per prompt, keep the best by the verifier (Countdown, the tiny world's instruction answers) or the reward model,
fine-tune on what was kept — round after round on fresh prompts — and compare with RLOO at the same number of
sampled completions. Imports: config … rloo."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil

from .config import Config, check_config, device, quality_metric, replace_config
from .modeling import load_model, load_tokenizer
from .generation import rollout_prompts
from .formatting import build_sft_example
from .distributed import (barrier, gather_objects, gather_shares, is_main, process_index, rng_state, run_config_of,
                          seed_this_process, set_rng_state, share)
from .checkpoints import load_weights_into, run_progress, save_checkpoint, weights_fingerprint
from .training import StageResult, open_stage, open_stage_dir, refuse_sharded, stage_run, train
from .sft import sft_collate, sft_loss
from .results import save_figure
from .scoring import track_scores
from .rloo import instruction_judge, make_reward_fn, rl_tasks, sample_and_score, start_scores


def keep_best(tasks: list[dict], samples: list[dict], rewards: list[float], n: int, use_model: bool) -> list[dict]:
    """One completion per prompt, or none: the highest-reward sample of its n (the first among equals), kept if it
    passes — a correct Countdown answer (reward 1.0), an exact instruction answer, or, judged by a reward model
    (no pass mark), simply the best of n."""
    kept = []
    for i, task in enumerate(tasks):
        scores = rewards[i * n:(i + 1) * n]
        best = scores.index(max(scores))
        passes = scores[best] == 1.0 or (use_model and task["track"] != "countdown")
        if passes:
            kept.append({"task": task, "completion": samples[i * n + best]["text"], "reward": scores[best]})
    return kept


def samples_per_step(cfg: Config) -> int:
    """Completions RLOO samples per optimizer step: prompts per micro-batch × micro-batches × k."""
    return cfg.rloo.batch_size * cfg.rloo.grad_accum * cfg.rloo.k


def prompts_per_round(cfg: Config) -> int:
    """RFT's prompts per round, so that rounds × prompts × k equals `sample_share` of RLOO's samples over its whole
    run (with share 1/2 and 2 rounds, a round draws what RLOO draws in a quarter of its steps)."""
    rloo_prompts = cfg.rloo.max_steps * cfg.rloo.batch_size * cfg.rloo.grad_accum
    return round(rloo_prompts * cfg.rft.sample_share) // cfg.rft.rounds


def run_rft(cfg: Config, start: str = "dpo", stage: str = "rft", log: bool = True,
            stop_after_steps: int | None = None) -> StageResult:
    """RFT from `start` (RLOO's start, for a fair comparison), drawing `sample_share` of RLOO's samples: `rounds`
    rounds of (RLOO's prompts × share ÷ rounds) prompts × k samples each, from RLOO's task mixture, at RLOO's
    temperature. A StageResult whose history is the curve, [{"samples", "round", scores…}] (details: kept). Under N
    processes each samples its share of a round's prompts (its own seed) and every process fine-tunes on all that
    was kept. Like every stage, a finished run is kept and an interrupted one resumed: at the round it reached, or
    inside it (`stop_after_steps` counts the SFT steps of all rounds)."""
    refuse_sharded("RFT")
    fcfg, rcfg = check_config(cfg).rft, cfg.rloo
    if fcfg.max_steps != fcfg.rounds * fcfg.steps_per_round:
        raise ValueError(f"RFTConfig.max_steps = {fcfg.max_steps}: must be rounds × steps_per_round = "
                         f"{fcfg.rounds * fcfg.steps_per_round}")
    opened = open_stage(cfg, "rft", start, stage)
    start_dir, stage_dir, run_config = opened.start_dir, opened.stage_dir, {**opened.run_config,
                                                                           "rloo": dataclasses.asdict(rcfg)}
    tokenizer, model = load_tokenizer(start_dir), load_model(start_dir, quant=cfg.model.quant).to(device())
    judge = instruction_judge(cfg, run_config)
    use_model = judge is not None
    reward_fn = make_reward_fn(cfg, judge)
    tasks = rl_tasks(cfg, tokenizer)
    random.Random(fcfg.seed).shuffle(tasks)
    per_round = prompts_per_round(cfg)
    if per_round * fcfg.rounds > len(tasks):
        raise ValueError(f"RFT needs {per_round * fcfg.rounds} prompts for {fcfg.rounds} rounds; there are "
                         f"{len(tasks)}")
    run_config = run_config_of(json.loads(json.dumps(run_config)))    # as saved: tuples as lists, N processes
    details = {"prompts_per_round": per_round}
    if not cfg.restart and legacy_finished(stage_dir, run_config):
        print(f"{stage}: {stage_dir} already holds this finished run (same config, same start): kept "
              "(restart=True trains it again)")
        return StageResult(load_model(stage_dir).to(device()), tokenizer, stage_dir, load_curve(stage_dir),
                           {**details, "kept": None})
    # the shared logic of every stage (`open_stage_dir`): a finished run is kept, an unfinished one resumed at the
    # round it reached, one from other start weights trained again
    status, saved = open_stage_dir(stage_dir, run_config, cfg.restart, stage)
    if status == "finished":
        load_weights_into(model, saved["dir"])
        print(f"{stage}: {stage_dir} already holds this finished run (same config, same start): kept "
              "(restart=True trains it again)")
        return StageResult(model, tokenizer, stage_dir, saved["history"], {**details, "kept": saved["kept"]})
    round_dir = stage_dir.with_name(stage_dir.name + ".round")
    with stage_run(cfg, stage, run_config, log) as logger:
        curve = [{"samples": 0, "round": 0, **start_scores(cfg, start)}]     # the start's cached evaluation
        kept_total, first = 0, 0
        if status == "resume":          # at a round's end: its weights and random streams, the curve so far
            load_weights_into(model, saved["dir"])
            set_rng_state(saved["process_rng"][process_index()] if "process_rng" in saved else saved)
            curve, kept_total, first = saved["history"], saved["kept"], saved["round"]
            print(f"resuming {stage} at round {first + 1} of {fcfg.rounds} ({saved['dir']})")
        else:
            seed_this_process(fcfg.seed)        # N processes: each samples its own stream; one process: untouched
        for r in range(first, fcfg.rounds):
            if stop_after_steps is not None and stop_after_steps <= r * fcfg.steps_per_round:
                break                           # stopped at a round's end: its checkpoint is saved
            round_tasks = tasks[r * per_round:(r + 1) * per_round]
            my_tasks = share(round_tasks)
            per_call = rollout_prompts(model, tokenizer, [t["prompt"] for t in my_tasks], rcfg.k,
                                       rcfg.max_new_tokens, cfg.eval.sampling_memory)
            samples, _, rewards = sample_and_score(model, tokenizer, my_tasks, rcfg, reward_fn,  # RLOO's micro-batch
                                                   max(per_call or 0, rcfg.batch_size),         # or what memory holds
                                                   cfg.eval.compiled_sampling)
            rewards = rewards.tolist()
            best = [keep_best([task], samples[i * rcfg.k:(i + 1) * rcfg.k], rewards[i * rcfg.k:(i + 1) * rcfg.k],
                              rcfg.k, use_model) for i, task in enumerate(my_tasks)]
            kept = [k for one in gather_shares(best, len(round_tasks)) for k in one]      # every prompt's, in order
            kept_total += len(kept)
            examples = [e for e in (build_sft_example(tokenizer, k["task"]["prompt"] + [
                {"role": "assistant", "content": k["completion"]}], fcfg.max_length) for k in kept) if e]
            by_track = {track: sum(k["task"]["track"] == track for k in kept)
                        for track in ("countdown", "instructions")}
            if examples:
                # the round's SFT: resumable where the run stopped inside it (the same samples are drawn again
                # from the same weights and streams), from scratch otherwise
                round_cfg = replace_config(fcfg, max_steps=fcfg.steps_per_round, eval_every=10 ** 9,
                                           seed=fcfg.seed + r)
                left = None if stop_after_steps is None else stop_after_steps - r * fcfg.steps_per_round
                train(model, tokenizer, examples, round_cfg, sft_loss, sft_collate(tokenizer.pad_token_id),
                      round_dir, restart=cfg.restart or not (status == "resume" and r == first),
                      run_config={**run_config, "round": r + 1}, desc=f"{stage} round {r + 1}", stop_after_steps=left)
                if left is not None and left < fcfg.steps_per_round:
                    return StageResult(model, tokenizer, stage_dir, curve, {**details, "kept": kept_total})
            point = {"samples": (r + 1) * per_round * rcfg.k, "round": r + 1, "kept": len(kept), **by_track,
                     **track_scores(model, tokenizer, cfg)}
            curve.append(point)
            logger.scalars({f"rft/{k}": v for k, v in point.items() if k not in ("samples", "round")}, point["samples"])
            print(f"RFT round {r + 1}/{fcfg.rounds}: kept {len(kept)} of {len(round_tasks)} prompts {by_track}; "
                  + ", ".join(f"{k} {v:.3f}" for k, v in point.items() if isinstance(v, float)))
            save_round(model, tokenizer, stage_dir, run_config, {
                "step": (r + 1) * fcfg.steps_per_round, "round": r + 1, "finished": r + 1 == fcfg.rounds,
                "history": curve, "kept": kept_total})
            if is_main():
                shutil.rmtree(round_dir, ignore_errors=True)
            barrier()
    return StageResult(model, tokenizer, stage_dir, curve, {**details, "kept": kept_total})


def save_round(model, tokenizer, stage_dir, run_config: dict, state: dict) -> None:
    """RFT's checkpoint at a round's end: the weights, the curve so far and every process's random streams (the next
    round's samples follow from them); no optimizer — each round starts its own."""
    rngs = gather_objects(rng_state())
    if is_main():
        save_checkpoint(model, tokenizer, stage_dir, {**state, **({"process_rng": rngs} if len(rngs) > 1 else {})},
                        None, None, run_config)
    barrier()


def legacy_finished(stage_dir, run_config: dict) -> bool:
    """A finished RFT run saved before RFT saved its rounds (weights, run_config.json and rft_curve.json, no
    training_state.pt) of exactly this config and start: kept as it is (checksums verified)."""
    saved = stage_dir / "run_config.json"
    if (stage_dir / "training_state.pt").exists() or not saved.exists() or json.loads(saved.read_text()) != run_config:
        return False
    weights_fingerprint(stage_dir)          # raises CheckpointError, naming the file, if anything changed since
    return bool(run_progress(stage_dir).get("finished"))


def load_curve(stage_dir) -> list[dict]:
    return json.loads((stage_dir / "rft_curve.json").read_text())


def rft_vs_rloo(cfg: Config, rloo_history: list[dict], rft_curve: list[dict]):
    """One table: held-out scores of RLOO (at its evaluations) and RFT (after each round) against the number of
    completions each had sampled by then."""
    import pandas as pd
    quality = quality_metric(cfg)
    rows = [{"method": "rloo", "samples": h["step"] * samples_per_step(cfg), "countdown_accuracy":
             h["eval/countdown_accuracy"], quality: h[f"eval/{quality}"]}
            for h in rloo_history if "eval/countdown_accuracy" in h]
    rows += [{"method": "rft", "samples": p["samples"], "countdown_accuracy": p["countdown_accuracy"],
              quality: p[quality]} for p in rft_curve]
    return pd.DataFrame(rows)


def at_equal_samples(table):
    """The RLOO-vs-RFT table at the sample counts both methods reached (RLOO's evaluations that an RFT round ends
    on), side by side: one row per count, one column per (metric, method)."""
    metrics = [c for c in table.columns if c not in ("method", "samples")]
    wide = table.pivot_table(index="samples", columns="method", values=metrics)
    both = wide.dropna()
    return both[both.index > 0].swaplevel(axis=1).sort_index(axis=1)


def plot_rft_vs_rloo(table, path, tasks: dict | None = None):
    """Held-out Countdown accuracy and instruction quality against samples drawn, one line per method, on full 0–1
    axes. tasks = {metric: held-out tasks}: error bars of ±2 binomial standard errors (one seed: the noise of a
    share of that many tasks, not of the method)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    quality = [c for c in table.columns if c in ("exact_match", "rouge_l")][0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("countdown_accuracy", quality)):
        n = (tasks or {}).get(metric)
        for method, part in table.groupby("method", sort=False):
            p = part[metric].clip(0, 1)
            ax.errorbar(part["samples"], part[metric], yerr=2 * (p * (1 - p) / n) ** 0.5 if n else None, marker="o",
                        capsize=3, label=method.upper())
        ax.set(xlabel="completions sampled", ylabel=f"held-out {metric.replace('_', ' ')}", ylim=(0, 1),
               title=metric.replace("_", " ") + (f" (±2 s.e., {n} tasks)" if n else ""))
        ax.legend()
    fig.suptitle("RLOO and rejection-sampling fine-tuning from the same start, at equal samples")
    return save_figure(fig, path)
