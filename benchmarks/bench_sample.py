"""Benchmark: tokens sampled per second on the real Qwen2.5 architecture (CPU), the unmerged `generate` reference
against the project's path.

    make bench-sample      # or: .venv/bin/python benchmarks/bench_sample.py [--model DIR] [--threads N]

The reference (`unmerged`, the path the project's replaced): `model.generate` on the LoRA model as it trains
(unmerged: the qwen preset, r 16 on all seven projections), fp32, batches of a fixed row count, prompts sorted by
character length. The project's path (`merged`): `generation.generate_responses` (LoRA merged into the weights for
the duration, batches sized by a token budget). Why: merging was added for speed, so this measures it on the real
architecture (0.5B, vocabulary 151,936) instead of the tiny model. Same 12 Countdown prompts (WarmStart format, the
qwen profile's), greedy and sampled (temperature 1, seeded), 32 new tokens; each path runs twice per mode in ABBA
order in one process and its best run counts, so a busy machine slows both alike. Prints tokens/s of each (the
responses' tokens, re-encoded: one measure for both samplers), the ratio merged / unmerged, and how many greedy
outputs agree. About 4 minutes on 2 quiet cores. DIR defaults to $QWEN_MODEL_DIR (a Hugging Face checkpoint; build
one with ../shared/tools/get-real-qwen.sh).
"""
import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

from helpers import config, countdown, formatting, generation, modeling

LORA_B_STD = 0.005   # lora_B drawn at random (peft starts it at 0), so merging matters: |ΔW| / |W| is 1-9 %


@torch.no_grad()
def generate_unmerged(model, tokenizer, conversations, batch_size: int, max_new_tokens: int,
                   temperature: float = 0.0, seed: int = 0) -> list[str]:
    """The reference: generate_responses as it was before merging: the model as it is (LoRA unmerged), fp32,
    `batch_size` rows per generate call, longest prompts (in characters) first; results in input order."""
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if temperature > 0:
        torch.manual_seed(seed)
    texts = [formatting.render_chat(tokenizer, c, add_generation_prompt=True) for c in conversations]
    stops = generation.stop_token_ids(tokenizer)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    responses = [None] * len(texts)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            for row, i in enumerate(idx):
                responses[i] = tokenizer.decode(out[row, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return responses


def response_tokens(tokenizer, texts: list[str]) -> int:
    """The responses' tokens, re-encoded from their text: one measure for both paths, whichever sampler drew them
    (the project's plain temperature sampling runs `sample_policy`, not `generate`, so wrapping `generate` counted
    none of its tokens)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def countdown_prompts(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [countdown.countdown_prompt([rng.randint(1, 99) for _ in range(rng.choice([3, 4]))],
                                       rng.randint(10, 200), "warmstart") for _ in range(n)]


def load(model_dir: Path):
    tokenizer = modeling.load_tokenizer(model_dir)
    model = modeling.load_model(model_dir, lora_cfg=dict(config.QWEN_LORA))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_B_STD)
    return tokenizer, model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("QWEN_MODEL_DIR"),
                        help="Qwen2.5 checkpoint directory (default: $QWEN_MODEL_DIR)")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path and mode; the best counts")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 on a machine whose cores other jobs share")
    args = parser.parse_args()
    if not args.model or not (Path(args.model) / "config.json").exists():
        sys.exit(f"no Qwen2.5 checkpoint at --model / QWEN_MODEL_DIR ({args.model!r}): build one with "
                 "../shared/tools/get-real-qwen.sh DIR, then run with --model DIR or QWEN_MODEL_DIR=DIR")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, model = load(Path(args.model))
    prompts = countdown_prompts(args.prompts)
    rows, new = len(prompts), args.new_tokens
    paths = {"unmerged": lambda **s: generate_unmerged(model, tokenizer, prompts, rows, new, **s),
             "merged": lambda **s: generation.generate_responses(model, tokenizer, prompts, rows, new, progress=False,
                                                              **s)}
    generate_unmerged(model, tokenizer, prompts[:1], 1, 2)     # warm-up: first calls pay one-off costs
    generation.generate_responses(model, tokenizer, prompts[:1], 1, 2, progress=False)
    print(f"{rows} prompts, {new} new tokens, {torch.get_num_threads()} threads, best of {args.repeats} runs each; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.model}")
    rates, outputs, totals = {}, {}, {"unmerged": [0, 0.0], "merged": [0, 0.0]}
    for m, mode in enumerate(("greedy", "sampled")):
        sampling = dict(temperature=1.0, seed=0) if mode == "sampled" else {}
        # ABBA order (unmerged, merged, merged, unmerged, ...): a drift in the machine's load slows both paths alike
        for r in range(args.repeats):
            for path in ("unmerged", "merged") if (r + m) % 2 == 0 else ("merged", "unmerged"):
                started = time.perf_counter()
                outputs[path, mode] = paths[path](**sampling)
                seconds = time.perf_counter() - started
                tokens = response_tokens(tokenizer, outputs[path, mode])
                rates[path, mode] = max(rates.get((path, mode), 0.0), tokens / seconds)
                totals[path][0] += tokens
                totals[path][1] += seconds
        print(f"{mode:8s}: unmerged {rates['unmerged', mode]:.2f} tok/s, merged {rates['merged', mode]:.2f} tok/s; "
              f"ratio merged/unmerged {rates['merged', mode] / rates['unmerged', mode]:.2f}x")
    same = {m: sum(a == b for a, b in zip(outputs["unmerged", m], outputs["merged", m])) for m in ("greedy", "sampled")}
    overall = {p: tokens / seconds for p, (tokens, seconds) in totals.items()}
    print(f"all runs: unmerged {overall['unmerged']:.2f} tok/s, merged {overall['merged']:.2f} tok/s, "
          f"ratio merged/unmerged {overall['merged'] / overall['unmerged']:.2f}x; identical outputs: greedy "
          f"{same['greedy']}/{rows}, sampled (same seed) {same['sampled']}/{rows}; "
          f"load average now {os.getloadavg()[0]:.1f}")
    print(f"first greedy output: {outputs['merged', 'greedy'][0]!r}")


if __name__ == "__main__":
    main()
