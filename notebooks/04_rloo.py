# %% [markdown]
# # 04 · RLOO: reinforcement learning with a rule-based Countdown reward (and a reward-model track)
#
# **Purpose.** Improve Countdown accuracy beyond supervised imitation: sample k answers per prompt, score them with
# the verifier, and push up the ones better than their siblings (REINFORCE Leave-One-Out). A short second track
# uses the reward model on instruction prompts.
# **Inputs.** `checkpoints/<profile>/sft_masked` (WarmStart SFT), `checkpoints/<profile>/reward_model` (from `03`).
# **Outputs.** `checkpoints/<profile>/rloo/`, `checkpoints/<profile>/rloo_instructions/`,
# `evaluation_results/<profile>/rloo/…`, TensorBoard under `tensorboard_events/<profile>/rloo/` (with sampled tables).
# **Run time.** tiny ≈ 6.5 min on 2 CPU cores · smoke ≈ 15 s · qwen: hours on one GPU.
#
# In `tiny`, Countdown gives **two numbers ≤ 30** (three were beyond the 1.8M-parameter model: after SFT it wrote the
# format but almost never a right equation, so every sampled group scored alike and RLOO had nothing to learn from;
# see the README's log). The check of this notebook: greedy accuracy on the 200 held-out tasks rises by **at least
# 10 points** over the SFT model.

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
# ## Before: the SFT model on the held-out Countdown test set (greedy)

# %%
# evaluated once (by 01–03) and reused: the same greedy measures on the same held-out tasks
before = H.evaluate_checkpoint(cfg, "sft_masked")[0]
print({k: round(before[k], 3) for k in ("countdown_accuracy", "countdown_reward")})

# %% [markdown]
# ## Countdown track: RLOO with the rule-based reward

# %%
print(cfg.rloo)
result = H.run_rloo(cfg, track="countdown", start="sft_masked")
# the loop evaluated the policy on the same 200 held-out tasks at its last step: reuse that, greedy is deterministic
after = {k.removeprefix("eval/"): v for k, v in result["history"][-1].items() if k.startswith("eval/")}
print(f"Countdown accuracy (greedy, {cfg.eval.countdown_rows} held-out tasks): "
      f"SFT {before['countdown_accuracy']:.3f} → RLOO {after['countdown_accuracy']:.3f} "
      f"({100 * (after['countdown_accuracy'] - before['countdown_accuracy']):+.1f} points)")
gain = after["countdown_accuracy"] - before["countdown_accuracy"]
print("target (+10 points):", "reached" if gain >= 0.10 else "NOT reached")

# %% [markdown]
# The sampled tables in TensorBoard (`rloo/samples`, every `table_every` steps) show what the policy writes;
# `rloo/zero_variance_groups` is the share of prompts whose k samples all scored alike — those teach nothing.

# %% [markdown]
# ## Instruction track: RLOO with the reward model (short)

# %%
import pandas as pd
instr = H.run_rloo(cfg, track="instructions", start="sft_masked")
rows = [{"model": "sft_masked", **before}, {"model": "rloo", **after}]
table = pd.DataFrame(rows)
# the instruction track's held-out reward-model score, before (SFT) and after its RLOO run
table["instruction_track_rm_score"] = [instr["history"][0].get("eval/reward_model_score"),
                                       instr["history"][-1].get("eval/reward_model_score")]
paths = H.write_summary(table, cfg, "rloo")
print(table.to_string(index=False))
print("written:", *paths.values(), sep="\n  ")
