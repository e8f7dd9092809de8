"""Benchmark: QLoRA against full precision at Qwen2.5-0.5B's shapes — the resident memory of the weights and the
time of one LoRA step (the qwen preset's adapters, `config.QWEN_LORA`), fp32 base vs 8-bit vs 4-bit NF4 with double
quantisation (`modeling.quantization_config`), side by side with the ratios.

    make bench-qlora       # or: .venv/bin/python benchmarks/bench_qlora.py [--model DIR] [--tokens 256]

Weights: the checkpoint in --model DIR or $QWEN_MODEL_DIR (../shared/tools/get-real-qwen.sh builds one), else random
ones in Qwen2.5-0.5B's shape (tied embeddings): memory and time depend on the shapes, not the values. Each variant
runs in its own process: its weight memory is the RSS after loading minus the RSS before, each taken after glibc
returns freed memory (the loader's fp32 copies), and the parameters' and buffers' bytes (`get_memory_footprint`);
its step time the mean of 2 steps after one warm-up (batch 1 × --tokens tokens, forward + backward + AdamW on the
adapters). On CPU (bitsandbytes' CPU kernels dequantise each block for its
matmul); on CUDA the same script measures the card. A few minutes on 2 CPU cores.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from helpers import config, modeling

VARIANTS = {"fp32": None, "8-bit": 8, "4-bit NF4": 4}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_qwen_dir() -> Path:
    """Random weights in Qwen2.5-0.5B's shape, saved once (safetensors) so every variant loads the same files."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_memory import QWEN_05B
    folder = Path(tempfile.gettempdir()) / "bench-qlora-qwen2.5-0.5b-shape"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**QWEN_05B)).save_pretrained(folder)
    return folder


def trimmed_rss_mib() -> float:
    """RSS once glibc has returned freed heap to the system: loading reads the fp32 tensors before quantising them,
    and without the trim their freed pages would count as the quantised model's."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mib()


def measure(model_dir: str, quant: int | None, tokens: int) -> dict:
    before = trimmed_rss_mib()
    model = modeling.load_model(model_dir, quant=quant, lora_cfg=config.QWEN_LORA).to(config.device())
    loaded = trimmed_rss_mib()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(config.device())
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with modeling.autocast_context(config.device()):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {"weights_rss_mib": loaded - before, "footprint_mib": model.get_memory_footprint() / 2**20,
            "step_s": statistics.mean(times[1:]), "loss": loss.item(), "trainable": sum(p.numel() for p in params),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("QWEN_MODEL_DIR") or None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)   # one variant, one process
    args = parser.parse_args()
    model_dir = args.model if args.model and Path(args.model, "config.json").exists() else None
    if args.variant:
        print(json.dumps(measure(args.model, VARIANTS[args.variant], args.tokens)))
        return
    model_dir = model_dir or str(random_qwen_dir())
    rows = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--model", model_dir, "--tokens", str(args.tokens),
                              "--variant", name], capture_output=True, text=True)
        if out.returncode != 0:
            rows[name] = {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"QLoRA at Qwen2.5-0.5B's shapes ({model_dir}), LoRA r = {config.QWEN_LORA['r']} on every linear layer, "
          f"batch 1 × {args.tokens} tokens, {device}, {torch.get_num_threads()} threads")
    print(f"{'base':<10} {'weights (RSS)':>14} {'footprint':>10} {'× fp32':>7} {'one step':>9} {'× fp32':>7} "
          f"{'loss':>7}")
    base = rows.get("fp32", {})
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<10} failed: {row['error']}")
            continue
        ratio = lambda key: f"{row[key] / base[key]:.2f}" if key in base else "–"
        print(f"{name:<10} {row['weights_rss_mib']:>10,.0f} MiB {row['footprint_mib']:>6,.0f} MiB "
              f"{ratio('footprint_mib'):>7} {row['step_s']:>8.2f}s {ratio('step_s'):>7} {row['loss']:>7.3f}")


if __name__ == "__main__":
    main()
