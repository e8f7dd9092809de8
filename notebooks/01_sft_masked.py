# ---
# jupyter:
#   run_time_s:
#     tiny: 90
#     smoke: 15
#     qwen: 3600
# ---

# %% [markdown]
# # 01 · SFT with loss on the response only ("masked")
#
# **Purpose.** Fine-tune the base model on conversations with the loss on the assistant's tokens only.
# **Inputs.** `checkpoints/<profile>/initial`, `data/<profile>/…` (run `00_data` first).
# **Outputs.** `checkpoints/<profile>/sft_masked/`, `tensorboard_events/<profile>/sft_masked/`.
# **Run time.** a minute or two on a laptop CPU in tiny; about an hour on one GPU in qwen.
# `make demo` prints each notebook's elapsed time, and estimates the rest from the times in the notebooks' metadata.
#
# `02_sft_unmasked` runs the very same training with one argument changed; its second half compares them fairly.

# %%
import os
import inspect
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = cfg.sft.seed
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %% [markdown]
# ## The loss
#
# $\mathcal{L}(\theta) = \dfrac{\sum_t w_t\,\mathrm{CE}(\text{logits}_t, x_{t+1})}{\sum_t w_t}$, with $w_t = 1$ on
# response tokens and the prompt-loss weight (here **0**) elsewhere. The sum runs over *all* micro-batches of an
# optimizer step and is divided once by their total trained tokens — so gradient accumulation gives the same gradient
# as one big batch.

# %%
print(inspect.getsource(H.sft_loss))

# %% [markdown]
# ## Train
#
# The one training loop (`H.train`): AdamW, warmup + cosine, clipping, dynamic padding with length-grouped batches,
# periodic held-out evaluation, TensorBoard (`make tensorboard`), and atomic resumable checkpoints. The run's config
# is saved next to the checkpoint (`run_config.json`).

# %%
print(H.describe_config(cfg.sft))
result = H.run_sft(cfg, "sft_masked", prompt_loss_weight=0.0)

# %%
import matplotlib.pyplot as plt
history = result.history
plt.plot([h["step"] for h in history], [h["eval/response_loss"] for h in history], marker="o")
H.log_axis(plt.gca())   # step 0 (the base model, 10 nats or more) would squash the rest of the curve on a linear axis
plt.xlabel("step")
plt.ylabel("held-out response-only loss (nats/token, log scale)")
plt.title("masked SFT")
plt.show()

# %% [markdown]
# ## Did it learn? The base model against the masked SFT model, on held-out data

# %%
table = H.evaluate_checkpoints(cfg, ["initial", "sft_masked"])
for theme, part in H.stage_tables(table).items():
    print(f"{theme}\n{part.to_string(index=False)}\n")
base, sft = table.iloc[0], table.iloc[1]
quality = H.quality_metric(cfg)

# %% [markdown]
# ### What we see

# %%
print(f"Held-out response-only loss {'fell' if sft.response_loss < base.response_loss else 'did not fall'}: "
      f"{base.response_loss:.2f} → {sft.response_loss:.2f} nats per token (perplexity {base.response_ppl:,.1f} → "
      f"{sft.response_ppl:,.1f}).")
# each change with its verdict: a sign test on the held-out tasks gained and lost (their saved greedy answers)
print(H.stage_change(cfg, table.set_index("model").to_dict("index"), "initial", "sft_masked", quality) + ".")
print(f"Mean Countdown reward {sft.countdown_reward:.3f}"
      + (" — above the accuracy: some answers have the format (0.1) without the right equation."
         if sft.countdown_reward > sft.countdown_accuracy else "."))
print(f"The whole-sequence loss ({sft.sequence_loss:.2f}) stays high: the prompts were never trained — the point of "
      "masking, and the question of 02.")


# %% [markdown]
# ## Try next
# 1. Halve `cfg.sft.max_steps`: where does the held-out curve stand, and is Countdown learned yet?
# 2. `cfg.sft.countdown_share = 0.2`: fewer WarmStart rows — what happens to Countdown accuracy and exact match?
# 3. `cfg.sft.lr = 3e-3`: a faster start, or a loss spike (the loop stops a run that diverges)?
#
# **Where the code lives:** `helpers/sft.py` (`sft_loss`, `sft_collate`, `run_sft`, `evaluate_loss`),
# `helpers/training.py` (the one loop), `helpers/batching.py` (length-grouped batches),
# `helpers/checkpoints.py` (atomic, resumable saves), `helpers/scoring.py` (held-out measures).
