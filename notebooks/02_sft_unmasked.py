# %% [markdown]
# # 02 · SFT with loss on the whole sequence ("unmasked"), and the fair comparison
#
# **Purpose.** Train exactly like `01_sft_masked` but with the loss on every token; then compare both runs on the
# same held-out measures, and sweep the prompt-loss weight over several seeds to tell a real difference from noise.
# **Inputs.** `checkpoints/<profile>/initial`, `checkpoints/<profile>/sft_masked` (run `00`, `01` first).
# **Outputs.** `checkpoints/<profile>/sft_unmasked/`, `assets/Comparison.png`, `assets/Dataset_results.xlsx`,
# `evaluation_results/<profile>/sft_comparison/…` and `…/sft_sweep/…` (csv/md/txt/xlsx).
# **Run time.** tiny ≈ 6 min on 2 CPU cores (2 min training + the sweep) · smoke ≈ 30 s · qwen ≈ 1 h per run.

# %%
import os
import sys
sys.path.insert(0, os.path.abspath(".."))   # the helpers package lives at the repository root
import helpers as H

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
H.plot_sft_comparison(histories, final, H.assets_dir(cfg) / "Comparison.png")
H.write_dataset_results(final, H.assets_dir(cfg) / "Dataset_results.xlsx")
paths = H.write_summary(final, cfg, "sft_comparison", stamp)
print(final.to_string(index=False))
print("\nwritten:", *paths.values(), sep="\n  ")

# %%
from IPython.display import Image, display
display(Image(filename=str(H.assets_dir(cfg) / "Comparison.png")))

# %% [markdown]
# ## Beyond masked vs unmasked: the prompt-loss weight as a knob, and seed noise
#
# The weight is continuous: 0 is masked, 1 unmasked; Huerta-Enochian & Ko (2024) found small values such as 0.01–0.1
# best for short completions. Each setting is trained with several seeds (shorter runs, `cfg.sft.sweep_steps`), so
# a difference between settings is reported only when it exceeds the spread across seeds.

# %%
runs, summary = H.run_prompt_weight_sweep(cfg)
H.write_summary(runs, cfg, "sft_sweep", stamp)
H.write_summary(summary, cfg, "sft_sweep_mean_std", stamp)
print(summary.to_string(index=False))

# %%
weights = list(cfg.sft.sweep_weights)
for metric in ["response_loss", "exact_match" if "exact_match" in runs else "rouge_l", "countdown_reward"]:
    for w in weights[1:]:
        print(H.seed_noise_verdict(runs, metric, weights[0], w))
