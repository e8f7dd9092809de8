# ---
# jupyter:
#   run_time_s:
#     tiny: 360
#     smoke: 15
#     qwen: 3600
# ---

# %% [markdown]
# # 03 · Preference learning: DPO, on-policy Countdown pairs, and a reward model
#
# **Purpose.** Teach the SFT model to prefer the chosen answer of a pair over the rejected one with Direct Preference
# Optimization, and train a Bradley–Terry reward model: the evaluation's judge, and RLOO's instruction reward in
# `qwen` (the tiny world's instructions have one exact answer, checked directly).
# **Inputs.** `checkpoints/<profile>/sft_masked` (run `00`, `01` first), preference pairs, Countdown prompts.
# **Outputs.** `checkpoints/<profile>/dpo/`, `checkpoints/<profile>/reward_model/`,
# `evaluation_results/<profile>/dpo/…` (csv/md/txt/xlsx), TensorBoard under `tensorboard_events/<profile>/dpo/`.
# **Run time.** the longest notebook of the tiny demo (DPO's steps and the reward model's); about an hour on one
# GPU in qwen.
# `make demo` prints each notebook's elapsed time, and estimates the rest from the times in the notebooks' metadata.

# %%
import os
import inspect
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = cfg.dpo.seed
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %% [markdown]
# ## The DPO loss (Rafailov et al. 2023)
#
# $$\mathcal{L}_\text{DPO} = -\log\sigma\Big(\beta\big[(\log\pi_\theta(y_w|x) - \log\pi_\text{ref}(y_w|x)) -
# (\log\pi_\theta(y_l|x) - \log\pi_\text{ref}(y_l|x))\big]\Big)$$
#
# $\log\pi(y|x)$ sums the log-probabilities of the **response tokens only** — the same mask as masked SFT. The
# implicit reward of a response is $\beta(\log\pi_\theta - \log\pi_\text{ref})$. The reference is the SFT model; its
# log-probs are computed **once** before training, so training holds a single model in memory.
# On the tiny model, plain DPO pushed the likelihood of *both* answers down and cost exact match (docs/LOG.md), so
# `cfg.dpo.sft_weight` adds $\alpha\cdot$NLL of the chosen answer (the RPO variant, Pang et al. 2024); set it to 0
# for plain DPO. The loss that is **trained** is therefore
#
# $$\mathcal{L} = \mathcal{L}_\text{DPO} + \alpha\,\Big(-\tfrac{1}{|y_w|}\log\pi_\theta(y_w|x)\Big),
# \qquad \alpha = \texttt{cfg.dpo.sft\_weight}$$
#
# (the NLL per response token of the chosen answer, so long and short answers weigh alike).
# Chosen and rejected share their prompt, so `pair_sequence_logps` runs it once and repeats its KV cache for
# the two answers (as RLOO does for its k samples, `04`): the same numbers as the two full sequences (tested).

# %%
print(inspect.getsource(H.dpo_loss))
print(inspect.getsource(H.make_dpo_loss))      # what the training loop calls: DPO + α · NLL(chosen)

# %%
import math
import torch
loss, _, _ = H.dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1)
print(f"equal log-probs: loss = {loss.item():.4f} = log 2 = {math.log(2):.4f}")

# %% [markdown]
# ## On-policy Countdown pairs
#
# As the course project does: sample completions per Countdown prompt from the SFT model (temperature > 0), make the
# best one by the rule-based reward *chosen* and the worst *rejected*, and drop prompts where all tie or where no
# sample solves the task (the RPO term would imitate a wrong equation). With a few dozen Countdown pairs among
# thousands of instruction pairs, DPO erased Countdown (docs/LOG.md); so here prompts are sampled 4 times each, and
# the Countdown pairs are repeated until they are `cfg.dpo.countdown_share` of the pairs: the two tracks are
# weighed against each other (on the tuning seeds, a smaller share kept less Countdown and gained more exact match:
# docs/LOG.md).

# %%
print(H.describe_config(cfg.dpo))
result = H.run_dpo(cfg, start="sft_masked")          # the chain: sft_masked → dpo → rloo
print("on-policy Countdown pairs:", ", ".join(f"{k} {v}" for k, v in result["onpolicy"].items()))
before, after = result["before"], result["after"]
verdict = H.paired_verdict(result["pairs_gained"], result["pairs_lost"], unit="pair")   # the same held-out pairs
print(f"held-out preference accuracy, ranked by the model's own log-probs: SFT {before['logp_accuracy']:.3f} → "
      f"DPO {after['logp_accuracy']:.3f} ({verdict})")
print(f"the same pairs ranked by DPO's implicit reward β(log π − log π_ref): {after['reward_accuracy']:.3f}")
print(*H.target_lines(cfg, {"dpo/preference_accuracy": after["reward_accuracy"]}), sep="\n")

# %% [markdown]
# ## Did DPO keep what SFT taught? The same held-out measures for both

# %%
table = H.evaluate_checkpoints(cfg, ["sft_masked", "dpo"])
table["preference_accuracy"] = [before["logp_accuracy"], after["logp_accuracy"]]    # the same measure for both
table["preference_pairs_gained"] = [None, result["pairs_gained"]]     # held-out pairs DPO ranks right and SFT did not
table["preference_pairs_lost"] = [None, result["pairs_lost"]]         # … and the other way round: the report's verdict
quality = H.quality_metric(cfg)
for theme, part in H.stage_tables(table).items():
    print(f"{theme}\n{part.to_string(index=False)}\n")

# %% [markdown]
# ### What we see
# Computed from this run's numbers (another base model gives others: each target line says where this run falls in
# the range `make robustness` measured): what DPO gave, what it cost, and — from the saved greedy answers to the
# same held-out Countdown tasks — *how* Countdown answers changed.

# %%
change = H.countdown_changes(cfg, "sft_masked", "dpo")
# each change with its verdict: a sign test on the held-out tasks gained and lost (their saved greedy answers)
print("DPO:", H.stage_change(cfg, table.set_index("model").to_dict("index"), "sft_masked", "dpo", quality) + ".")
print(*H.target_lines(cfg, {"sft_masked/countdown_accuracy": table["countdown_accuracy"][0],
                            "dpo/countdown_accuracy": table["countdown_accuracy"][1]}), sep="\n")
print("Countdown answers without an <answer> tag: " + ", ".join(f"{k} {v}" for k, v in change["no_answer_tag"].items())
      + (". Tasks SFT solved and DPO lost, side by side:" if change["examples"] else "."))
for example in change["examples"]:
    print(f"\n{example['task']}\n  SFT: {example['sft_masked']!r}\n  DPO: {example['dpo']!r}")

# %% [markdown]
# ## The reward model (Bradley–Terry)
#
# A scalar head on the SFT model, trained so that $\max\ \mathbb{E}\,\log\sigma\big(r(x,y_w) - r(x,y_l)\big)$.
# The head reads the last token, so to rank `7` above `8` for *What is 5 + 2?* the model has to know the sum: a
# reward model only judges what its backbone knows — and where the SFT model does not know a sum, the reward model
# must learn it from the pairs themselves. On the tiny world, plain Bradley–Terry ranked the sums at chance, whatever
# its length (docs/LOG.md): the pairwise loss says *which* answer is better but never *what* a sum is. So, as in
# GRM (Yang et al. 2024), the loss adds the chosen answer's negative log-likelihood through the tied embeddings,
# $-\log\sigma(r_w - r_l) + \alpha\,\mathrm{NLL}(y_w)$ (`cfg.reward.nll_weight`): the backbone keeps learning the
# answers while the head learns to rank them (docs/LOG.md). The held-out accuracy of this run is printed below.

# %%
print(inspect.getsource(H.bradley_terry_loss))
print(inspect.getsource(H.make_reward_loss))

# %%
print(H.describe_config(cfg.reward))
rm = H.run_reward_model(cfg, start="sft_masked")
print(f"reward model held-out pairwise accuracy: {rm['accuracy']:.3f}  (saved to {rm.dir})")
print(*H.target_lines(cfg, {"reward_model/accuracy": rm["accuracy"]}), sep="\n")

# %%
# when did it learn, and what? held-out accuracy during training, and at the end by task family
print("by step:", {h["step"]: round(h["eval/pairwise_accuracy"], 2) for h in rm.history if h["step"] % 100 == 0})
print("by family:", {source: round(acc, 2) for source, acc in rm["accuracy_by_source"].items()})

# %%
table["reward_model_accuracy"] = [None, rm["accuracy"]]
paths = H.write_summary(table, cfg, "dpo")
print("written:", *paths.values(), sep="\n  ")


# %% [markdown]
# ## Try next
# 1. Set `cfg.dpo.sft_weight = 0` (plain DPO) and rerun: expect the chosen answers' log-probs to fall with the
#    rejected ones (`logps/chosen` in TensorBoard) and exact match to drop.
# 2. Halve and double `cfg.dpo.beta`: a small β lets the policy move far from SFT (bigger margins, more forgetting);
#    a large β keeps it close.
# 3. Set `cfg.dpo.countdown_share = 0` (Countdown pairs only as many as sampled): watch the Countdown accuracy that
#    DPO keeps.
# 4. Set `cfg.dpo.loss_type = "ipo"` (Azar et al. 2023, the 2026 course's preference stage): the loss
#    (h − 1/(2β))², with h the log-ratio margin, stops pushing a pair once its margin reaches 1/(2β) — watch
#    `rewards/margins` level off instead of growing.
#
# **Where the code lives:** `helpers/dpo.py` (`dpo_loss`, `make_dpo_loss`, `run_dpo`), `helpers/preference.py`
# (pairs, `countdown_onpolicy_pairs`, `balance_tracks`, `pair_logps`), `helpers/reward_model.py`
# (`bradley_terry_loss`, `run_reward_model`), the loop in `helpers/training.py`.
