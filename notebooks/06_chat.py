# %% [markdown]
# # 06 · Chat with what you trained
#
# **Purpose.** Talk to any checkpoint: pick it from the dropdown (or give the path of any Hugging Face model
# directory), set a system prompt, temperature, top_p and the answer length; tokens stream in as they are generated.
# Stop interrupts generation, Clear starts over. The reply is generated in a background thread, so Stop, Clear and
# switching checkpoints work while it streams; the status line above the conversation says what is happening. Then
# compare two checkpoints on the same prompt.
# **Inputs.** `checkpoints/<profile>/…`. **Outputs.** none.
# **Run time.** tiny ≈ 10 s · smoke ≈ 10 s · qwen ≈ 1 min. From a terminal:
# `python -m helpers chat --model checkpoints/tiny/sft_masked` (or add a prompt in quotes for a single answer).

# %%
import os
import sys
sys.path.insert(0, os.path.abspath(".."))   # the helpers package lives at the repository root
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = 0
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %%
widget, controls = H.build_chat_widget(cfg)
widget

# %% [markdown]
# The widget's logic lives in `H.ChatSession`; here one exchange is driven programmatically, as a user would.
# The reply streams in a background thread; `wait()` lets this cell print it once it is complete.

# %%
controls["message"].value = "What is 3 + 4?"     # what typing it and pressing Enter does
controls["session"].wait()
for turn in controls["session"].history:
    print(f"{turn['role']}: {turn['content']!r}")

# %% [markdown]
# ## Side by side: the same prompt, two checkpoints

# %%
for prompt in ["What is the last letter of garden?", "Which number is the largest: 3, 8, 5?"]:
    print(prompt, H.side_by_side(cfg, prompt, names=("sft_masked", "sft_unmasked")))
