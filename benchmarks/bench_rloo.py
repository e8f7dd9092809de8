"""Benchmark: RLOO's log π(y|x) with the prompt run once per group (shared KV cache) against full sequences.

    make bench-rloo      # or: .venv/bin/python benchmarks/bench_rloo.py

Same model, same sampled completions (16 tiny Countdown prompts x k = 8, as one RLOO step of the tiny profile):
forward + backward of `sequence_logps` on prompt+response rows vs `shared_prompt_logps`. Prints both times, the
ratio, and the largest difference in the log-probs (they must agree).
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import batching, countdown, generation, logprobs, rloo, tiny_world
from bench_sft import setup  # noqa: E402


def timed(fn, repeats: int = 3) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        out.sum().backward()
        best = min(best, time.perf_counter() - started)
    return best, out.detach()


def main(n_prompts: int = 16, k: int = 8):
    with tempfile.TemporaryDirectory() as tmp:
        cfg, tokenizer, model, _ = setup(Path(tmp))
    world = tiny_world.build_tiny_world(cfg.data)
    prompts = [countdown.countdown_prompt(t["nums"], t["target"]) for t in world["countdown"]["train"][:n_prompts]]
    torch.manual_seed(0)
    samples = generation.sample_completions(model, tokenizer, prompts, k, max_new_tokens=28, temperature=1.0)
    pad = tokenizer.pad_token_id
    rows = batching.collate(rloo.sample_rows(samples), pad)
    full_s, full = timed(lambda: logprobs.sequence_logps(model, rows))
    shared_s, shared = timed(lambda: logprobs.shared_prompt_logps(model, samples, k, pad))
    print(f"{n_prompts} prompts x k={k}: full sequences {full_s:.2f} s, shared prompt {shared_s:.2f} s "
          "(forward + backward)")
    print(f"ratio (full / shared): {full_s / shared_s:.1f}x; largest log-prob difference "
          f"{(full - shared).abs().max():.1e}")


if __name__ == "__main__":
    main()
