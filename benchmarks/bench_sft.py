"""Benchmark: our SFT step against the brief's CPU baseline, side by side, in one run.

    make bench-sft        # or: .venv/bin/python benchmarks/bench_sft.py [--steps 20]

Baseline = transformers `Trainer` with every example padded to max_length 512 (as the Qwen2-1.5B LoRA project
did). Ours = helpers.training.train: dynamic padding + length-grouped batches. Same tiny model, data, batch size and
number of optimizer steps. Each side runs in its own process so peak memory (max RSS) is its own. Prints trained
(non-padding, loss-carrying) tokens per second and the ratio.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import batching, config, formatting, modeling, sft, tiny_world, training


def setup(workdir: Path):
    os.environ["OUTPUT_DIR"] = str(workdir)
    cfg = config.get_config("tiny")
    world = tiny_world.build_tiny_world(cfg.data)
    texts = [r["text"] for r in world["pretrain"]["train"]]
    tokenizer = modeling.train_tiny_tokenizer(texts, cfg.model.vocab_size)
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    rows = world["instructions"]["train"] + world["warmstart"]["train"]
    examples, _ = formatting.build_sft_dataset(tokenizer, rows, 512, 0.0)
    return cfg, tokenizer, model, examples


def run_one(mode: str, steps: int, batch_size: int, workdir: Path) -> dict:
    import torch
    torch.manual_seed(0)
    cfg, tokenizer, model, examples = setup(workdir)
    if mode == "ours":
        train_cfg = config.replace_config(cfg.sft, max_steps=steps, batch_size=batch_size, eval_every=10**9,
                                     save_every=10**9, log_every=10**9)
        collate_fn = sft.sft_collate(tokenizer.pad_token_id)
        # parity: the Trainer side runs with save_strategy="no" (the loop calls training.save_checkpoint)
        training.save_checkpoint = lambda *args, **kwargs: None
        started = time.perf_counter()
        training.train(model, tokenizer, examples, train_cfg, sft.sft_loss, collate_fn, workdir / "ours", restart=True)
        seconds = time.perf_counter() - started
        # trained tokens seen: replay the same batch order
        lengths = [len(e["input_ids"]) for e in examples]
        order = batching.length_grouped_batches(lengths, batch_size, train_cfg.seed * 1000)
        trained = sum(float(collate_fn([examples[i] for i in idx])["normalizer"]) for idx in order[:steps])
    else:
        from transformers import Trainer, TrainingArguments
        rows = []
        for e in examples:   # padding="max_length" as the baseline project did
            pad = 512 - len(e["input_ids"])
            rows.append({"input_ids": torch.tensor(e["input_ids"] + [tokenizer.pad_token_id] * pad),
                         "attention_mask": torch.tensor(e["attention_mask"] + [0] * pad),
                         "labels": torch.tensor(e["labels"] + [-100] * pad)})
        args = TrainingArguments(output_dir=str(workdir / "trainer"), per_device_train_batch_size=batch_size,
                                 max_steps=steps, learning_rate=cfg.sft.lr, report_to="none", save_strategy="no",
                                 logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        # Trainer draws its own random order: count the expected trained tokens of steps × batch_size rows
        per_row = sum(int((r["labels"][1:] != -100).sum()) for r in rows) / len(rows)
        trained = per_row * steps * batch_size
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": seconds, "trained_tokens": trained,
            "trained_tokens_per_second": trained / seconds, "peak_rss_mib": peak_mib}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mode", choices=["ours", "trainer"])
    args = parser.parse_args()
    if args.mode:   # child process
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(args.mode, args.steps, args.batch_size, Path(tmp))))
        return
    results = {}
    for mode in ("trainer", "ours"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    for r in results.values():
        print(f"{r['mode']:>8}: {r['trained_tokens_per_second']:9.0f} trained tokens/s  "
              f"({r['trained_tokens']:.0f} tokens in {r['seconds']:.1f} s), peak RSS {r['peak_rss_mib']:.0f} MiB")
    ratio = results["ours"]["trained_tokens_per_second"] / results["trainer"]["trained_tokens_per_second"]
    mem = results["ours"]["peak_rss_mib"] / results["trainer"]["peak_rss_mib"]
    print(f"ratio (ours / Trainer padded to 512): {ratio:.1f}x trained tokens per second "
          f"(target >= 4x), {mem:.2f}x peak memory")


if __name__ == "__main__":
    main()
