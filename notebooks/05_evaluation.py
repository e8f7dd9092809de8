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
# **Run time.** tiny ≈ 1.5 min on 2 CPU cores · smoke ≈ 20 s · qwen ≈ 1 h on one GPU.

# %%
import os
import sys
import inspect
sys.path.insert(0, os.path.abspath(".."))   # the helpers package lives at the repository root
import helpers as H

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
paths = H.write_summary(table, cfg, "stages", stamp)
print(table.T.to_string())
print(f"\nfinal = a copy of {final}, the end of the chain")
print("written:", *paths.values(), sep="\n  ")

# %%
from IPython.display import Image, display
display(Image(filename=str(H.plot_stage_metrics(table, H.assets_dir(cfg) / "stage_metrics.png"))))
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
print(report.read_text())
