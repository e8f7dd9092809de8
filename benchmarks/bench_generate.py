"""Benchmark: batched generate_responses against one-prompt-at-a-time generate, same 64 prompts and model.

    make bench-generate      # or: .venv/bin/python benchmarks/bench_generate.py

Greedy, same max_new_tokens; prints both wall times and the ratio (target >= 5x), and checks the outputs agree.
"""
import tempfile
import time
from pathlib import Path

from helpers import countdown, generation, tiny_world
from bench_sft import setup  # noqa: E402


def main(n_prompts: int = 64, max_new_tokens: int = 32):
    with tempfile.TemporaryDirectory() as tmp:
        cfg, tokenizer, model, _ = setup(Path(tmp))
    world = tiny_world.build_tiny_world(cfg.data)
    rows = (world["instructions"]["test"] + [{"messages": countdown.countdown_prompt(t["nums"], t["target"])}
                                            for t in world["countdown"]["test"]])
    prompts = [r["messages"][:2] if r["messages"][0]["role"] == "system" else r["messages"][:1] for r in rows]
    prompts = prompts[::max(1, len(prompts) // n_prompts)][:n_prompts]
    model.eval()
    started = time.perf_counter()
    one_by_one = [generation.generate_responses(model, tokenizer, [p], batch_size=1, max_new_tokens=max_new_tokens,
                                       progress=False)[0] for p in prompts]
    single = time.perf_counter() - started
    started = time.perf_counter()
    batched = generation.generate_responses(model, tokenizer, prompts, batch_size=64, max_new_tokens=max_new_tokens,
                                   progress=False)
    batch = time.perf_counter() - started
    same = sum(a == b for a, b in zip(one_by_one, batched))
    print(f"one at a time: {single:.1f} s for {len(prompts)} prompts; batched: {batch:.1f} s")
    print(f"ratio (one-at-a-time / batched): {single / batch:.1f}x (target >= 5x); "
          f"identical outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
