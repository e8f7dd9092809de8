# ---
# jupyter:
#   run_time_s:
#     tiny: 90
#     smoke: 30
#     qwen: 3600
# ---

# %% [markdown]
# # 02 · SFT with loss on the whole sequence ("unmasked"), and the fair comparison
#
# **Purpose.** Train exactly like `01_sft_masked` but with the loss on every token; compare both runs on the same
# held-out measures; then read the seeded experiment (`make experiment`): masked vs whole-sequence loss with 3 seeds
# at full length, the gradient-dilution confound controlled, and a prompt-loss-weight × data-size grid.
# **Inputs.** `checkpoints/<profile>/initial`, `checkpoints/<profile>/sft_masked` (run `00`, `01` first); the
# committed experiment under `evaluation_results/<profile>/sft_sweep/`.
# **Outputs.** `checkpoints/<profile>/sft_unmasked/`, `assets/Dataset_results.xlsx`,
# `evaluation_results/<profile>/sft_comparison/…`; with `EXPERIMENT=1` (or where none is committed, in `smoke`) the
# experiment itself: `…/sft_sweep/…`, `assets/Comparison.png`, `assets/sweep_heatmap.png`.
# **Run time.** as `01` (the experiment itself: about 1.5 h on 2 cores, `make experiment`).
# `make demo` prints each notebook's elapsed time, and estimates the rest from the times in the notebooks' metadata.

# %%
import os
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = cfg.sft.seed
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %% [markdown]
# Identical settings to `01`, except `prompt_loss_weight=1.0`:

# %%
result = H.run_sft(cfg, "sft_unmasked", prompt_loss_weight=1.0)

# %% [markdown]
# ## A fair comparison
#
# The two training curves are **not** comparable: the masked loss averages response tokens only, the unmasked one
# averages every token (prompts are easier or harder to predict than answers). So both models are measured on the
# **same** held-out data with the **same** measures: response-only loss and perplexity, whole-sequence loss, and the
# quality of generated answers (exact match on the instruction tasks, the rule-based Countdown score).

# %%
stamp = H.timestamp()
final = H.evaluate_checkpoints(cfg, ["initial", "sft_masked", "sft_unmasked"])
histories = {name: H.load_history(H.out_path("checkpoints", cfg, name)) for name in ["sft_masked", "sft_unmasked"]}
H.write_dataset_results(final, H.assets_dir(cfg) / "Dataset_results.xlsx")
paths = H.write_summary(final, cfg, "sft_comparison", stamp)
for theme, part in H.stage_tables(final).items():
    print(f"{theme}\n{part.to_string(index=False)}\n")
print("written:", *paths.values(), sep="\n  ")
by = final.set_index("model")
quality = H.quality_metric(cfg)
print("\nWhat we see (one seed each; whether such a difference exceeds seed noise is what a seeded experiment "
      "measures — the committed one below says which run it is):")
# response-only loss (lower is better) on the same held-out conversations, with a paired bootstrap interval
print("  response_loss, masked → unmasked:", H.loss_change(cfg, "sft_masked", "sft_unmasked"))
# masked → unmasked on the same held-out tasks, with a sign test on the tasks gained and lost (the task noise)
print("  masked → unmasked:", H.stage_change(cfg, by.to_dict("index"), "sft_masked", "sft_unmasked", quality))
print(f"  whole-sequence loss: masked {by['sequence_loss']['sft_masked']:.2f}, unmasked "
      f"{by['sequence_loss']['sft_unmasked']:.2f} — unmasked learned the prompts, as it was asked to.")

# %%
from IPython.display import Image, display
figure = H.plot_sft_comparison(histories, final, H.out_path("outputs", cfg, "sft_comparison.png"))
display(Image(filename=str(figure)))

# %% [markdown]
# ## One seed is not an experiment: seeds, the confound, and when whole-sequence loss helps
#
# The runs above differ by one argument, but they are one seed each, and they hide a confound: the loss is averaged
# over trained tokens, and most trained tokens of the unmasked run are prompt tokens — at the same learning rate the
# response gets several times less gradient. `make experiment` (~1.5 h on 2 cores, resumable, its results committed)
# trains every setting with 3 seeds at the full length, adds a **controlled** arm — the whole-sequence loss divided
# by the response tokens only, so the response gets exactly the masked run's gradient — and a grid over the
# prompt-loss weight (0, 0.01, 0.1, 1) and the SFT data size, where the literature says the answer may change
# (Shi et al. 2024: loss on instructions helps small sets with short completions; Huerta-Enochian & Ko 2024: a small
# weight is best). A difference is reported only when it exceeds 2 × the pooled std across seeds.

# %%
results = H.latest_experiment(cfg)
if os.environ.get("EXPERIMENT") == "1" or (results is None and cfg.experiment.run_in_notebook):
    results = H.run_experiment(cfg)
    print(H.write_experiment(cfg, results))
if results is None:
    print("no experiment yet for this profile: run `make experiment` (or EXPERIMENT=1 for this notebook)")
else:
    import pandas as pd
    print(H.experiment_origin(cfg), "\n")
    table = pd.DataFrame(H.headline(results, ("response_loss", quality, "countdown_accuracy")))
    columns = ["comparison", "metric", "from", "to", "difference", "noise", "verdict"]
    print(table[columns].round(3).to_string(index=False))
    print()
    print("\n".join(H.conclusion(results, quality)))

# %%
if results is not None:
    display(Image(filename=str(H.assets_dir(cfg) / "Comparison.png")))
    display(Image(filename=str(H.assets_dir(cfg) / "sweep_heatmap.png")))


# %% [markdown]
# ## Try next
# 1. `run_sft(cfg, "sft_pw01", prompt_loss_weight=0.1)`: a small prompt weight, between the two runs above.
# 2. Rerun both runs with `loss_normalization="response_tokens"`: the response gets the same gradient in both —
#    how much of the gap is left?
# 3. Cut the instruction data (`train_conversations=300`): Shi et al. (2024) expect prompt loss to help small sets.
#
# **Where the code lives:** `helpers/sft.py` (`run_sft`, `sft_collate` and its normalisation),
# `helpers/comparison.py` (this comparison), `helpers/experiment.py` (`run_experiment`, `headline`, `conclusion`).
