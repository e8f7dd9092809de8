# ---
# jupyter:
#   run_time_s:
#     tiny: 180
#     smoke: 15
# ---

# %% [markdown]
# # 00 · Data and the base model
#
# **Purpose.** Build (tiny, smoke) or download (qwen) every dataset of the pipeline, build the base model every
# stage starts from, and look at exactly which tokens carry loss in masked and unmasked SFT.
#
# **Inputs.** Nothing (tiny, smoke: generated offline) · the Hugging Face hub (qwen).
# **Outputs.** `data/<profile>/<name>/{train,test}.jsonl` + `manifest.json`; `checkpoints/<profile>/initial/`.
# **Run time.** minutes on a laptop CPU in tiny, most of it pre-training the base model; the download in qwen.
# `make demo` prints each notebook's elapsed time, and estimates the rest from the times in the notebooks' metadata.

# %%
import os
import inspect
import helpers as H
H.quiet_output()          # Hugging Face's own progress bars and info logs off

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = cfg.data.seed
H.seed_everything(SEED)
print(f"profile={cfg.profile}  seed={SEED}  outputs under {H.output_root()}")

# %% [markdown]
# ## 1. Datasets
#
# Three record types feed the pipeline: **conversations** (SFT), **preference pairs** (prompt / chosen / rejected,
# for DPO and the reward model) and **verifiable prompts** (Countdown: `target`, `nums`, scored by a rule).
# In the `qwen` profile they come from smol-smoltalk, ultrafeedback_binarized, cog_behav_all_strategies (WarmStart),
# Countdown-Tasks-3to4 and alpaca-cleaned. In `tiny`, a small offline world with exact answers stands in for them:
# instruction tasks (sums, maxima, letters of words, …), preference pairs (chosen = correct, rejected = a plausible
# wrong answer), Countdown tasks proven solvable by a solver, and WarmStart completions written by that solver.
# Every split is fixed and disjoint: a test prompt never appears in training. Each dataset gets a manifest with its
# source, split sizes, filters, dropped rows and a content hash.

# %%
import json
import pandas as pd
folders = H.prepare_data(cfg)
manifests = {name: json.loads((folder / "manifest.json").read_text()) for name, folder in folders.items()}
pd.DataFrame([{"dataset": n, **m["splits"], "dropped": sum(m["dropped"].values()), "hash": m["content_hash"],
               "source": m["source"]} for n, m in manifests.items()])

# %%
for name in [H.dataset_name(cfg, "instructions"), "warmstart"]:
    row = H.load_split(cfg, name, "train")[0]
    print(f"--- {name}:")
    print(json.dumps(row["messages"], indent=1)[:800])
preference_name = H.dataset_name(cfg, "preferences")
print("--- preference pair:", H.load_split(cfg, preference_name, "train")[0])
print("--- countdown task:", H.load_split(cfg, "countdown", "test")[0])

# %% [markdown]
# ## 2. Countdown: prompt, solver and reward live together
#
# The TinyZero prompt asks for reasoning in `<think>` and the expression in `<answer>`. The reward is tiered:
# **0** without an `<answer>`, **0.1** for a present but wrong answer, **1** when every number is used exactly once
# and the value equals the target. Model output is untrusted input: the expression is parsed with `ast` and only
# `+ − × ÷`, parentheses and non-negative integers are evaluated — never `eval`.

# %%
task = H.load_split(cfg, "countdown", "test")[0]
completion = H.countdown_completion(task["nums"], task["target"])
print(H.countdown_prompt(task["nums"], task["target"], cfg.data.countdown_format)[-1]["content"], "\n")
for text in [completion, "I don't know", "<answer> 1 + 2 </answer>", "<answer> __import__('os') </answer>"]:
    print(f"{H.countdown_reward(text, task['target'], task['nums']):.1f}  ←  {text!r}")

# %% [markdown]
# ## 3. The base model
#
# `tiny`: a byte-level BPE tokenizer is trained on the tiny world (Qwen's special tokens `<|endoftext|>`,
# `<|im_start|>`, `<|im_end|>` and its ChatML template), then a Qwen2-architecture model of under 2M parameters
# is pre-trained briefly on *plain text* of the world — its facts, never the chat format, never a test prompt.
# It plays the untouched base model `Qwen/Qwen2.5-0.5B`, which `qwen` saves as it is.

# %%
initial = H.build_initial_model(cfg)
tokenizer, model = H.load_tokenizer(initial), H.load_model(initial)
print(f"{initial}: {H.count_parameters(model):,} parameters, vocabulary {len(tokenizer)}, "
      f"eos={tokenizer.eos_token!r}, pad={tokenizer.pad_token!r}")

# %%
import matplotlib.pyplot as plt
names = [H.dataset_name(cfg, "instructions"), "warmstart"]
fig, axes = plt.subplots(1, len(names), figsize=(11, 3.5))
for ax, name in zip(axes, names):
    rows = H.load_split(cfg, name, "train")[:2000]
    lengths = [len(tokenizer(H.render_chat(tokenizer, r["messages"]))["input_ids"]) for r in rows]
    ax.hist(lengths, bins=40)
    ax.set(title=f"{name}: tokens per conversation", xlabel="tokens", ylabel="rows")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Which tokens carry loss: masked vs unmasked
#
# SFT minimises $\mathcal{L} = -\frac{1}{\sum_t w_t}\sum_t w_t \log p_\theta(x_t \mid x_{<t})$.
# **Masked**: $w_t = 1$ on the assistant's tokens (its text and the closing `<|im_end|>`, so it learns to stop) and
# $0$ on everything up to and including `<|im_start|>assistant\n` — `labels[:len(prompt_ids)] = -100`.
# **Unmasked**: $w_t = 1$ everywhere. In between, the *prompt-loss weight* sets $w_t$ on prompt tokens.
# One render path builds all three; only the argument differs:

# %%
print(inspect.getsource(H.build_sft_example))

# %%
messages = H.load_split(cfg, H.dataset_name(cfg, "instructions"), "train")[0]["messages"]
for weight in (0.0, 1.0, 0.1):
    example = H.build_sft_example(tokenizer, messages, 256, prompt_loss_weight=weight)
    print(f"prompt_loss_weight={weight}: [trained] tokens")
    print(H.show_mask(tokenizer, example), "\n")

# %% [markdown]
# The same example with the real Qwen2.5 tokenizer (when `../shared/qwen2.5-tokenizer` is present):

# %%
from pathlib import Path
qwen_dir = Path(H.REPO_ROOT).parent / "shared" / "qwen2.5-tokenizer"
if qwen_dir.exists():
    qwen_tok = H.load_tokenizer(qwen_dir)
    example = H.build_sft_example(qwen_tok, messages, 256)
    print(H.show_mask(qwen_tok, example))
    print("ids:", example["input_ids"][:6], "…", example["input_ids"][-4:])
else:
    print("real Qwen tokenizer not found; skipped")

# %% [markdown]
# ## 5. Domain vocabulary: words the tokenizer has never seen
#
# Invented or domain words ("mediventricular", "neurogenix", "X-23S") split into many tokens. Adding them as tokens
# makes each one token; its new embedding row starts at the mean of the trained rows (Qwen's table has spare,
# never-trained rows, so a new token may need no resize at all — and still needs initialising). Measured on a copy:
# the saved tokenizer and model are not changed here.

# %%
import copy
import pandas as pd
words = list(cfg.new_tokens)
print(pd.DataFrame(H.token_fragmentation(tokenizer, words)).to_string(index=False))
tok_copy, model_copy = copy.deepcopy(tokenizer), copy.deepcopy(model)
rows_before = model_copy.get_input_embeddings().weight.shape[0]
added = H.add_new_tokens(tok_copy, model_copy, words)
print(f"\nadded {added} tokens; embedding rows {rows_before} -> {model_copy.get_input_embeddings().weight.shape[0]}")
print(pd.DataFrame(H.token_fragmentation(tok_copy, words)).to_string(index=False))
if qwen_dir.exists():
    print("\nreal Qwen tokenizer:")
    print(pd.DataFrame(H.token_fragmentation(qwen_tok, words)).to_string(index=False))

# %% [markdown]
# Does the model learn to *produce* the new words? A short LoRA run whose new embedding rows are trainable
# (`trainable_token_indices`) on a few conversations that answer with them, checked on phrasings it never saw —
# then merged, saved and reloaded (the tied-embedding case where a naive merge would break the output head):

# %%
demo = H.demo_new_tokens(cfg, steps=cfg.new_token_steps)
print(f"added {demo['added']} tokens; each now one token: {all(demo['single_token'])}")
print(pd.DataFrame({"held-out phrasing": demo["prompts"], "target": demo["words"], "before": demo["before"],
                    "after training": demo["after"], "after merge + reload": demo["after_merge_and_reload"]}
                   ).to_string(index=False))
right = sum(a == w for a, w in zip(demo["after"], demo["words"]))
swapped = sum(a != w and a in demo["words"] for a, w in zip(demo["after"], demo["words"]))
same = demo["after"] == demo["after_merge_and_reload"]
print(f"\nWhat we see: {right} of {len(demo['words'])} held-out phrasings answered with the new word after "
      f"{cfg.new_token_steps} steps; merge → save → reload {'kept every answer' if same else 'CHANGED answers'}.")
if swapped:      # it produces the new words, but mixes up which question each answers
    print(f"{swapped} miss(es) answer with *another* new word: the words themselves were learned, not which question "
          "each one answers — more phrasings per word would teach that (exercise 3).")
elif right < len(demo["words"]):
    print("The misses are other text: the new rows were not learned well enough yet — try more steps (exercise 3).")


# %% [markdown]
# ## Try next
# 1. Change `cfg.data.countdown_max_value` (or the number of Countdown numbers) and rebuild: how many tasks stay
#    solvable, and how long do the WarmStart completions get?
# 2. Show the mask of a Countdown row with `prompt_loss_weight=0.5`: which tokens carry half a weight?
# 3. Add a fourth domain word to `cfg.new_tokens` and rerun section 5 with twice the steps.
#
# **Where the code lives:** `helpers/data.py` (`prepare_data`, manifests, converters), `helpers/tiny_world.py`,
# `helpers/countdown.py` (tasks, solver, prompt), `helpers/formatting.py` (`build_sft_example`, `show_mask`,
# `encode_chat`), `helpers/sft.py` (`build_initial_model`), `helpers/vocab.py` (new tokens).
