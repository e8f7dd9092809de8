# %% [markdown]
# # 04 · RLOO and rejection-sampling fine-tuning: learning from a verifier, without losing what DPO taught
#
# **Purpose.** Improve Countdown beyond imitation: sample k answers per prompt, score them, and push up the ones
# better than their siblings (REINFORCE Leave-One-Out). The chain continues: RLOO **starts from the DPO model**
# (`03`), and trains on a mixture of Countdown prompts (rule-based reward) and instruction prompts (exact match with
# the tiny world's answer; the reward model in `qwen`), so it keeps DPO's instruction gains. Beside it, from the same
# start and with the same number of samples, **rejection-sampling fine-tuning** (RFT): keep the best of k, fine-tune.
# **Inputs.** `checkpoints/<profile>/dpo` (from `03`), `checkpoints/<profile>/reward_model` (qwen).
# **Outputs.** `checkpoints/<profile>/rloo/` (the end of the chain: `05` publishes it as `final`),
# `checkpoints/<profile>/rft/`, `evaluation_results/<profile>/rloo/…` and `…/rft_vs_rloo/…`,
# `assets/rft_vs_rloo.png`, TensorBoard under `tensorboard_events/<profile>/rloo/` (with sampled tables).
# **Run time.** tiny ≈ 8–11 min on 2 CPU cores · smoke ≈ 30 s · qwen: hours on one GPU.
#
# In `tiny`, Countdown gives **two numbers ≤ 30** (three were beyond the 1.8M-parameter model; README log). The
# checks of this notebook: `final` (= RLOO) reaches exact match ≥ 0.75 and Countdown accuracy ≥ 0.30 at once, and
# RLOO loses at most 2 points of the exact match DPO had.

# %%
import os
import sys
import inspect
sys.path.insert(0, os.path.abspath(".."))   # the helpers package lives at the repository root
import helpers as H

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = cfg.rloo.seed
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %% [markdown]
# ## The reward: model output is untrusted input
#
# Tiered as TinyZero defines it — **0** no `<answer>`, **0.1** an answer that is invalid, reuses or misses a number,
# or misses the target, **1** a correct equation. The *last* `<answer>` counts wherever it is. The expression is
# parsed with `ast`, and only `+ − × ÷`, parentheses and non-negative integers are evaluated: never `eval`.

# %%
print(inspect.getsource(H.countdown_reward))

# %%
for text in ["<answer> (3 + 4) * 2 </answer> Done.", "<answer> 9**9**9**9 </answer>",
             "<answer> __import__('os').system('ls') </answer>", "<think> hmm </think>"]:
    print(f"{H.countdown_reward(text, 14, [3, 4, 2]):.1f}  ←  {text!r}")

# %% [markdown]
# ## The leave-one-out advantage (Ahmadian et al. 2024)
#
# For each prompt, $k$ samples $y_1..y_k$ with rewards $r_i$:
# $A_i = r_i - \frac{1}{k-1}\sum_{j\neq i} r_j$, and the loss is $-\frac{1}{N}\sum_i A_i \log\pi_\theta(y_i|x)$ over
# response tokens. Equal rewards give zero advantage: a group where every sample fails (or succeeds) teaches
# nothing. An optional KL penalty to the SFT model is folded into the reward:
# $r_i - \beta_{KL}(\log\pi_\theta - \log\pi_\text{ref})$.

# %%
import torch
print(inspect.getsource(H.rloo_advantages))
print(H.rloo_advantages(torch.tensor([[1.0, 0.0, 0.1], [0.1, 0.1, 0.1]])))

# %% [markdown]
# ## Scoring k samples of one prompt: run the prompt once
#
# $\log\pi(y_i|x)$ needs the prompt as context, but the $k$ samples of a prompt share it. `shared_prompt_logps` runs
# each prompt once, repeats its KV cache $k$ times and runs only the responses on top: the same numbers (tested to
# 1e-4, gradients included) for a fraction of the work — a tiny Countdown prompt is ~125 tokens, its answer ~27.

# %%
print(inspect.getsource(H.shared_prompt_logps))

# %% [markdown]
# ## Before: the DPO model, where the chain stands (greedy, held-out)

# %%
quality = "exact_match" if cfg.data.world == "tiny" else "rouge_l"
before = H.evaluate_checkpoint(cfg, "dpo")[0]        # evaluated once (by 03) and reused
print({k: round(before[k], 3) for k in ("countdown_accuracy", "countdown_reward", quality)})

# %% [markdown]
# ## RLOO from DPO, both tracks in every batch

# %%
print(cfg.rloo)
result = H.run_rloo(cfg, start="dpo")
# the loop evaluated both tracks on the held-out sets at its last step: reuse that, greedy is deterministic
after = {k.removeprefix("eval/"): v for k, v in result["history"][-1].items() if k.startswith("eval/")}
for metric in ("countdown_accuracy", quality):
    print(f"{metric}: DPO {before[metric]:.3f} → RLOO {after[metric]:.3f} "
          f"({100 * (after[metric] - before[metric]):+.1f} points)")
both = after[quality] >= 0.75 and after["countdown_accuracy"] >= 0.30
kept = after[quality] >= before[quality] - 0.02
print("target (final: exact match >= 0.75 and Countdown >= 0.30):", "reached" if both else "NOT reached")
print("target (RLOO keeps DPO's instruction following within 2 points):", "reached" if kept else "NOT reached")

# %% [markdown]
# The sampled tables in TensorBoard (`rloo/samples`, every `table_every` steps) show what the policy writes;
# `rloo/reward_countdown` and `rloo/reward_instructions` follow each track; `rloo/zero_variance_groups` is the share
# of prompts whose k samples all scored alike — those teach nothing.

# %% [markdown]
# ## Rejection-sampling fine-tuning at the same number of samples
#
# From the same start (DPO), RFT draws as many completions as RLOO did — in `rounds` rounds of fresh prompts from the
# same mixture, k per prompt at RLOO's temperature — keeps the best of each prompt's k if it passes (a correct
# Countdown answer, the exact instruction answer; with a reward model, the best of k), and fine-tunes on what it kept.

# %%
print(inspect.getsource(H.keep_best))
print(cfg.rft)
rft = H.run_rft(cfg, start="dpo")
table = H.rft_vs_rloo(cfg, result["history"], rft["curve"])
paths = H.write_summary(table, cfg, "rft_vs_rloo")
print(table.to_string(index=False))
print("written:", *paths.values(), sep="\n  ")

# %%
from IPython.display import Image, display
display(Image(filename=str(H.plot_rft_vs_rloo(table, H.assets_dir(cfg) / "rft_vs_rloo.png"))))

# %%
import pandas as pd
summary = pd.DataFrame([{"model": "dpo", **{k: before[k] for k in ("countdown_accuracy", "countdown_reward", quality)}},
                        {"model": "rloo", **{k: after[k] for k in ("countdown_accuracy", "countdown_reward", quality)}},
                        {"model": "rft", **{k: rft["curve"][-1][k] for k in ("countdown_accuracy", "countdown_reward",
                                                                              quality)}}])
paths = H.write_summary(summary, cfg, "rloo")
print(summary.to_string(index=False))
print("written:", *paths.values(), sep="\n  ")
