# ---
# jupyter:
#   run_time_s:
#     tiny: 30
#     smoke: 20
#     qwen: 3600
# ---

# %% [markdown]
# # 05 · Evaluation: every stage side by side
#
# **Purpose.** Measure every checkpoint of the profile — `initial`, `sft_masked`, `sft_unmasked`, `dpo`, `rloo` and
# `rft` — on the same held-out sets, save every response, write the summaries, the figures and the report, and
# publish `final`: the end of the chain `sft_masked` → `dpo` → `rloo`, the fully fine-tuned weights.
# **Inputs.** Whichever checkpoints exist under `checkpoints/<profile>/` (run `00`–`04` first for all of them).
# **Outputs.** `evaluation_results/<profile>/stages/<timestamp>/summary/summary_<timestamp>.{csv,md,txt,xlsx}`,
# `outputs/<profile>/<checkpoint>/responses.jsonl`, `assets/stage_metrics.png`, `assets/learning_curves.png`,
# `report/report.md`.
# **Run time.** under a minute in tiny (the stages' evaluations are cached); about an hour on one GPU in qwen.
# `make demo` prints each notebook's elapsed time, and estimates the rest from the times in the notebooks' metadata.

# %%
import os
import inspect
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = cfg.eval.seed
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %% [markdown]
# ## The measures
#
# - **Countdown**: greedy accuracy and mean reward; sampled (temperature 0.6, top_p 0.95, top_k 20) accuracy and
#   reward; **pass@k** — the unbiased estimator $1 - \binom{n-c}{k}/\binom{n}{k}$ for $c$ correct among $n$ samples;
#   **best-of-n** by the verifier.
# - **Instruction following**: exact match (tiny) or ROUGE-L (qwen), greedy; **best-of-n** with the reward model
#   choosing among n samples (the rejection-sampling idea); in qwen also the **win rate** against
#   Qwen2.5-0.5B-Instruct judged by the reward model.
# - Held-out **response-only loss / perplexity** and **whole-sequence loss**.

# %%
print(inspect.getsource(H.pass_at_k))
print(inspect.getsource(H.best_of_n))

# %%
stamp = H.timestamp()
table, final = H.evaluate_all_stages(cfg)
paths = H.write_summary(table, cfg, "stages", stamp)          # every column, for the spreadsheet
# the targets first: this run against each, and the range `make robustness` measured over base models
print(H.target_table(cfg, H.run_row(cfg, table, H.latest_summary(cfg, "dpo"))).to_string(index=False) + "\n")
for theme, part in H.stage_tables(table).items():
    print(f"── {theme}\n{part.to_string(index=False)}\n")
print(f"final = a copy of {final}, the end of the chain; every column in", paths["csv"])
quality = H.quality_metric(cfg)
print("\nWhat we see, stage by stage along the chain (computed from the table above):")
print("\n".join(H.chain_notes(table.set_index("model").to_dict("index"), quality, cfg.rft.sample_share, cfg)))

# %% [markdown]
# What each column measures (every measure on the same held-out sets):

# %%
for metric, meaning in H.LEGEND.items():
    if metric in table.columns:
        print(f"{metric:>27}: {meaning}")

# %%
from IPython.display import Image, display
display(Image(filename=str(H.plot_stage_metrics(table, H.assets_dir(cfg) / "stage_metrics.png", cfg))))
display(Image(filename=str(H.plot_learning_curves(cfg, H.assets_dir(cfg) / "learning_curves.png"))))

# %% [markdown]
# ## A few saved responses

# %%
import json
for name in ["sft_masked", "rloo"]:
    path = H.out_path("outputs", cfg, name, "responses.jsonl")
    if path.exists():
        rows = [json.loads(line) for line in path.open()][:3]
        print(f"--- {name}")
        for row in rows:
            print(json.dumps(row)[:300])

# %% [markdown]
# ## The report

# %%
report = H.write_report(cfg, table, final)
print(f"the report, made from the summaries above: {report}")


# %% [markdown]
# ## Try next
# 1. Raise `cfg.eval.n_samples` to 16: do pass@k and best-of-n keep growing, and where does best-of-n by the reward
#    model fall behind best-of-n by the verifier?
# 2. Evaluate at temperature 1.0 (`cfg.eval.temperature`): how much of pass@1 is lost?
# 3. Compare `rft` with `rloo` per Countdown task (`H.countdown_changes(cfg, "rft", "rloo")`).
#
# **Where the code lives:** `helpers/scoring.py` (greedy measures, `pass_at_k`, `best_of_n`, the evaluation cache),
# `helpers/evaluation.py` (`evaluate_all_stages`, tables, legend, figures), `helpers/report.py` (the report).
