"""Benchmark: peak resident memory of a DPO run against an SFT run on the same model and batch size.

    make bench-dpo      # or: .venv/bin/python benchmarks/bench_dpo.py

DPO precomputes the reference log-probs, so training holds one model; target DPO <= 1.15x SFT. Each run is its
own process (max RSS is per process). The model is the tiny one, widened so the weights dominate memory.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers import config, dpo, formatting, modeling, preference, sft, tiny_world, training

STEPS, BATCH = 10, 8


def run_one(mode: str, workdir: Path) -> dict:
    import torch
    torch.manual_seed(0)
    cfg = config.get_config("tiny")
    cfg.model = config.replace_config(cfg.model, hidden_size=512, intermediate_size=1536, num_heads=8, num_layers=8)
    world = tiny_world.build_tiny_world(cfg.data)
    tokenizer = modeling.train_tiny_tokenizer([r["text"] for r in world["pretrain"]["train"]], cfg.model.vocab_size)
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    pad = tokenizer.pad_token_id
    train_cfg = config.replace_config(cfg.sft, max_steps=STEPS, batch_size=BATCH, eval_every=10**9, save_every=10**9)
    if mode == "sft":
        # the same texts DPO sees: prompt + chosen, and prompt + rejected, as SFT rows
        rows = [{"messages": p["prompt"] + [{"role": "assistant", "content": p[k]}]}
                for p in world["preferences"]["train"] for k in ("chosen", "rejected")]
        examples, _ = formatting.build_sft_dataset(tokenizer, rows, 256)
        training.train(model, tokenizer, examples, config.replace_config(train_cfg, batch_size=2 * BATCH), sft.sft_loss,
                sft.sft_collate(pad), workdir / "sft", restart=True)
    else:
        pairs, _ = preference.build_pair_dataset(tokenizer, world["preferences"]["train"], 256)
        dpo.add_reference_logps(model, pairs, pad)
        training.train(model, tokenizer, pairs, train_cfg, dpo.make_dpo_loss(0.1), preference.pair_collate(pad),
                       workdir / "dpo", restart=True, length_fn=preference.pair_length)
    return {"mode": mode, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parameters": modeling.count_parameters(model)}


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--mode":
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(sys.argv[2], Path(tmp))))
        return
    results = {}
    for mode in ("sft", "dpo"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:>4}: peak RSS {results[mode]['peak_rss_mib']:.0f} MiB "
              f"({results[mode]['parameters']:,} parameters, {STEPS} steps, {2 * BATCH} sequences per step)")
    print(f"ratio DPO / SFT peak memory: {results['dpo']['peak_rss_mib'] / results['sft']['peak_rss_mib']:.2f}x "
          f"(target <= 1.15x)")


if __name__ == "__main__":
    main()
