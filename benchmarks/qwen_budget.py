"""Estimated peak GPU memory and run time of each stage of the `qwen` profile, from what `bench_memory.py` measures.

    .venv/bin/python benchmarks/qwen_budget.py                          # the time table (make qwen-budget)
    .venv/bin/python benchmarks/qwen_budget.py --config docs/qwen_full.yml   # another preset's
    .venv/bin/python benchmarks/qwen_budget.py FITS.json                # + the memory table (end of make bench-memory)

Memory: the weights and optimizer state are counted from Qwen2.5-0.5B's shape and the preset (fp32 master weights,
LoRA r = 16 with AdamW; the reward model fully fine-tuned); the activations and log-prob passes come from the
per-token lines `bench_memory.py` measured (fp32 on CPU, so an upper bound for bf16 autocast on a GPU); the KV cache
of sampling from its shape (bf16 under autocast). Time: tokens per stage from the preset's steps and caps (upper
bounds: every row at its length cap, every generation to its token cap), training FLOPs per token from the model's
shape, and two ASSUMED GPU figures printed with the table — no GPU was measured for these numbers.
"""
import json
from pathlib import Path

from helpers import config, config_file  # noqa: E402

GIB = 2 ** 30
CARD_GIB = 24e9 / GIB           # a "24 GB" card: 22.4 GiB
CUDA_OVERHEAD_GIB = 1.0         # CUDA context, cuBLAS workspaces, allocator fragmentation (a usual margin)
# ASSUMED GPU figures (a 24 GB card of the RTX 4090 / L40 class): dense bf16 tensor throughput and the share of it a
# PyTorch training loop reaches; the time of one decoding step of a batch in transformers' eager `generate`
# (launch-bound for a 24-layer 0.5B model, a few ms of it reading the weights)
PEAK_TFLOPS, MFU, DECODE_STEP_S = 165.0, 0.35, 0.030
BANDWIDTH = 1.0e12              # ASSUMED bytes/s of GPU memory (RTX 4090: 1.01 TB/s; L40: 0.86 TB/s)
STAGES_EVALUATED = ("initial", "sft_masked", "sft_unmasked", "dpo", "rloo", "rft")

CONFIG_FILE: list = [None]       # main's --config: a YAML file of overrides on the qwen preset


def preset():
    """The qwen preset the tables describe, with --config's overrides (e.g. docs/qwen_full.yml)."""
    return config_file.get_config("qwen", CONFIG_FILE[0])


QWEN_05B = dict(vocab=151_936, hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2)


def parameter_count(s: dict = QWEN_05B) -> int:
    """Qwen2.5-0.5B: tied embeddings, q/k/v biases, RMSNorm weights."""
    head_dim = s["hidden"] // s["heads"]
    kv = s["kv_heads"] * head_dim
    attention = s["hidden"] * (s["hidden"] + 2 * kv) + (s["hidden"] + 2 * kv) + s["hidden"] * s["hidden"]
    mlp = 3 * s["hidden"] * s["intermediate"]
    return s["vocab"] * s["hidden"] + s["layers"] * (attention + mlp + 2 * s["hidden"]) + s["hidden"]


def lora_count(r: int = config.QWEN_LORA["r"], s: dict = QWEN_05B) -> int:
    """LoRA on every linear layer: r × (in + out) per matrix."""
    kv = s["kv_heads"] * s["hidden"] // s["heads"]
    shapes = [(s["hidden"], s["hidden"]), (s["hidden"], kv), (s["hidden"], kv), (s["hidden"], s["hidden"]),
              (s["hidden"], s["intermediate"]), (s["hidden"], s["intermediate"]), (s["intermediate"], s["hidden"])]
    return s["layers"] * sum(r * (i + o) for i, o in shapes)


def kv_bytes_per_token(s: dict = QWEN_05B) -> int:
    # keys and values stored in bf16 on CUDA (generation.cache_dtype: attention casts them to bf16 under autocast)
    return s["layers"] * 2 * s["kv_heads"] * (s["hidden"] // s["heads"]) * 2


def line(fits: dict, name: str, tokens: int, phases=None) -> float:
    """GiB of the largest phase of a measured pass, on its (fixed MiB + MiB/token) line at `tokens`."""
    lines = {p: v for p, v in fits[name].items() if phases is None or p in phases}
    return max(fixed + per_token * tokens for fixed, per_token in lines.values()) / 1024


def stage_memory(fits: dict) -> list[tuple[str, str, dict]]:
    """(stage, phase, {component: GiB}) for the phase of each stage that holds the most at once."""
    q = preset()
    n, lora = parameter_count(), lora_count()
    weights = n * 4 / GIB                       # fp32 master weights
    lora_state = lora * 12 / GIB                # LoRA gradients + AdamW's two moments, fp32
    full_state = n * 12 / GIB                   # the reward model: every weight's gradient + two moments
    kv = kv_bytes_per_token() / GIB
    sample_rows = q.rloo.batch_size * q.rloo.k                     # one micro-batch's rows (the scoring step)
    row = q.data.max_prompt_tokens + q.rloo.max_new_tokens
    # sampling: the step's rows in calls as wide as eval.sampling_memory of the free memory holds (the policy, its
    # LoRA state, the bf16 reference and the reward model judging instructions stay resident)
    rollout = min(q.rloo.batch_size * q.rloo.grad_accum * q.rloo.k,
                  sampling_rows(weights + lora_state + weights / 2 + weights, row) // q.rloo.k * q.rloo.k)
    eval_rows = sampling_rows(3 * weights, q.data.max_prompt_tokens + q.eval.max_new_tokens)
    decoder_only = ("decoder forward", "decoder backward")
    return [
        ("SFT", f"training micro-batch {q.sft.batch_size} × {q.sft.max_length:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "rloo_step", q.sft.batch_size * q.sft.max_length)}),
        ("SFT", f"evaluate_loss, token budget {q.eval.token_budget:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "evaluate_loss", q.eval.token_budget)}),
        ("DPO", f"training micro-batch {q.dpo.batch_size} pairs × 2 × {q.dpo.max_length:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "rloo_step", q.dpo.batch_size * 2 * q.dpo.max_length)}),
        ("DPO", f"reference pass, token budget {q.eval.token_budget:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "dpo_reference", q.eval.token_budget)}),
        ("reward model", f"full fine-tuning, {q.reward.batch_size} pairs × 2 × {q.reward.max_length:,}",
         {"weights": weights, "all grads + AdamW": full_state,
          "activations": line(fits, "rloo_step", q.reward.batch_size * 2 * q.reward.max_length, decoder_only)}),
        ("RLOO", f"sampling {rollout} rows × ≤ {row:,} (KV cache, logits)",
         {"weights": weights, "LoRA grads + AdamW": lora_state, "reference (bf16)": weights / 2, "judge": weights,
          "KV cache + logits": rollout * (row * kv + 3 * 4 * QWEN_05B["vocab"] / GIB)}),
        ("RLOO", f"scoring step {sample_rows} rows × {q.rloo.max_length + 150:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "rloo_step", sample_rows * (q.rloo.max_length + 150))}),
        ("RFT", f"training micro-batch {q.rft.batch_size} × {q.rft.max_length:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "rloo_step", q.rft.batch_size * q.rft.max_length)}),
        ("evaluation", f"sampling {eval_rows} rows × ≤ {q.data.max_prompt_tokens + q.eval.max_new_tokens:,}; win rate: "
                       f"+ reference + judge",
         {"weights": weights, "reference model": weights, "judge": weights,
          "KV cache + logits": eval_rows * ((q.data.max_prompt_tokens + q.eval.max_new_tokens) * kv
                                            + 3 * 4 * QWEN_05B["vocab"] / GIB)}),
    ]


def print_memory(fits: dict) -> None:
    print(f"\nESTIMATED peak GPU memory per stage at the qwen preset (GiB; + {CUDA_OVERHEAD_GIB:.0f} GiB CUDA margin; "
          f"a 24 GB card holds {CARD_GIB:.1f} GiB)")
    print(f"{'stage':<13} {'phase':<66} {'GiB':>6}  verdict  parts")
    for stage, phase, parts in stage_memory(fits):
        total = sum(parts.values()) + CUDA_OVERHEAD_GIB
        verdict = "fits" if total <= CARD_GIB else "DOES NOT FIT"
        print(f"{stage:<13} {phase:<66} {total:>6.1f}  {verdict:<7}  "
              + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))


def sampling_rows(resident_gib: float, row_tokens: int) -> int:
    """Rows of one sampling call at the preset's `eval.sampling_memory`: that share of what the card has free beside
    what the stage keeps resident, over each row's KV cache and its step's logits (as `generation.memory_rows`)."""
    q = preset()
    free = (CARD_GIB - CUDA_OVERHEAD_GIB - resident_gib) * GIB
    per_row = row_tokens * kv_bytes_per_token() + 3 * 4 * QWEN_05B["vocab"]
    return max(1, int(free * q.eval.sampling_memory // per_row))


def decode_seconds(rows: int, width: int, prompt: int, new: int) -> tuple[int, float]:
    """(decoding steps, seconds) of sampling `rows` rows in calls of at most `width`: every call runs to its token
    cap (its longest row); a step costs the launch-bound DECODE_STEP_S plus moving the weights (autocast reads the
    fp32 ones and writes and reads a bf16 copy every step: 8 bytes each) and the call's cache so far (on average the
    prompt and half the new tokens) at BANDWIDTH."""
    steps, seconds = 0, 0.0
    for start in range(0, rows, width):
        n = min(width, rows - start)
        read = parameter_count() * 8 + n * (prompt + new / 2) * kv_bytes_per_token()   # fp32 read, bf16 copy
        steps += new
        seconds += new * (DECODE_STEP_S + read / BANDWIDTH)
    return steps, seconds


def stage_work() -> list[tuple[str, float, float, int, float, str]]:
    """(stage, training FLOPs, forward-only FLOPs, decoding steps, decoding seconds, sampling calls' width) at the
    preset, every row at its length cap; RLOO's and RFT's include their curve points (greedy, every eval_every)."""
    q = preset()
    n = parameter_count()
    attention = 2 * QWEN_05B["layers"] * QWEN_05B["hidden"] * 1024 * 2     # QKᵀ and AV at ~1,024 positions
    fwd = 2 * n + attention                     # FLOPs per token of a forward pass (the tied head counts once)
    lora_step, full_step = 3 * fwd, 4 * fwd     # + recompute (checkpointing) + backward (no base weight grads)
    weights, lora_state = n * 4 / GIB, lora_count() * 12 / GIB
    prompt, e, r = q.data.max_prompt_tokens, q.eval, q.rloo

    def evaluation() -> tuple[float, int, float, int]:    # greedy tracks, sampled pass@k and best-of-n, win rate
        width = sampling_rows(3 * weights, prompt + e.max_new_tokens)       # the model, the reference, the judge
        calls = [e.instruction_rows, e.countdown_rows, e.sampled_rows * e.n_samples, e.sampled_rows * e.n_samples,
                 e.win_rate_rows]
        parts = [decode_seconds(rows, width, prompt, e.max_new_tokens) for rows in calls]
        return (e.loss_rows * q.sft.max_length * fwd, sum(p[0] for p in parts), sum(p[1] for p in parts), width)

    sft_rows = q.sft.max_steps * q.sft.batch_size * q.sft.grad_accum
    dpo_pairs = q.dpo.max_steps * q.dpo.batch_size * q.dpo.grad_accum
    rm_pairs = q.reward.max_steps * q.reward.batch_size * q.reward.grad_accum
    step_rows = r.batch_size * r.grad_accum * r.k
    rloo_tokens = r.max_steps * step_rows * (r.max_length + 150)
    rft_rows = q.rft.max_steps * q.rft.batch_size * q.rft.grad_accum
    eval_fwd, eval_steps, eval_seconds, eval_width = evaluation()
    evals = {"SFT": q.sft.max_steps // q.sft.eval_every + 1, "DPO": q.dpo.max_steps // q.dpo.eval_every + 1}
    dpo_width = sampling_rows(weights, prompt + r.max_new_tokens)
    dpo_steps, dpo_seconds = decode_seconds(q.dpo.onpolicy_countdown_prompts * q.dpo.onpolicy_samples, dpo_width,
                                            prompt, r.max_new_tokens)
    # RLOO keeps the policy, its LoRA state, the bf16 reference and the reward model that judges instructions
    rl_width = sampling_rows(weights + lora_state + weights / 2 + weights, prompt + r.max_new_tokens)
    rl_width = max(r.k, rl_width // r.k * r.k)
    per_step = decode_seconds(step_rows, rl_width, prompt, r.max_new_tokens)
    # a curve point (every eval_every steps): greedy instruction rows and the first curve_rows Countdown tasks
    point = [decode_seconds(rows, rl_width, prompt, e.max_new_tokens) for rows in (e.instruction_rows, e.curve_rows)]
    point_steps, point_seconds = sum(p[0] for p in point), sum(p[1] for p in point)
    points = {"rloo": r.max_steps // r.eval_every, "rft": q.rft.max_steps // q.rft.eval_every}
    rloo_steps = r.max_steps * per_step[0] + points["rloo"] * point_steps
    rloo_seconds = r.max_steps * per_step[1] + points["rloo"] * point_seconds
    rft_prompts = round(r.max_steps * r.batch_size * r.grad_accum * q.rft.sample_share) // q.rft.rounds
    rft_round = decode_seconds(rft_prompts * r.k, rl_width, prompt, r.max_new_tokens)
    rft_steps = q.rft.rounds * rft_round[0] + points["rft"] * point_steps
    rft_seconds = q.rft.rounds * rft_round[1] + points["rft"] * point_seconds
    return [
        ("SFT (masked; unmasked the same)", sft_rows * q.sft.max_length * lora_step,
         evals["SFT"] * q.eval.loss_rows * q.sft.max_length * fwd, 0, 0.0, ""),
        ("DPO (+ on-policy pairs)", dpo_pairs * 2 * q.dpo.max_length * lora_step,
         dpo_pairs * 2 * q.dpo.max_length * fwd, dpo_steps, dpo_seconds, f"{dpo_width}"),
        ("reward model", rm_pairs * 2 * q.reward.max_length * full_step, 0.0, 0, 0.0, ""),
        ("RLOO", rloo_tokens * lora_step, rloo_tokens * fwd, rloo_steps, rloo_seconds, f"{min(rl_width, step_rows)}"),
        (f"RFT ({q.rft.sample_share:g} of RLOO's samples)", rft_rows * q.rft.max_length * lora_step, 0.0, rft_steps,
         rft_seconds, f"{min(rl_width, rft_prompts * r.k)}"),
        ("evaluation (one checkpoint)", 0.0, eval_fwd, eval_steps, eval_seconds, f"{eval_width}"),
    ]


def print_time() -> None:
    flops_s = PEAK_TFLOPS * 1e12 * MFU
    q = preset()
    print(f"\nESTIMATED run time per stage at the qwen preset (upper bounds: rows at their length caps, every generate "
          f"call to its token cap)\nASSUMED: {PEAK_TFLOPS:.0f} TFLOPS bf16 at {MFU:.0%} utilisation for the passes; a "
          f"decoding step {DECODE_STEP_S * 1e3:.0f} ms (eager, launch-bound) + its reads at "
          f"{BANDWIDTH / 1e12:.1f} TB/s; "
          f"sampling calls as wide as {q.eval.sampling_memory:.0%} of the free memory holds; not measured on a GPU")
    print(f"{'stage':<34} {'train PFLOP':>11} {'fwd PFLOP':>10} {'rows/call':>9} {'decode steps':>12} {'hours':>6}")
    total = 0.0
    for stage, train, forward, steps, seconds, width in stage_work():
        hours = ((train + forward) / flops_s + seconds) / 3600
        runs = 2 if stage.startswith("SFT") else len(STAGES_EVALUATED) if stage.startswith("evaluation") else 1
        total += runs * hours
        print(f"{stage:<34} {train / 1e15:>11.1f} {forward / 1e15:>10.1f} {width:>9} {steps:>12,} {hours:>6.2f}"
              + (f"  × {runs}" if runs > 1 else ""))
    print(f"{'the whole pipeline':<34} {'':>11} {'':>10} {'':>9} {'':>12} {total:>6.2f}  (both SFT runs; each of "
          f"{len(STAGES_EVALUATED)} checkpoints evaluated once: {', '.join(STAGES_EVALUATED)})")


def main():
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fits", nargs="?", help="bench_memory.py's phase lines (JSON): adds the memory table")
    parser.add_argument("--config", default=None, help="a YAML file of overrides on the qwen preset")
    args = parser.parse_args()
    CONFIG_FILE[0] = args.config
    print(f"Qwen2.5-0.5B: {parameter_count():,} parameters, LoRA r = {config.QWEN_LORA['r']}: {lora_count():,}"
          + (f"; preset qwen + {args.config}" if args.config else "; preset qwen"))
    if args.fits:                               # the memory table needs bench_memory.py's measured lines
        fits = json.loads(Path(args.fits).read_text())
        print_memory({name: {phase: tuple(v) for phase, v in lines.items()} for name, lines in fits.items()})
    print_time()


if __name__ == "__main__":
    main()
