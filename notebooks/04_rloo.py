# ---
# jupyter:
#   run_time_s:
#     tiny: 240
#     smoke: 30
# ---

# %% [markdown]
# # 04 · RLOO and rejection-sampling fine-tuning: learning from a verifier, without losing what DPO taught
#
# **Purpose.** Try to improve Countdown beyond imitation: sample k answers per prompt, score them, and push up the
# ones better than their siblings (REINFORCE Leave-One-Out). The chain continues: RLOO **starts from the DPO model**
# (`03`), and trains on a mixture of Countdown prompts (rule-based reward) and instruction prompts (exact match with
# the tiny world's answer; the reward model in `qwen`), so it does not lose DPO's instruction following. Beside it,
# from the same start and compared at equal numbers of samples, **rejection-sampling fine-tuning** (RFT): keep the
# best of k, fine-tune.
# **Inputs.** `checkpoints/<profile>/dpo` (from `03`), `checkpoints/<profile>/reward_model` (qwen).
# **Outputs.** `checkpoints/<profile>/rloo/` (the end of the chain: `05` publishes it as `final`),
# `checkpoints/<profile>/rft/`, `evaluation_results/<profile>/rloo/…` and `…/rft_vs_rloo/…`,
# `assets/rft_vs_rloo.png`, TensorBoard under `tensorboard_events/<profile>/rloo/` (with sampled tables).
# **Run time.** minutes on a laptop CPU in tiny (sampling is most of it); hours on one GPU in qwen.
# `make demo` prints each notebook's elapsed time, and estimates the rest from the times in the notebooks' metadata.
#
# In `tiny`, Countdown gives **two numbers ≤ 50** (three were beyond the tiny model; docs/LOG.md). The
# checks of this notebook: `final` (= RLOO) reaches exact match ≥ 0.75 and Countdown accuracy ≥ 0.30 at once, RLOO
# loses at most 2 points of the exact match DPO had, and it raises Countdown above DPO's — each printed as met or not
# below, with where this run falls among the committed base models.

# %%
import os
import inspect
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

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
# nothing. The KL penalty to the start (the DPO model) is folded into the reward before the baseline, so the loss
# that is **trained** is
#
# $$\tilde r_i = r_i - \beta_\text{KL}\big(\log\pi_\theta(y_i|x) - \log\pi_\text{ref}(y_i|x)\big),\qquad
# \tilde A_i = \tilde r_i - \tfrac{1}{k-1}\textstyle\sum_{j\neq i}\tilde r_j,\qquad
# \mathcal{L} = -\tfrac{1}{N}\sum_i \tilde A_i\,\log\pi_\theta(y_i|x)$$
#
# with $\beta_\text{KL}$ = `cfg.rloo.kl_coef` and no gradient through $\tilde A_i$ (the rewards are numbers).

# %%
import torch
print(inspect.getsource(H.rloo_advantages))
advantages = H.rloo_advantages(torch.tensor([[1.0, 0.0, 0.1], [0.1, 0.1, 0.1]]))
print("advantages:", [[round(float(a), 3) + 0.0 for a in row] for row in advantages])   # + 0.0: no "-0.0"
print(inspect.getsource(H.rloo_loss))

# %% [markdown]
# ## Scoring k samples of one prompt: run the prompt once
#
# $\log\pi(y_i|x)$ needs the prompt as context, but the $k$ samples of a prompt share it. `shared_prompt_logps` runs
# each prompt once, repeats its KV cache $k$ times and runs only the responses on top: the same numbers (tested to
# 1e-4, gradients included), with the prompt's positions computed once instead of k times.

# %%
print(inspect.getsource(H.shared_prompt_logps))

# %% [markdown]
# ## Before: the DPO model, where the chain stands (greedy, held-out)

# %%
quality = H.quality_metric(cfg)
before = H.evaluate_checkpoint(cfg, "dpo")[0]        # evaluated once (by 03) and reused
print(", ".join(f"{k} {before[k]:.3f}" for k in ("countdown_accuracy", "countdown_reward", quality)))

# %% [markdown]
# ## RLOO from DPO, both tracks in every batch

# %%
print(H.describe_config(cfg.rloo))
result = H.run_rloo(cfg, start="dpo")
# every held-out task, greedy (the loop's points scored the first cfg.eval.curve_rows Countdown tasks); 05 reuses it
after = H.evaluate_checkpoint(cfg, "rloo")[0]
# each change with its verdict: a sign test on the held-out tasks gained and lost (their saved greedy answers)
print("DPO → RLOO:", H.stage_change(cfg, {"dpo": before, "rloo": after}, "dpo", "rloo", quality) + ".")
# the profile's targets (cfg.targets: the tiny world's; the qwen course's anchors are in docs/QWEN.md), each placed
# against the range `make robustness` measured over base models
chain = {f"{stage}/{metric}": scores[metric] for stage, scores in (("dpo", before), ("rloo", after))
         for metric in ("countdown_accuracy", quality)}
print(*H.target_lines(cfg, chain), sep="\n")

# %% [markdown]
# ## What RLOO did, step by step
# From its TensorBoard logs (the same curves as `make tensorboard`; the sampled tables are under *Text*):
# the reward of each track, the share of Countdown samples that are correct, the share of groups whose k samples all
# scored alike (they teach nothing), and how far the policy moved from its start (KL).

# %%
from IPython.display import Image, display
display(Image(filename=str(H.plot_rloo_dynamics(cfg, H.out_path("outputs", cfg, "rloo_dynamics.png")))))
curves = H.read_tensorboard_scalars(H.out_path("tensorboard_events", cfg, "rloo"))
zero = [v for _, v in curves.get("rloo/zero_variance_groups", [])]
kl = [v for _, v in curves.get("rloo/kl", [])]
if zero and kl:
    print(f"groups that taught nothing: {min(zero):.0%}–{max(zero):.0%} of a step's prompts "
          f"(mean {sum(zero) / len(zero):.0%}); KL to the start at the last logged step: {kl[-1]:.2f} nats per sample")

# %% [markdown]
# ### What we see: before and after, and what the reward does not check
# The reward reads only the `<answer>`. A correct answer whose `<think>` restates *another* target is paid in full —
# unfaithful reasoning that a rule-based reward cannot see; the cell below counts such answers in this run.

# %%
change = H.countdown_changes(cfg, "dpo", "rloo")
if change["gained_examples"]:
    print("Held-out Countdown tasks RLOO solved and the DPO model did not (the counts: the verdict above):")
for example in change["gained_examples"][:2]:       # before and after, the same task
    print(f"  {example['task']}\n    DPO:  {example['dpo']!r}\n    RLOO: {example['rloo']!r}")
faith = H.unfaithful_reasoning(H.evaluate_checkpoint(cfg, "rloo")[1])
print(f"Of its {faith['correct']} correct greedy answers, {faith['wrong_target_in_think']} restate a wrong target "
      "in <think>" + (":" if faith["examples"] else "."))
for example in faith["examples"]:
    print("  ", repr(example))

# %% [markdown]
# ## Rejection-sampling fine-tuning at the same number of samples
#
# From the same start (DPO), RFT draws `cfg.rft.sample_share` of the completions RLOO drew (tiny: half, in 2 rounds
# that end where RLOO was evaluated, at 3,200 and 6,400 samples; qwen: half as well, in 2 rounds). Each round takes
# fresh prompts from the same mixture, k per prompt at RLOO's temperature, keeps the best of each prompt's k if it
# passes (a correct Countdown answer, the exact instruction answer; with a reward model, the best of k), and
# fine-tunes on what it kept. The comparison is made where both have drawn the same number of samples.

# %%
print(inspect.getsource(H.keep_best))
print(H.describe_config(cfg.rft))
rft = H.run_rft(cfg, start="dpo")
table = H.rft_vs_rloo(cfg, result.history, rft.history)      # RFT's history: one evaluation per round
paths = H.write_summary(table, cfg, "rft_vs_rloo")
print(table.round(3).to_string(index=False))
print("written:", *paths.values(), sep="\n  ")

# %%
tasks = {"countdown_accuracy": H.curve_rows(cfg), quality: cfg.eval.instruction_rows}     # each point's tasks
display(Image(filename=str(H.plot_rft_vs_rloo(table, H.assets_dir(cfg) / "rft_vs_rloo.png", tasks))))

# %%
import pandas as pd
scores = lambda row: {k: row[k] for k in ("countdown_accuracy", "countdown_reward", quality)}
rft_end = H.evaluate_checkpoint(cfg, "rft")[0]             # every held-out task, as before and after
summary = pd.DataFrame([{"model": "dpo", "samples": 0, **scores(before)},
                        {"model": "rloo", "samples": int(table[table.method == "rloo"]["samples"].max()),
                         **scores(after)},
                        {"model": "rft", "samples": rft.history[-1]["samples"], **scores(rft_end)}])
paths = H.write_summary(summary, cfg, "rloo")
print(summary.round(3).to_string(index=False))
print("written:", *paths.values(), sep="\n  ")
equal = H.at_equal_samples(table)
n, last = (equal.index[-1] if len(equal) else 0), table["samples"].max()
if len(equal):
    print("\nAt equal numbers of samples:\n" + equal.round(3).to_string())
    at = lambda method, metric: equal.loc[n, (method, metric)]
    print(f"\nAt {n:,} samples each, RLOO → RFT (one evaluation each, no saved answers to pair):")
    for metric in ("countdown_accuracy", quality):
        print(f"  {metric} {at('rloo', metric):.3f} → {at('rft', metric):.3f} "
              f"({H.share_difference(at('rloo', metric), at('rft', metric), tasks[metric])})")
else:
    print("\nRLOO and RFT share no evaluation point at equal samples: RFT's rounds end where RLOO has none "
          "(rft.sample_share, rft.rounds, rloo.eval_every).")
if last > n:
    print(f"RLOO then draws on to {last:,} samples and ends at Countdown {after['countdown_accuracy']:.3f} "
          f"(all {cfg.eval.countdown_rows:,} held-out tasks), {quality} {after[quality]:.3f}.")
print("Each at the end of its run, RLOO → RFT:", H.stage_change(cfg, {"rloo": after, "rft": rft_end}, "rloo", "rft",
                                                              quality) + ".")


# %% [markdown]
# ## Try next
# 1. `cfg.rloo.k = 4` (and `batch_size = 32` to keep the samples per step): fewer samples per group — more groups
#    with equal rewards, a noisier baseline.
# 2. `cfg.rloo.temperature = 0.6`: fewer diverse samples — more groups all right or all wrong, whose
#    leave-one-out advantages are zero (watch how many groups carry a gradient; docs/LOG.md).
# 3. `cfg.rloo.kl_coef = 0` and then `0.5`: watch `rloo/kl` and how much exact match RLOO keeps.
# 4. `cfg.rloo.instruction_share = 0`: RLOO on Countdown only — does it give back DPO's instruction gains?
#
# **Where the code lives:** `helpers/rloo.py` (`rloo_advantages`, `rloo_loss`, `make_rloo_loss`, `run_rloo`,
# `plot_rloo_dynamics`), `helpers/rft.py` (`keep_best`, `run_rft`), `helpers/countdown.py` (`countdown_reward`),
# `helpers/generation.py` (sampling), `helpers/logprobs.py` (`shared_prompt_logps`).
