"""Benchmark: RLOO's step — scoring with each prompt run once per group of k (shared KV cache) against k full
prompts, and sampling with our loop against transformers' `generate`.

    make bench-rloo      # or: .venv/bin/python benchmarks/bench_rloo.py [--model DIR]

- scoring: 16 tiny Countdown prompts x k = 8, as one RLOO step of the tiny profile, on the tiny architecture: the
  same sampled completions, forward + backward of `sequence_logps` on prompt+response rows vs `shared_prompt_logps`.
  Prints both times, the ratio and the largest log-prob difference (they must agree);
- sampling: 6 RLOO batches of 16 prompts x k = 8 (64 new tokens, temperature 0.6, seeded) drawn by
  `sample_completions` (each prompt prefilled once, finished rows leave the batch) vs the path before it,
  `model.generate(num_return_sequences=k)` — ABBA order, each side's best run. Prints both times, the ratio and how
  many samples are identical (they must all be). DIR is a trained checkpoint (default: checkpoints/tiny/dpo, from
  `make demo`; RLOO's own mixture of Countdown and instruction prompts), since how early rows stop is the point;
  without one, the untrained model, whose rows never stop, measures the prefill alone.
"""
import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from helpers import batching, countdown, formatting, generation, logprobs, modeling, rloo, tiny_world
from bench_sft import setup  # noqa: E402


def timed(fn, repeats: int = 3) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        out.sum().backward()
        best = min(best, time.perf_counter() - started)
    return best, out.detach()


def generate_before(model, tokenizer, prompts, k: int, new_tokens: int, temperature: float) -> list[list[int]]:
    """RLOO's sampling before: transformers' generate, every row to the end, each prompt prefilled k times."""
    stops = generation.stop_token_ids(tokenizer)
    with torch.no_grad(), generation.generation_mode(model):
        enc = generation.left_padded([formatting.encode_prompt(tokenizer, p) for p in prompts],
                                     tokenizer.pad_token_id, "cpu")
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=new_tokens, num_return_sequences=k, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)
    rows = [row[enc["input_ids"].shape[1]:].tolist() for row in out]
    return [r[:next((i + 1 for i, t in enumerate(r) if t in stops), len(r))] for r in rows]


def sampling(model, tokenizer, batches, k: int, new_tokens: int = 64, temperature: float = 0.6) -> None:
    def run(ours: bool):
        started, drawn = time.perf_counter(), []
        for seed, prompts in enumerate(batches):
            torch.manual_seed(seed)
            drawn += ([s["response_ids"] for s in generation.sample_completions(
                model, tokenizer, prompts, k, new_tokens, temperature)] if ours else
                generate_before(model, tokenizer, prompts, k, new_tokens, temperature))
        return time.perf_counter() - started, drawn
    seconds, drawn = {True: [], False: []}, {}
    for ours in (False, True, True, False):
        took, drawn[ours] = run(ours)
        seconds[ours].append(took)
    same = sum(a == b for a, b in zip(drawn[True], drawn[False]))
    before_s, ours_s = min(seconds[False]), min(seconds[True])
    mean = sum(map(len, drawn[True])) / len(drawn[True])
    print(f"sampling {len(batches)} batches of {len(batches[0])} prompts x k={k}, up to {new_tokens} new tokens "
          f"(mean {mean:.1f}): generate {before_s:.2f} s, sample_completions {ours_s:.2f} s")
    print(f"ratio (generate / ours): {before_s / ours_s:.2f}x; identical samples {same} of {len(drawn[True])}")


ROOT = Path(__file__).resolve().parent.parent


def main(n_prompts: int = 16, k: int = 8):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "tiny" / "dpo"))
    args = parser.parse_args()
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
    if (Path(args.model) / "config.json").exists():
        tokenizer, model = modeling.load_tokenizer(args.model), modeling.load_model(args.model)
        print(f"sampling with {args.model}")
    else:
        model.zero_grad(set_to_none=True)
        print(f"no checkpoint at {args.model}: sampling with the untrained model (rows never stop)")
    # RLOO's mixture: half Countdown, half instruction prompts, shuffled into batches
    mixture = [countdown.countdown_prompt(t["nums"], t["target"]) for t in world["countdown"]["train"][:48]]
    mixture += [r["messages"][:-1] for r in world["instructions"]["train"][:48]]
    random.Random(0).shuffle(mixture)
    sampling(model.eval(), tokenizer, [mixture[i:i + n_prompts] for i in range(0, len(mixture), n_prompts)], k)


if __name__ == "__main__":
    main()
