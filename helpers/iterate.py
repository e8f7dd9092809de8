"""Another preference round on what the model writes now (the brief's `002_…`, pipeline b): for the same prompts,
the latest model's sample is chosen and the previous stage's rejected — or, SPIN's rule (Chen et al. 2024), the
reference answer chosen and the previous model's sample rejected — then one DPO round with the one loss and loop,
from the latest model, and its verdict against it. Imports: config, countdown, modeling, checkpoints, generation,
scoring, results, comparison, dpo, rloo."""
from __future__ import annotations

import dataclasses
import math
import random

from .config import Config, device, out_path, quality_metric, replace_config, replace_sections
from .countdown import countdown_completion
from .modeling import load_model, load_tokenizer
from .checkpoints import start_fingerprint
from .generation import generate_eval
from .scoring import evaluate_checkpoint
from .comparison import paired_verdict, task_changes
from .results import write_summary
from .dpo import run_dpo
from .rloo import instruction_judge, make_reward_fn, rl_tasks


@dataclasses.dataclass
class RoundSettings:
    """One more round: how many training prompts (both tracks, as RLOO draws them), its length in passes over its
    pairs (`steps` fixes the DPO steps instead), the sampling. Two passes, as the chain's DPO makes about 1.5 over
    its pairs: 200 steps on 134 pairs (24 passes) cost base model 1's `final` 16 points of exact match (docs/LOG.md)."""
    prompts: int = 800
    epochs: float = 2.0
    steps: int | None = None
    lr_scale: float = 0.1     # of the chain's DPO lr: Adam's first steps move every weight by about the lr, which
                              # the chain's 800 steps recover from and a round of a few steps does not (docs/LOG.md)
    temperature: float = 1.0
    seed: int = 0


def round_tasks(cfg: Config, tokenizer, n: int, seed: int) -> list[dict]:
    """n training tasks of both tracks (RLOO's mix: never a held-out one), each with its reference answer: the
    instruction's one answer, or the solver's Countdown completion (SPIN's chosen side)."""
    tasks = rl_tasks(cfg, tokenizer, "train")
    random.Random(seed).shuffle(tasks)
    out = []
    for task in tasks[:n]:
        reference = (task["reference"] if task["track"] != "countdown"
                     else countdown_completion(task["nums"], task["target"]))
        if reference:
            out.append(dict(task, reference=reference))
    return out


def sample_answers(cfg: Config, name: str, tasks: list[dict], settings: RoundSettings) -> list[str]:
    """One sample per task from checkpoints/<profile>/<name>, at the round's temperature and seed."""
    folder = out_path("checkpoints", cfg, name)
    tokenizer, model = load_tokenizer(folder), load_model(folder).to(device())
    return generate_eval(model, tokenizer, [t["prompt"] for t in tasks], cfg.eval, temperature=settings.temperature,
                         top_p=1.0, seed=settings.seed)


def round_pairs(tasks: list[dict], previous: list[str], latest: list[str], rewards: tuple[list, list]) -> dict:
    """The pairs each rule keeps, in task order: "latest" (chosen = the latest model's sample, rejected = the previous
    one's; the same text twice teaches nothing and is dropped), "latest, judged" (only where the judge — the reward
    RLOO uses — scores the latest higher), "spin" (chosen = the reference answer, rejected = the previous model's
    sample, dropped where they are equal)."""
    pair = lambda t, chosen, rejected, rule: {"prompt": t["prompt"], "chosen": chosen, "rejected": rejected,
                                              "source": f"{t['track']}/round-{rule}"}
    before, after = rewards
    out = {"latest": [], "latest, judged": [], "spin": []}
    for i, (task, old, new) in enumerate(zip(tasks, previous, latest)):
        if old.strip() != new.strip():
            out["latest"].append(pair(task, new, old, "latest"))
            if after[i] > before[i]:
                out["latest, judged"].append(pair(task, new, old, "judged"))
        if old.strip() != task["reference"].strip():
            out["spin"].append(pair(task, task["reference"], old, "spin"))
    return out


def equal_count(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
    """Both rules at the same number of pairs, the smaller count; b's pairs on a's prompts first, so the comparison
    is of the rules more than of the prompts."""
    n = min(len(a), len(b))
    prompts = {str(p["prompt"]) for p in a[:n]}
    b_sorted = [p for p in b if str(p["prompt"]) in prompts] + [p for p in b if str(p["prompt"]) not in prompts]
    return a[:n], b_sorted[:n]


def run_round(cfg: Config, previous: str = "dpo", latest: str = "final", settings: RoundSettings | None = None,
              rule: str = "latest") -> dict:
    """Sample both models on the round's prompts, build every rule's pairs (their counts reported), train one DPO
    round from `latest` on each rule's pairs — SPIN's at the count of `rule`'s — and evaluate them beside
    `latest`."""
    settings = settings or RoundSettings()
    for name in (previous, latest):       # both there, whole and finished — or one line naming the missing one
        start_fingerprint(out_path("checkpoints", cfg, name), name)
    latest_dir = out_path("checkpoints", cfg, latest)
    tokenizer = load_tokenizer(latest_dir)
    tasks = round_tasks(cfg, tokenizer, settings.prompts, settings.seed)
    answers = {name: sample_answers(cfg, name, tasks, settings) for name in (previous, latest)}
    reward_fn = make_reward_fn(cfg, instruction_judge(cfg, {}))
    prompts = [t["prompt"] for t in tasks]
    rewards = tuple(reward_fn(prompts, answers[name], tasks) for name in (previous, latest))
    pairs = round_pairs(tasks, answers[previous], answers[latest], rewards)
    _, spin = equal_count(pairs[rule], pairs["spin"])
    counts = {k: len(v) for k, v in pairs.items()}
    print(f"round prompts {len(tasks)}: pairs kept by rule {counts}; SPIN trained on {len(spin)}, as many as {rule!r}")
    trained = {"round_latest": pairs["latest"], "round_judged": pairs["latest, judged"], "round_spin": spin}
    stages = {stage: stage_pairs for stage, stage_pairs in trained.items() if stage_pairs}
    for stage, stage_pairs in stages.items():
        steps = settings.steps or max(1, math.ceil(settings.epochs * len(stage_pairs) / cfg.dpo.batch_size))
        round_dpo = replace_config(cfg.dpo, max_steps=steps, warmup_steps=min(cfg.dpo.warmup_steps, steps // 2),
                                   lr=cfg.dpo.lr * settings.lr_scale, onpolicy_countdown_prompts=0,
                                   countdown_share=0.0, seed=settings.seed)
        run_dpo(replace_sections(cfg, dpo=round_dpo), start=latest, stage=stage, pairs=stage_pairs)
    rows, quality = [], quality_metric(cfg)
    for name in (latest, *stages):
        metrics = evaluate_checkpoint(cfg, name)[0]
        row = {"checkpoint": name, **{k: metrics[k] for k in (quality, "countdown_accuracy") if k in metrics}}
        if name != latest:
            for metric, (gained, lost) in task_changes(cfg, latest, name).items():
                row[f"{metric} vs {latest}"] = paired_verdict(gained, lost)
        rows.append(row)
    import pandas as pd
    table = pd.DataFrame(rows)
    paths = write_summary(table, cfg, "iterate")
    stamp = paths["csv"].stem.removeprefix("summary_")
    trained_on = {"latest": len(pairs["latest"]), "latest, judged": len(pairs["latest, judged"]), "spin": len(spin)}
    write_summary(pd.DataFrame([{"rule": k, "pairs kept": v, "trained on": trained_on[k], "prompts": len(tasks),
                                 "previous": previous, "latest": latest, "epochs": settings.epochs,
                                 "lr": cfg.dpo.lr * settings.lr_scale}
                                for k, v in counts.items()]), cfg, "iterate_pairs", stamp)
    return {"counts": counts, "trained_pairs": len(spin), "table": table, "paths": paths,
            "settings": dataclasses.asdict(settings), "rule": rule}
