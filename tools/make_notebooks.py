"""Writes notebooks/*.ipynb from the cell lists below (clean: no outputs). Edit here, then run:

    .venv/bin/python tools/make_notebooks.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

SETUP = '''import os, sys, inspect
sys.path.insert(0, os.path.abspath(".."))   # helpers.py lives at the repository root
import helpers as H

PROFILE = os.environ.get("PROFILE", "tiny")  # tiny (CPU, offline) · smoke (tests) · qwen (GPU, hub)
cfg = H.get_config(PROFILE)
SEED = {seed}
H.seed_everything(SEED)
print(f"profile={{cfg.profile}}  seed={{SEED}}  outputs under {{H.output_root()}}")'''


def md(text):
    return new_markdown_cell(text.strip())


def code(text):
    return new_code_cell(text.strip())


NOTEBOOKS = {}

NOTEBOOKS["00_data"] = [
    md("""
# 00 · Data and the base model

**Purpose.** Build (tiny, smoke) or download (qwen) every dataset of the pipeline, build the base model every
stage starts from, and look at exactly which tokens carry loss in masked and unmasked SFT.

**Inputs.** Nothing (tiny, smoke: generated offline) · the Hugging Face hub (qwen).
**Outputs.** `data/<profile>/<name>/{train,test}.jsonl` + `manifest.json`; `checkpoints/<profile>/initial/`.
**Run time.** tiny ≈ 2 min on 2 CPU cores · smoke ≈ 15 s · qwen: download time.
"""),
    code(SETUP.format(seed="cfg.data.seed")),
    md("""
## 1. Datasets

Three record types feed the pipeline: **conversations** (SFT), **preference pairs** (prompt / chosen / rejected,
for DPO and the reward model) and **verifiable prompts** (Countdown: `target`, `nums`, scored by a rule).
In the `qwen` profile they come from smol-smoltalk, ultrafeedback_binarized, cog_behav_all_strategies (WarmStart),
Countdown-Tasks-3to4 and alpaca-cleaned. In `tiny`, a small offline world with exact answers stands in for them:
instruction tasks (sums, maxima, letters of words, …), preference pairs (chosen = correct, rejected = a plausible
wrong answer), Countdown tasks proven solvable by a solver, and WarmStart completions written by that solver.
Every split is fixed and disjoint: a test prompt never appears in training. Each dataset gets a manifest with its
source, split sizes, filters, dropped rows and a content hash.
"""),
    code('''
import json, pandas as pd
folders = H.prepare_data(cfg)
manifests = {name: json.loads((folder / "manifest.json").read_text()) for name, folder in folders.items()}
pd.DataFrame([{"dataset": n, **m["splits"], "dropped": sum(m["dropped"].values()), "hash": m["content_hash"],
               "source": m["source"]} for n, m in manifests.items()])
'''),
    code('''
for name in ["instructions" if cfg.profile != "qwen" else "smoltalk", "warmstart"]:
    row = H.load_split(cfg, name, "train")[0]
    print(f"--- {name}:"); print(json.dumps(row["messages"], indent=1)[:800])
print("--- preference pair:", H.load_split(cfg, "preferences" if cfg.profile != "qwen" else "ultrafeedback", "train")[0])
print("--- countdown task:", H.load_split(cfg, "countdown", "test")[0])
'''),
    md("""
## 2. Countdown: prompt, solver and reward live together

The TinyZero prompt asks for reasoning in `<think>` and the expression in `<answer>`. The reward is tiered:
**0** without an `<answer>`, **0.1** for a present but wrong answer, **1** when every number is used exactly once
and the value equals the target. Model output is untrusted input: the expression is parsed with `ast` and only
`+ − × ÷`, parentheses and non-negative integers are evaluated — never `eval`.
"""),
    code('''
task = H.load_split(cfg, "countdown", "test")[0]
completion = H.countdown_completion(task["nums"], task["target"])
print(H.countdown_prompt(task["nums"], task["target"])[1]["content"], "\\n")
for text in [completion, "I don't know", "<answer> 1 + 2 </answer>", "<answer> __import__('os') </answer>"]:
    print(f"{H.countdown_reward(text, task['target'], task['nums']):.1f}  ←  {text!r}")
'''),
    md("""
## 3. The base model

`tiny`: a byte-level BPE tokenizer is trained on the tiny world (Qwen's special tokens `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` and its ChatML template), then a Qwen2-architecture model of a few million parameters
is pre-trained briefly on *plain text* of the world — its facts, never the chat format, never a test prompt.
It plays the untouched base model `Qwen/Qwen2.5-0.5B`, which `qwen` saves as it is.
"""),
    code('''
initial = H.build_initial_model(cfg)
tokenizer, model = H.load_tokenizer(initial), H.load_model(initial)
print(f"{initial}: {H.count_parameters(model):,} parameters, vocabulary {len(tokenizer)}, "
      f"eos={tokenizer.eos_token!r}, pad={tokenizer.pad_token!r}")
'''),
    code('''
import matplotlib.pyplot as plt
names = ["instructions" if cfg.profile != "qwen" else "smoltalk", "warmstart"]
fig, axes = plt.subplots(1, len(names), figsize=(11, 3.5))
for ax, name in zip(axes, names):
    lengths = [len(tokenizer(H.render_chat(tokenizer, r["messages"]))["input_ids"]) for r in H.load_split(cfg, name, "train")[:2000]]
    ax.hist(lengths, bins=40); ax.set(title=f"{name}: tokens per conversation", xlabel="tokens", ylabel="rows")
plt.tight_layout(); plt.show()
'''),
    md(r"""
## 4. Which tokens carry loss: masked vs unmasked

SFT minimises $\mathcal{L} = -\frac{1}{\sum_t w_t}\sum_t w_t \log p_\theta(x_t \mid x_{<t})$.
**Masked**: $w_t = 1$ on the assistant's tokens (its text and the closing `<|im_end|>`, so it learns to stop) and
$0$ on everything up to and including `<|im_start|>assistant\n` — `labels[:len(prompt_ids)] = -100`.
**Unmasked**: $w_t = 1$ everywhere. In between, the *prompt-loss weight* sets $w_t$ on prompt tokens.
One render path builds all three; only the argument differs:
"""),
    code('print(inspect.getsource(H.build_sft_example))'),
    code('''
messages = H.load_split(cfg, "instructions" if cfg.profile != "qwen" else "smoltalk", "train")[0]["messages"]
for weight in (0.0, 1.0, 0.1):
    example = H.build_sft_example(tokenizer, messages, 256, prompt_loss_weight=weight)
    print(f"prompt_loss_weight={weight}: [trained] tokens"); print(H.show_mask(tokenizer, example), "\\n")
'''),
    md("The same example with the real Qwen2.5 tokenizer (when `../shared/qwen2.5-tokenizer` is present):"),
    code('''
from pathlib import Path
qwen_dir = Path(H.REPO_ROOT).parent / "shared" / "qwen2.5-tokenizer"
if qwen_dir.exists():
    qwen_tok = H.load_tokenizer(qwen_dir)
    example = H.build_sft_example(qwen_tok, messages, 256)
    print(H.show_mask(qwen_tok, example))
    print("ids:", example["input_ids"][:6], "…", example["input_ids"][-4:])
else:
    print("real Qwen tokenizer not found; skipped")
'''),
]

NOTEBOOKS["00_data"] += [
    md("""
## 5. Domain vocabulary: words the tokenizer has never seen

Invented or domain words ("mediventricular", "neurogenix", "X-23S") split into many tokens. Adding them as tokens
makes each one token; its new embedding row starts at the mean of the trained rows (Qwen's table has spare,
never-trained rows, so a new token may need no resize at all — and still needs initialising). Measured on a copy:
the saved tokenizer and model are not changed here.
"""),
    code('''
import copy, pandas as pd
words = list(cfg.new_tokens)
print(pd.DataFrame(H.token_fragmentation(tokenizer, words)).to_string(index=False))
tok_copy, model_copy = copy.deepcopy(tokenizer), copy.deepcopy(model)
rows_before = model_copy.get_input_embeddings().weight.shape[0]
added = H.add_new_tokens(tok_copy, model_copy, words)
print(f"\\nadded {added} tokens; embedding rows {rows_before} -> {model_copy.get_input_embeddings().weight.shape[0]}")
print(pd.DataFrame(H.token_fragmentation(tok_copy, words)).to_string(index=False))
if qwen_dir.exists():
    print("\\nreal Qwen tokenizer:"); print(pd.DataFrame(H.token_fragmentation(qwen_tok, words)).to_string(index=False))
'''),
]

NOTEBOOKS["00_data"] += [
    md("""
Does the model learn to *produce* the new words? A short LoRA run whose new embedding rows are trainable
(`trainable_token_indices`) on a few conversations that answer with them, checked on phrasings it never saw —
then merged, saved and reloaded (the tied-embedding case where a naive merge would break the output head):
"""),
    code('''
demo = H.demo_new_tokens(cfg)
for key in ["added", "single_token", "before", "after", "after_merge_and_reload", "correct_after"]:
    print(f"{key:>24}: {demo[key]}")
'''),
]

NOTEBOOKS["01_sft_masked"] = [
    md("""
# 01 · SFT with loss on the response only ("masked")

**Purpose.** Fine-tune the base model on conversations with the loss on the assistant's tokens only.
**Inputs.** `checkpoints/<profile>/initial`, `data/<profile>/…` (run `00_data` first).
**Outputs.** `checkpoints/<profile>/sft_masked/`, `tensorboard_events/<profile>/sft_masked/`.
**Run time.** tiny ≈ 2.5 min on 2 CPU cores · smoke ≈ 15 s · qwen ≈ 1 h on one GPU.

`02_sft_unmasked` runs the very same training with one argument changed; its second half compares them fairly.
"""),
    code(SETUP.format(seed="cfg.sft.seed")),
    md(r"""
## The loss

$\mathcal{L}(\theta) = \dfrac{\sum_t w_t\,\mathrm{CE}(\text{logits}_t, x_{t+1})}{\sum_t w_t}$, with $w_t = 1$ on
response tokens and the prompt-loss weight (here **0**) elsewhere. The sum runs over *all* micro-batches of an
optimizer step and is divided once by their total trained tokens — so gradient accumulation gives the same gradient
as one big batch.
"""),
    code('print(inspect.getsource(H.sft_loss))'),
    md("""
## Train

The one training loop (`H.train`): AdamW, warmup + cosine, clipping, dynamic padding with length-grouped batches,
periodic held-out evaluation, TensorBoard (`make tensorboard`), and atomic resumable checkpoints. The run's config
is saved next to the checkpoint (`run_config.json`).
"""),
    code('''
print(cfg.sft)
result = H.run_sft(cfg, "sft_masked", prompt_loss_weight=0.0)
'''),
    code('''
import matplotlib.pyplot as plt
history = result["history"]
plt.plot([h["step"] for h in history], [h["eval/response_loss"] for h in history], marker="o")
plt.xlabel("step"); plt.ylabel("held-out response-only loss"); plt.title("masked SFT"); plt.show()
'''),
    md("## Did it learn? The base model against the masked SFT model, on held-out data"),
    code('''
table = H.evaluate_checkpoints(cfg, ["initial", "sft_masked"])
print(table.to_string(index=False))
base, sft = table.iloc[0], table.iloc[1]
quality = "exact_match" if "exact_match" in table else "rouge_l"
print(f"\\nheld-out response-only loss: base {base.response_loss:.3f} → masked SFT {sft.response_loss:.3f}")
print(f"held-out {quality}: base {base[quality]:.3f} → masked SFT {sft[quality]:.3f}")
'''),
]

NOTEBOOKS["02_sft_unmasked"] = [
    md("""
# 02 · SFT with loss on the whole sequence ("unmasked"), and the fair comparison

**Purpose.** Train exactly like `01_sft_masked` but with the loss on every token; then compare both runs on the
same held-out measures, and sweep the prompt-loss weight over several seeds to tell a real difference from noise.
**Inputs.** `checkpoints/<profile>/initial`, `checkpoints/<profile>/sft_masked` (run `00`, `01` first).
**Outputs.** `checkpoints/<profile>/sft_unmasked/`, `assets/Comparison.png`, `assets/Dataset_results.xlsx`,
`evaluation_results/<profile>/sft_comparison/…` and `…/sft_sweep/…` (csv/md/txt/xlsx).
**Run time.** tiny ≈ 6 min on 2 CPU cores (2 min training + the sweep) · smoke ≈ 30 s · qwen ≈ 1 h per run.
"""),
    code(SETUP.format(seed="cfg.sft.seed")),
    md("Identical settings to `01`, except `prompt_loss_weight=1.0`:"),
    code('result = H.run_sft(cfg, "sft_unmasked", prompt_loss_weight=1.0)'),
    md("""
## A fair comparison

The two training curves are **not** comparable: the masked loss averages response tokens only, the unmasked one
averages every token (prompts are easier or harder to predict than answers). So both models are measured on the
**same** held-out data with the **same** measures: response-only loss and perplexity, whole-sequence loss, and the
quality of generated answers (exact match on the instruction tasks, the rule-based Countdown score).
"""),
    code('''
stamp = H.timestamp()
final = H.evaluate_checkpoints(cfg, ["initial", "sft_masked", "sft_unmasked"])
histories = {name: H.load_history(H.out_path("checkpoints", cfg, name)) for name in ["sft_masked", "sft_unmasked"]}
H.plot_sft_comparison(histories, final, H.assets_dir(cfg) / "Comparison.png")
H.write_dataset_results(final, H.assets_dir(cfg) / "Dataset_results.xlsx")
paths = H.write_summary(final, cfg, "sft_comparison", stamp)
print(final.to_string(index=False)); print("\\nwritten:", *paths.values(), sep="\\n  ")
'''),
    code('''
from IPython.display import Image, display
display(Image(filename=str(H.assets_dir(cfg) / "Comparison.png")))
'''),
    md("""
## Beyond masked vs unmasked: the prompt-loss weight as a knob, and seed noise

The weight is continuous: 0 is masked, 1 unmasked; Huerta-Enochian & Ko (2024) found small values such as 0.01–0.1
best for short completions. Each setting is trained with several seeds (shorter runs, `cfg.sft.sweep_steps`), so
a difference between settings is reported only when it exceeds the spread across seeds.
"""),
    code('''
runs, summary = H.run_prompt_weight_sweep(cfg)
H.write_summary(runs, cfg, "sft_sweep", stamp)
H.write_summary(summary, cfg, "sft_sweep_mean_std", stamp)
print(summary.to_string(index=False))
'''),
    code('''
weights = list(cfg.sft.sweep_weights)
for metric in ["response_loss", "exact_match" if "exact_match" in runs else "rouge_l", "countdown_reward"]:
    for w in weights[1:]:
        print(H.seed_noise_verdict(runs, metric, weights[0], w))
'''),
]

NOTEBOOKS["03_dpo"] = [
    md("""
# 03 · Preference learning: DPO, on-policy Countdown pairs, and a reward model

**Purpose.** Teach the SFT model to prefer the chosen answer of a pair over the rejected one with Direct Preference
Optimization, and train a Bradley–Terry reward model for RLOO's instruction track and the evaluation's judge.
**Inputs.** `checkpoints/<profile>/sft_masked` (run `00`, `01` first), preference pairs, Countdown prompts.
**Outputs.** `checkpoints/<profile>/dpo/`, `checkpoints/<profile>/reward_model/`,
`evaluation_results/<profile>/dpo/…` (csv/md/txt/xlsx), TensorBoard under `tensorboard_events/<profile>/dpo/`.
**Run time.** tiny ≈ 6 min on 2 CPU cores · smoke ≈ 15 s · qwen ≈ 1 h on one GPU.
"""),
    code(SETUP.format(seed="cfg.dpo.seed")),
    md(r"""
## The DPO loss (Rafailov et al. 2023)

$$\mathcal{L}_\text{DPO} = -\log\sigma\Big(\beta\big[(\log\pi_\theta(y_w|x) - \log\pi_\text{ref}(y_w|x)) -
(\log\pi_\theta(y_l|x) - \log\pi_\text{ref}(y_l|x))\big]\Big)$$

$\log\pi(y|x)$ sums the log-probabilities of the **response tokens only** — the same mask as masked SFT. The
implicit reward of a response is $\beta(\log\pi_\theta - \log\pi_\text{ref})$. The reference is the SFT model; its
log-probs are computed **once** before training, so training holds a single model in memory.
On the tiny model, plain DPO pushed the likelihood of *both* answers down and cost 10 points of exact match, so
`cfg.dpo.sft_weight` adds $\alpha\cdot$NLL of the chosen answer (the RPO variant, Pang et al. 2024); set it to 0
for plain DPO.
Chosen and rejected share their prompt, so `pair_sequence_logps` runs it once and repeats its KV cache for
the two answers (as RLOO does for its k samples, `04`): the same numbers as the two full sequences (tested).
"""),
    code('print(inspect.getsource(H.dpo_loss))'),
    code('''
import math, torch
loss, _, _ = H.dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1)
print(f"equal log-probs: loss = {loss.item():.4f} = log 2 = {math.log(2):.4f}")
'''),
    md("""
## On-policy Countdown pairs

As the course project does: sample two completions per Countdown prompt from the SFT model (temperature > 0),
label the better one *chosen* with the rule-based reward, and drop ties. They join the preference pairs.
"""),
    code('''
print(cfg.dpo)
result = H.run_dpo(cfg, reference="sft_masked")
print("on-policy Countdown pairs:", result["onpolicy"])
print("held-out preference accuracy before DPO (SFT model, its own log-probs):", result["before"]["logp_accuracy"])
print("held-out preference accuracy after DPO (implicit reward):", result["after"]["reward_accuracy"])
after, before = result["after"]["reward_accuracy"], result["before"]["logp_accuracy"]
print("target (>= 0.9 and above the SFT model):", "reached" if after >= 0.9 and after > before else "NOT reached")
'''),
    md("## Did DPO keep what SFT taught? The same held-out measures for both"),
    code('''
table = H.evaluate_checkpoints(cfg, ["sft_masked", "dpo"])
table["preference_accuracy"] = [result["before"]["logp_accuracy"], result["after"]["reward_accuracy"]]
quality = "exact_match" if "exact_match" in table else "rouge_l"
print(table.to_string(index=False))
print(f"\\n{quality}: SFT {table[quality][0]:.3f} → DPO {table[quality][1]:.3f} "
      f"({100 * (table[quality][1] - table[quality][0]):+.1f} points)")
'''),
    md(r"""
## The reward model (Bradley–Terry)

A scalar head on the SFT model, trained so that $\max\ \mathbb{E}\,\log\sigma\big(r(x,y_w) - r(x,y_l)\big)$.
The head reads the last token, so to rank `7` above `8` for *What is 5 + 2?* the model has to know the sum: a
reward model only judges what its backbone knows. The tiny SFT model ranks the `add` pairs no better than chance,
so the reward model must learn single-digit sums from the pairs themselves. In `tiny` it trains on 6,000 pairs,
32 a step, for 1,200 steps: the held-out accuracy hovers between 0.83 and 0.90 for the first few hundred steps and
climbs as the sums are learned (the curve below). 600 steps, or 1,500 pairs, stopped below 0.9 (README log).
"""),
    code('print(inspect.getsource(H.bradley_terry_loss))'),
    code('''
print(cfg.reward)
rm = H.run_reward_model(cfg, start="sft_masked")
print(f"reward model held-out pairwise accuracy: {rm['accuracy']:.3f}  (saved to {rm['dir']})")
print("target (>= 0.9):", "reached" if rm["accuracy"] >= 0.9 else "NOT reached")
'''),
    code('''
# when did it learn, and what? held-out accuracy during training, and at the end by task family
print("by step:", {h["step"]: round(h["eval/pairwise_accuracy"], 2) for h in rm["history"] if h["step"] % 100 == 0})
print("by family:", {source: round(acc, 2) for source, acc in rm["accuracy_by_source"].items()})
'''),
    code('''
table["reward_model_accuracy"] = [None, rm["accuracy"]]
paths = H.write_summary(table, cfg, "dpo")
print("written:", *paths.values(), sep="\\n  ")
'''),
]

NOTEBOOKS["04_rloo"] = [
    md("""
# 04 · RLOO: reinforcement learning with a rule-based Countdown reward (and a reward-model track)

**Purpose.** Improve Countdown accuracy beyond supervised imitation: sample k answers per prompt, score them with
the verifier, and push up the ones better than their siblings (REINFORCE Leave-One-Out). A short second track
uses the reward model on instruction prompts.
**Inputs.** `checkpoints/<profile>/sft_masked` (WarmStart SFT), `checkpoints/<profile>/reward_model` (from `03`).
**Outputs.** `checkpoints/<profile>/rloo/`, `checkpoints/<profile>/rloo_instructions/`,
`evaluation_results/<profile>/rloo/…`, TensorBoard under `tensorboard_events/<profile>/rloo/` (with sampled tables).
**Run time.** tiny ≈ 6.5 min on 2 CPU cores · smoke ≈ 15 s · qwen: hours on one GPU.

In `tiny`, Countdown gives **two numbers ≤ 30** (three were beyond the 1.8M-parameter model: after SFT it wrote the
format but almost never a right equation, so every sampled group scored alike and RLOO had nothing to learn from;
see the README's log). The check of this notebook: greedy accuracy on the 200 held-out tasks rises by **at least
10 points** over the SFT model.
"""),
    code(SETUP.format(seed="cfg.rloo.seed")),
    md("""
## The reward: model output is untrusted input

Tiered as TinyZero defines it — **0** no `<answer>`, **0.1** an answer that is invalid, reuses or misses a number,
or misses the target, **1** a correct equation. The *last* `<answer>` counts wherever it is. The expression is
parsed with `ast`, and only `+ − × ÷`, parentheses and non-negative integers are evaluated: never `eval`.
"""),
    code('print(inspect.getsource(H.countdown_reward))'),
    code('''
for text in ["<answer> (3 + 4) * 2 </answer> Done.", "<answer> 9**9**9**9 </answer>",
             "<answer> __import__('os').system('ls') </answer>", "<think> hmm </think>"]:
    print(f"{H.countdown_reward(text, 14, [3, 4, 2]):.1f}  ←  {text!r}")
'''),
    md(r"""
## The leave-one-out advantage (Ahmadian et al. 2024)

For each prompt, $k$ samples $y_1..y_k$ with rewards $r_i$:
$A_i = r_i - \frac{1}{k-1}\sum_{j\neq i} r_j$, and the loss is $-\frac{1}{N}\sum_i A_i \log\pi_\theta(y_i|x)$ over
response tokens. Equal rewards give zero advantage: a group where every sample fails (or succeeds) teaches
nothing. An optional KL penalty to the SFT model is folded into the reward: $r_i - \beta_{KL}(\log\pi_\theta - \log\pi_\text{ref})$.
"""),
    code('''
import torch
print(inspect.getsource(H.rloo_advantages))
print(H.rloo_advantages(torch.tensor([[1.0, 0.0, 0.1], [0.1, 0.1, 0.1]])))
'''),
    md(r"""
## Scoring k samples of one prompt: run the prompt once

$\log\pi(y_i|x)$ needs the prompt as context, but the $k$ samples of a prompt share it. `shared_prompt_logps` runs
each prompt once, repeats its KV cache $k$ times and runs only the responses on top: the same numbers (tested to
1e-4, gradients included) for a fraction of the work — a tiny Countdown prompt is ~125 tokens, its answer ~27.
"""),
    code('print(inspect.getsource(H.shared_prompt_logps))'),
    md("## Before: the SFT model on the held-out Countdown test set (greedy)"),
    code('''
sft_dir = H.out_path("checkpoints", cfg, "sft_masked")
tokenizer, sft_model = H.load_tokenizer(sft_dir), H.load_model(sft_dir)
before = H.countdown_accuracy(sft_model, tokenizer, cfg)
print(before)
'''),
    md("## Countdown track: RLOO with the rule-based reward"),
    code('''
print(cfg.rloo)
result = H.run_rloo(cfg, track="countdown", start="sft_masked")
# the loop evaluated the policy on the same 200 held-out tasks at its last step: reuse that, greedy is deterministic
after = {k.removeprefix("eval/"): v for k, v in result["history"][-1].items() if k.startswith("eval/")}
print(f"Countdown accuracy (greedy, {cfg.eval.countdown_rows} held-out tasks): "
      f"SFT {before['countdown_accuracy']:.3f} → RLOO {after['countdown_accuracy']:.3f} "
      f"({100 * (after['countdown_accuracy'] - before['countdown_accuracy']):+.1f} points)")
gain = after["countdown_accuracy"] - before["countdown_accuracy"]
print("target (+10 points):", "reached" if gain >= 0.10 else "NOT reached")
'''),
    md("""
The sampled tables in TensorBoard (`rloo/samples`, every `table_every` steps) show what the policy writes;
`rloo/zero_variance_groups` is the share of prompts whose k samples all scored alike — those teach nothing.
"""),
    md("## Instruction track: RLOO with the reward model (short)"),
    code('''
import pandas as pd
instr = H.run_rloo(cfg, track="instructions", start="sft_masked")
rows = [{"model": "sft_masked", **before}, {"model": "rloo", **after}]
table = pd.DataFrame(rows)
# the instruction track's held-out reward-model score, before (SFT) and after its RLOO run
table["instruction_track_rm_score"] = [instr["history"][0].get("eval/reward_model_score"),
                                       instr["history"][-1].get("eval/reward_model_score")]
paths = H.write_summary(table, cfg, "rloo")
print(table.to_string(index=False)); print("written:", *paths.values(), sep="\\n  ")
'''),
]

NOTEBOOKS["05_evaluation"] = [
    md("""
# 05 · Evaluation: every stage side by side

**Purpose.** Measure every checkpoint of the profile — `initial`, `sft_masked`, `sft_unmasked`, `dpo`, `rloo` and
`final` (the best by `cfg.eval.final_rule`) — on the same held-out sets, save every response, write the summaries,
the figures and the report.
**Inputs.** Whichever checkpoints exist under `checkpoints/<profile>/` (run `00`–`04` first for all of them).
**Outputs.** `evaluation_results/<profile>/stages/<timestamp>/summary/summary_<timestamp>.{csv,md,txt,xlsx}`,
`outputs/<profile>/<checkpoint>/responses.jsonl`, `assets/stage_metrics.png`, `assets/learning_curves.png`,
`report/report.md`.
**Run time.** tiny ≈ 1.5 min on 2 CPU cores · smoke ≈ 20 s · qwen ≈ 1 h on one GPU.
"""),
    code(SETUP.format(seed="cfg.eval.seed")),
    md(r"""
## The measures

- **Countdown**: greedy accuracy and mean reward; sampled (temperature 0.6, top_p 0.95, top_k 20) accuracy and
  reward; **pass@k** — the unbiased estimator $1 - \binom{n-c}{k}/\binom{n}{k}$ for $c$ correct among $n$ samples;
  **best-of-n** by the verifier.
- **Instruction following**: exact match (tiny) or ROUGE-L (qwen), greedy; **best-of-n** with the reward model
  choosing among n samples (the rejection-sampling idea); in qwen also the **win rate** against
  Qwen2.5-0.5B-Instruct judged by the reward model.
- Held-out **response-only loss / perplexity** and **whole-sequence loss**.
"""),
    code('print(inspect.getsource(H.pass_at_k)); print(inspect.getsource(H.best_of_n))'),
    code('''
stamp = H.timestamp()
table, final = H.evaluate_all_stages(cfg)
paths = H.write_summary(table, cfg, "stages", stamp)
print(table.T.to_string())
print(f"\\nfinal = {final}"); print("written:", *paths.values(), sep="\\n  ")
'''),
    code('''
from IPython.display import Image, display
display(Image(filename=str(H.plot_stage_metrics(table, H.assets_dir(cfg) / "stage_metrics.png"))))
display(Image(filename=str(H.plot_learning_curves(cfg, H.assets_dir(cfg) / "learning_curves.png"))))
'''),
    md("## A few saved responses"),
    code('''
import json
for name in ["sft_masked", "rloo"]:
    path = H.out_path("outputs", cfg, name, "responses.jsonl")
    if path.exists():
        rows = [json.loads(line) for line in path.open()][:3]
        print(f"--- {name}"); [print(json.dumps(r)[:300]) for r in rows]
'''),
    md("## The report"),
    code('''
report = H.write_report(cfg, table, final)
print(report.read_text())
'''),
]

NOTEBOOKS["06_chat"] = [
    md("""
# 06 · Chat with what you trained

**Purpose.** Talk to any checkpoint: pick it from the dropdown (or give the path of any Hugging Face model
directory), set a system prompt, temperature, top_p and the answer length; tokens stream in as they are generated.
Stop interrupts generation, Clear starts over. Then compare two checkpoints on the same prompt.
**Inputs.** `checkpoints/<profile>/…`. **Outputs.** none.
**Run time.** seconds. From a terminal: `python helpers.py chat --model checkpoints/tiny/sft_masked` (or add a
prompt in quotes for a single answer).
"""),
    code(SETUP.format(seed="0")),
    code('''
widget, controls = H.build_chat_widget(cfg)
widget
'''),
    md("The widget's logic lives in `H.ChatSession`; here one exchange is driven programmatically, as a user would:"),
    code('''
controls["message"].value = "What is 3 + 4?"
controls["do_send"]()
print(controls["status"].value)
print(controls["session"].history)
'''),
    md("## Side by side: the same prompt, two checkpoints"),
    code('''
for prompt in ["What is the last letter of garden?", "Which number is the largest: 3, 8, 5?"]:
    print(prompt, H.side_by_side(cfg, prompt, names=("sft_masked", "sft_unmasked")))
'''),
]


def main():
    for name, cells in NOTEBOOKS.items():
        for i, cell in enumerate(cells):
            cell["id"] = f"{name}-{i:02d}"      # stable ids: regenerating gives no diff noise
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        path = ROOT / "notebooks" / f"{name}.ipynb"
        nbformat.write(nb, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
