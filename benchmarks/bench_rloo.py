"""Benchmark: RLOO's step with each prompt run once per group of k (shared KV cache) against k full prompts.

    make bench-rloo      # or: .venv/bin/python benchmarks/bench_rloo.py

16 tiny Countdown prompts x k = 8, as one RLOO step of the tiny profile, on the tiny architecture:
- scoring: the same sampled completions, forward + backward of `sequence_logps` on prompt+response rows vs
  `shared_prompt_logps`. Prints both times, the ratio and the largest log-prob difference (they must agree);
- sampling: `sample_completions` (64 new tokens, seeded) with the prompt's cache computed once and copied to its k
  rows vs every row prefilling its own copy of the prompt — ABBA order, each side's best run. Prints both times, the
  ratio and how many of the samples are identical (sharing must not change what is drawn).
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


def sampling(model, tokenizer, prompts, k: int, new_tokens: int = 64) -> None:
    def run(shared: bool):
        original = generation.shared_prompt_cache
        if not shared:
            generation.shared_prompt_cache = lambda model, enc: None
        try:
            torch.manual_seed(0)
            started = time.perf_counter()
            samples = generation.sample_completions(model, tokenizer, prompts, k, new_tokens, temperature=1.0)
            return time.perf_counter() - started, samples
        finally:
            generation.shared_prompt_cache = original
    seconds, drawn = {True: [], False: []}, {}
    for shared in (False, True, True, False):
        took, drawn[shared] = run(shared)
        seconds[shared].append(took)
    same = sum(a["response_ids"] == b["response_ids"] for a, b in zip(drawn[True], drawn[False]))
    full_s, shared_s = min(seconds[False]), min(seconds[True])
    print(f"sampling {len(prompts)} prompts x k={k}, {new_tokens} new tokens: k full prompts {full_s:.2f} s, "
          f"prompt cache shared {shared_s:.2f} s")
    print(f"ratio (full / shared): {full_s / shared_s:.2f}x; identical samples {same} of {len(drawn[True])}")


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
    model.zero_grad(set_to_none=True)
    sampling(model, tokenizer, prompts, k)


if __name__ == "__main__":
    main()
