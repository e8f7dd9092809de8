"""Estimated peak GPU memory and run time of each stage of the `qwen` profile, from what `bench_memory.py` measures.

    .venv/bin/python benchmarks/qwen_budget.py FITS.json     # or at the end of `make bench-memory`

Memory: the weights and optimizer state are counted from Qwen2.5-0.5B's shape and the preset (fp32 master weights,
LoRA r = 16 with AdamW; the reward model fully fine-tuned); the activations and log-prob passes come from the
per-token lines `bench_memory.py` measured (fp32 on CPU, so an upper bound for bf16 autocast on a GPU); the KV cache
of sampling from its shape (bf16 under autocast). Time: tokens per stage from the preset's steps and caps (upper
bounds: every row at its length cap, every generation to its token cap), training FLOPs per token from the model's
shape, and two ASSUMED GPU figures printed with the table — no GPU was measured for these numbers.
"""
import json
import sys
from pathlib import Path

from helpers import config  # noqa: E402

GIB = 2 ** 30
CARD_GIB = 24e9 / GIB           # a "24 GB" card: 22.4 GiB
CUDA_OVERHEAD_GIB = 1.0         # CUDA context, cuBLAS workspaces, allocator fragmentation (a usual margin)
# ASSUMED GPU figures (a 24 GB card of the RTX 4090 / L40 class): dense bf16 tensor throughput and the share of it a
# PyTorch training loop reaches; the time of one decoding step of a batch in transformers' eager `generate`
# (launch-bound for a 24-layer 0.5B model, a few ms of it reading the weights)
PEAK_TFLOPS, MFU, DECODE_STEP_S = 165.0, 0.35, 0.030

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
    return s["layers"] * 2 * s["kv_heads"] * (s["hidden"] // s["heads"]) * 2      # keys and values, bf16


def line(fits: dict, name: str, tokens: int, phases=None) -> float:
    """GiB of the largest phase of a measured pass, on its (fixed MiB + MiB/token) line at `tokens`."""
    lines = {p: v for p, v in fits[name].items() if phases is None or p in phases}
    return max(fixed + per_token * tokens for fixed, per_token in lines.values()) / 1024


def stage_memory(fits: dict) -> list[tuple[str, str, dict]]:
    """(stage, phase, {component: GiB}) for the phase of each stage that holds the most at once."""
    q = config.PROFILES["qwen"]()
    n, lora = parameter_count(), lora_count()
    weights = n * 4 / GIB                       # fp32 master weights
    lora_state = lora * 12 / GIB                # LoRA gradients + AdamW's two moments, fp32
    full_state = n * 12 / GIB                   # the reward model: every weight's gradient + two moments
    kv = kv_bytes_per_token() / GIB
    sample_rows = q.rloo.batch_size * q.rloo.k
    rollout = sample_rows * (q.data.max_prompt_tokens + q.rloo.max_new_tokens)
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
        ("RLOO", f"sampling {sample_rows} rows × ≤ {q.data.max_prompt_tokens + q.rloo.max_new_tokens:,} (KV cache)",
         {"weights": weights, "LoRA grads + AdamW": lora_state, "KV cache": rollout * kv}),
        ("RLOO", f"scoring step {sample_rows} rows × {q.rloo.max_length + 150:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "rloo_step", sample_rows * (q.rloo.max_length + 150))}),
        ("RFT", f"training micro-batch {q.rft.batch_size} × {q.rft.max_length:,}",
         {"weights": weights, "LoRA grads + AdamW": lora_state,
          "activations": line(fits, "rloo_step", q.rft.batch_size * q.rft.max_length)}),
        ("evaluation", f"sampling, {q.eval.generation_tokens:,} tokens a call; win rate: + reference + judge",
         {"weights": weights, "reference model": weights, "judge": weights,
          "KV cache": q.eval.generation_tokens * kv}),
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


def stage_work() -> list[tuple[str, float, float, int]]:
    """(stage, training FLOPs, forward-only FLOPs, decoding steps) at the preset, every row at its cap."""
    q = config.PROFILES["qwen"]()
    n = parameter_count()
    attention = 2 * QWEN_05B["layers"] * QWEN_05B["hidden"] * 1024 * 2     # QKᵀ and AV at ~1,024 positions
    fwd = 2 * n + attention                     # FLOPs per token of a forward pass (the tied head counts once)
    lora_step, full_step = 3 * fwd, 4 * fwd     # + recompute (checkpointing) + backward (no base weight grads)
    eval_rows = q.eval.instruction_rows + q.eval.countdown_rows

    def decode_steps(rows: int, per_call: int, new: int) -> int:
        return -(-rows // per_call) * new       # every call runs until its longest row hits the cap

    def evaluation() -> tuple[float, int]:      # greedy tracks + sampled pass@k + win rate (model and reference)
        row = q.data.max_prompt_tokens + q.eval.max_new_tokens
        per_call = min(q.eval.batch_size, q.eval.generation_tokens // row)
        steps = (decode_steps(eval_rows, per_call, q.eval.max_new_tokens)
                 + decode_steps(q.eval.sampled_rows * q.eval.n_samples, per_call, q.eval.max_new_tokens)
                 + 2 * decode_steps(q.eval.win_rate_rows, per_call, q.eval.max_new_tokens))
        return q.eval.loss_rows * q.sft.max_length * fwd, steps

    sft_rows = q.sft.max_steps * q.sft.batch_size * q.sft.grad_accum
    dpo_pairs = q.dpo.max_steps * q.dpo.batch_size * q.dpo.grad_accum
    rm_pairs = q.reward.max_steps * q.reward.batch_size * q.reward.grad_accum
    rloo_samples = q.rloo.max_steps * q.rloo.batch_size * q.rloo.grad_accum * q.rloo.k
    rloo_tokens = rloo_samples * (q.rloo.max_length + 150)
    rft_rows = q.rft.max_steps * q.rft.batch_size * q.rft.grad_accum
    eval_fwd, eval_steps = evaluation()
    evals = {"SFT": q.sft.max_steps // q.sft.eval_every + 1, "DPO": q.dpo.max_steps // q.dpo.eval_every + 1}
    per_call = q.rloo.batch_size * q.rloo.k
    return [
        ("SFT (masked; unmasked the same)", sft_rows * q.sft.max_length * lora_step,
         evals["SFT"] * q.eval.loss_rows * q.sft.max_length * fwd, 0),
        ("DPO (+ on-policy pairs)", dpo_pairs * 2 * q.dpo.max_length * lora_step,
         dpo_pairs * 2 * q.dpo.max_length * fwd,
         decode_steps(q.dpo.onpolicy_countdown_prompts * q.dpo.onpolicy_samples, per_call, q.rloo.max_new_tokens)),
        ("reward model", rm_pairs * 2 * q.reward.max_length * full_step, 0.0, 0),
        ("RLOO", rloo_tokens * lora_step, rloo_tokens * fwd,
         decode_steps(rloo_samples, per_call, q.rloo.max_new_tokens)),
        ("RFT (same samples as RLOO)", rft_rows * q.rft.max_length * lora_step, 0.0,
         decode_steps(rloo_samples, per_call, q.rloo.max_new_tokens)),
        ("evaluation (one checkpoint)", 0.0, eval_fwd, eval_steps),
    ]


def print_time() -> None:
    flops_s = PEAK_TFLOPS * 1e12 * MFU
    print(f"\nESTIMATED run time per stage at the qwen preset (upper bounds: rows at their length caps, every generate "
          f"call to its token cap)\nASSUMED: {PEAK_TFLOPS:.0f} TFLOPS bf16 at {MFU:.0%} utilisation for the passes, "
          f"{DECODE_STEP_S * 1e3:.0f} ms per decoding step of a batch (eager generate); not measured on a GPU")
    print(f"{'stage':<34} {'train PFLOP':>11} {'fwd PFLOP':>10} {'decode steps':>12} {'hours':>6}")
    total = 0.0
    for stage, train, forward, steps in stage_work():
        hours = ((train + forward) / flops_s + steps * DECODE_STEP_S) / 3600
        total += hours
        print(f"{stage:<34} {train / 1e15:>11.1f} {forward / 1e15:>10.1f} {steps:>12,} {hours:>6.1f}")
    print(f"{'(all stages, one evaluation each)':<34} {'':>11} {'':>10} {'':>12} {total:>6.1f}")


def main():
    fits = json.loads(Path(sys.argv[1]).read_text())
    fits = {name: {phase: tuple(v) for phase, v in lines.items()} for name, lines in fits.items()}
    print(f"Qwen2.5-0.5B: {parameter_count():,} parameters, LoRA r = {config.QWEN_LORA['r']}: {lora_count():,}")
    print_memory(fits)
    print_time()


if __name__ == "__main__":
    main()
