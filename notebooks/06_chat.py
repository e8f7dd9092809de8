# ---
# jupyter:
#   run_time_s:
#     tiny: 10
#     smoke: 10
#     qwen: 60
# ---

# %% [markdown]
# # 06 · Chat with what you trained
#
# **Purpose.** Talk to any checkpoint: pick it from the dropdown (or give the path of any Hugging Face model
# directory), set a system prompt, temperature, top_p and the answer length; tokens stream in as they are generated.
# Stop interrupts generation, Clear starts over. The reply is generated in a background thread, so Stop, Clear and
# switching checkpoints work while it streams; the status line above the conversation says what is happening. Then
# compare two checkpoints on the same prompt.
# **Inputs.** `checkpoints/<profile>/…`. **Outputs.** none.
# **Run time.** seconds to load a model; then as long as you chat. From a terminal:
# `python -m helpers chat --model checkpoints/tiny/sft_masked` (or add a prompt in quotes for a single answer).

# %%
import os
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
reply = controls["session"].history[-1]["content"] if controls["session"].history else ""
if cfg.data.world == "tiny":        # the tiny world has one right answer; say when the model misses it
    print("\nWhat we see:", "the right answer." if H.exact_match(reply, "7") else
          f"a wrong answer ({reply!r}; 3 + 4 = 7). The tiny model gets about as many held-out sums right as its "
          "exact match in 05 says — a model of under 2M parameters is often wrong, and a chat makes that visible.")

# %% [markdown]
# ## Side by side: the same prompt, two checkpoints

# %%
# the tiny world knows the right answers: each reply is marked right or wrong (other worlds: shown as they are)
for prompt, right in [("What is the last letter of garden?", "n"), ("Which number is the largest: 3, 8, 5?", "8")]:
    print(prompt)
    for name, reply in H.side_by_side(cfg, prompt, names=("sft_masked", "sft_unmasked")).items():
        mark = ("right" if H.exact_match(reply, right) else f"WRONG (the answer is {right})") \
            if cfg.data.world == "tiny" else ""
        print(f"  {name:>12}: {reply!r}  {mark}")


# %% [markdown]
# ## Try next
# 1. Switch the widget to `checkpoints/<profile>/initial` and ask the same question: what does a model without SFT
#    do with a chat turn?
# 2. Raise the temperature to 1.2 and ask three times: how often is the answer still right?
# 3. Type a message that contains `<|im_end|>`: it stays text (`encode_chat`), the model sees no extra turn.
#
# **Where the code lives:** `helpers/chat.py` (`ChatSession`, `build_chat_widget`, `side_by_side`, `chat_cli`),
# `helpers/formatting.py` (`encode_chat`), `helpers/generation.py` (streaming and stop tokens).
