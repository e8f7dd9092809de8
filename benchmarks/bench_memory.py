"""Benchmark: peak memory of the log-prob/loss passes at the qwen preset's shapes, the full-logits reference (full
[batch, positions, 151,936] fp32 logits, the path the lean one replaced) against the memory-lean one
(helpers/logprobs.py: the vocabulary projection only where it counts, in chunks recomputed in backward; no-grad
passes in token-budget batches).

    make bench-memory      # or: .venv/bin/python benchmarks/bench_memory.py [--model DIR]

Passes: `evaluate_loss` (no grad, held-out SFT rows), the DPO reference pass (`pair_logps`, no grad, chosen and
rejected sharing their prompt) and an RLOO scoring step (log π(y|x) of k samples per prompt, with backward). The
model is set up as the qwen preset runs it: Qwen2.5-0.5B-shaped, LoRA (`config.QWEN_LORA`), gradient checkpointing
on — so in train mode RLOO scores full sequences (`logprobs.can_share_prompt`). Weights: the checkpoint in --model
DIR or $QWEN_MODEL_DIR, else random ones in Qwen2.5-0.5B's shape (tied embeddings). Random token ids, masked as SFT.

Each (pass, path, size) runs in its own process: its memory is the peak RSS during the pass minus the RSS after the
model is loaded (the high-water mark is reset then), so the weights do not count; the processes run with a fixed
glibc mmap threshold, so that freed activations leave RSS as a GPU allocator's would. fp32 on CPU (the qwen preset
runs bf16 autocast on CUDA: activations and logits partly half the size there; the ratios are what carry over). The
preset's shapes do not fit a 24 GB machine on the full-logits path (32 × 1,024 × 151,936 fp32 logits are 20 GB before
any copy), so two reduced sizes are measured. Each phase of a pass (decoder forward, head and loss, head backward,
decoder backward) has its own peak, growing at its own rate; a line through each phase's two measurements (fixed MiB
+ MiB per token of the batch) is extrapolated to the preset's batches, and the largest phase is the pass's peak —
printed as an extrapolation, not a measurement. About 15 minutes on 2 busy CPU cores.
"""
import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import batching, config, logprobs, modeling, preference, sft  # noqa: E402
from helpers.rloo import sample_rows  # noqa: E402
from helpers.batching import collate, to_device  # noqa: E402
from helpers.modeling import autocast_context, model_device  # noqa: E402
import qwen_budget  # noqa: E402

VOCAB, PAD = 151_936, 151_643          # Qwen2.5's vocabulary and <|endoftext|>
QWEN_05B = dict(vocab_size=VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6, pad_token_id=PAD)
RLOO_PROMPT_SHARE = 150 / (150 + 1024)  # the preset's RLOO rows: ~150 prompt + 1,024 response tokens

# measured sizes: rows × tokens per row (DPO: one pair = two rows; RLOO: one prompt × k = 2 rows). Both sizes put
# at least one full chunk of logits (logprobs.CHUNK_LOGITS: 110 positions) through the head, so the line through them
# has the lean path's fixed cost as its intercept and only what grows with the batch as its slope; small enough for
# 2 CPU cores (a 0.5B forward pass takes ~20-60 s per 1,000 tokens there) and for 24 GB on the full-logits path.
SIZES = {"evaluate_loss": [dict(rows=2, length=512), dict(rows=2, length=1024)],
         "dpo_reference": [dict(rows=2, length=512), dict(rows=2, length=1024)],
         "rloo_step": [dict(rows=2, length=256), dict(rows=2, length=512)]}
# the preset's shapes, and the tokens of the largest batch each path holds at once
PRESET = {"evaluate_loss": ("32 rows × 1,024", 32, 1024),
          "dpo_reference": ("32 pairs × 1,024 (64 rows)", 64, 1024),
          "rloo_step": ("8 prompts × k=8 × 1,174 (64 rows)", 64, 1174)}
SFT_STEP = dict(rows=2, length=512)
MEMORY_TARGET = 0.3                     # lean / full-logits peak at the preset's shapes, at most


def preset_batch_tokens(name: str, path: str) -> int:
    _, rows, length = PRESET[name]
    if name == "rloo_step":             # one micro-batch with gradients, both paths
        return rows * length
    if path == "full_logits":                   # evaluate_loss and pair_logps: 32 rows / 32 pairs a batch
        return rows * length
    if name == "dpo_reference":         # pair_logps batches pairs by pair_length = chosen + rejected tokens
        batches = batching.token_budget_batches([2 * length] * (rows // 2))
        return max(2 * len(b) for b in batches) * length
    return max(len(b) for b in batching.token_budget_batches([length] * rows)) * length


# ═══ the full-logits reference (the baseline, kept runnable): full-vocabulary fp32 logits, 32 rows / pairs a batch
def full_logits_sft_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    weights = batch["loss_weights"][:, 1:] if "loss_weights" in batch else (labels != -100).float()
    token_loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.clamp(min=0).reshape(-1),
                                 reduction="none").view_as(labels)
    return (token_loss * weights).sum(), {}


@torch.no_grad()
def full_logits_evaluate_loss(model, examples: list[dict], pad_token_id: int, batch_size: int = 32) -> float:
    was_training = model.training
    model.eval()
    collate_fn, total, units = sft.sft_collate(pad_token_id), 0.0, 0.0
    dev = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(dev) for k, v in collate_fn(examples[i:i + batch_size]).items()}
        with autocast_context(dev):
            summed, _ = full_logits_sft_loss(model, batch)
        total, units = total + float(summed), units + float(batch["normalizer"])
    model.train(was_training)
    return total / max(units, 1.0)


def full_logits_sequence_logps(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    token_logps = torch.gather(logits, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * (labels != -100)).sum(-1)


def full_logits_can_share_prompt(model) -> bool:
    return not getattr(model, "is_activation_checkpointing", False)   # any mode: the qwen preset never shared


def full_logits_shared_prompt_logps(model, samples: list[dict], k: int, pad_id: int) -> torch.Tensor:
    prompt_out, out, response_ids, response_mask = logprobs.shared_prompt_forward(
        model, [s["prompt_ids"] for s in samples[::k]], [s["response_ids"] for s in samples], pad_id)
    logits = torch.cat([prompt_out.logits[:, -1:].repeat_interleave(k, 0), out.logits[:, :-1]], 1).float()
    token_logps = torch.gather(logits, 2, response_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    trained = torch.tensor([s.get("trained", [1] * len(s["response_ids"])) + [0] * (response_ids.shape[1] - len(
        s["response_ids"])) for s in samples], device=response_mask.device) * response_mask
    return (token_logps * trained).sum(-1)


def full_logits_pair_sequence_logps(model, batch) -> torch.Tensor:
    if not full_logits_can_share_prompt(model):
        return full_logits_sequence_logps(model, batch)
    logps = full_logits_shared_prompt_logps(model, logprobs.pair_samples(batch["pairs"]), 2, batch["pad_token_id"])
    return torch.cat([logps[0::2], logps[1::2]])


@torch.no_grad()
def full_logits_pair_logps(model, pairs: list[dict], pad_token_id: int, batch_size: int = 32) -> tuple[list, list]:
    was_training = model.training
    model.eval()
    collate_fn, dev, chosen, rejected = preference.pair_collate(pad_token_id), model_device(model), [], []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in collate_fn(pairs[i:i + batch_size]).items()}
        with autocast_context(dev):
            logps = full_logits_pair_sequence_logps(model, batch).float().cpu()
        n = len(pairs[i:i + batch_size])
        chosen += logps[:n].tolist()
        rejected += logps[n:].tolist()
    model.train(was_training)
    return chosen, rejected
# ═══ end of the full-logits reference ═══


def ids(gen, n: int) -> list[int]:
    return torch.randint(0, PAD, (n,), generator=gen).tolist()


def sft_rows(gen, rows: int, length: int) -> list[dict]:
    """SFT examples: the first half is the prompt (labels -100), the second half the trained response."""
    out = []
    for _ in range(rows):
        x = ids(gen, length)
        out.append({"input_ids": x, "attention_mask": [1] * length,
                    "labels": [-100] * (length // 2) + x[length // 2:]})
    return out


def dpo_pairs(gen, pairs: int, length: int) -> list[dict]:
    """Pairs of two `length`-token rows sharing a prompt of half the length; the responses differ from their
    first token on."""
    out = []
    for _ in range(pairs):
        prompt = ids(gen, length // 2)
        chosen, rejected = (prompt + ids(gen, length - len(prompt)) for _ in range(2))
        rejected[len(prompt)] = (chosen[len(prompt)] + 1) % PAD
        out.append({key: {"input_ids": x, "attention_mask": [1] * length,
                          "labels": [-100] * len(prompt) + x[len(prompt):]}
                    for key, x in (("chosen", chosen), ("rejected", rejected))})
    return out


def rloo_samples(gen, k: int, length: int) -> list[dict]:
    """k samples of one prompt, the preset's prompt share of each row."""
    prompt = ids(gen, round(length * RLOO_PROMPT_SHARE))
    return [{"prompt_ids": prompt, "response_ids": ids(gen, length - len(prompt))} for _ in range(k)]


def build_random_model(target: Path) -> None:
    """Qwen2.5-0.5B's shape with random weights, saved once so every measured process loads the same model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    modeling.save_model(Qwen2ForCausalLM(Qwen2Config(**QWEN_05B)), target)


def load_policy(model_dir: str):
    """The qwen preset's policy: fp32 master weights, LoRA adapters (QWEN_LORA), gradient checkpointing on,
    dropout off (as DPO and RLOO run)."""
    model = modeling.load_model(model_dir, lora_cfg=config.QWEN_LORA)
    with torch.no_grad():       # weights read from disk are memory-mapped: copy them in, or paging them in
        for p in model.parameters():        # during the pass would count as the pass's memory (ties kept)
            p.data = p.data.clone()
    modeling.enable_checkpointing(model)
    modeling.disable_dropout(model)
    return model


def memory_status() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":")
            fields[name] = int(value.split()[0]) / 1024
    return fields


def reset_peak() -> bool:
    """Release freed heap to the OS and reset the process's RSS high-water mark (Linux clear_refs 5)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


PHASES = ("decoder forward", "head forward", "head backward", "decoder backward")


class Phases:
    """The peak of each phase of a pass, above the RSS after loading: the decoder's forward, the head and loss
    (everything after the decoder), the head's backward, the decoder's backward. Hooks on the decoder mark the
    switches; the high-water mark is reset at each. Each phase's peak grows at its own rate (the full-logits path's head
    by the vocabulary per token, the lean one's by nothing once a chunk is full), so each is extrapolated alone."""

    def __init__(self, decoder, base_mib: float):
        self.base, self.current, self.peaks = base_mib, "setup", {}
        decoder.register_forward_pre_hook(lambda *_: self.switch("decoder forward"))
        decoder.register_forward_hook(self.after_decoder)

    def after_decoder(self, module, args, output):
        self.switch("head forward")
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is not None and hidden.requires_grad:     # its gradient is complete once the head's backward is
            hidden.register_hook(lambda grad: self.switch("decoder backward"))

    def switch(self, phase: str | None):
        peak = memory_status()["VmHWM"] - self.base
        self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), peak)
        reset_peak()
        self.current = phase


def run_pass(name: str, path: str, rows: int, length: int, model_dir: str) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = load_policy(model_dir)
    if name in ("evaluate_loss", "sft_step"):
        data = sft_rows(gen, rows, length)
    elif name == "dpo_reference":
        data = dpo_pairs(gen, rows // 2, length)
    else:
        data = rloo_samples(gen, rows, length)
        advantages = torch.randn(rows, generator=gen)
    lora = [p for p in model.parameters() if p.requires_grad]
    if not reset_peak():
        raise RuntimeError("needs Linux's /proc/self/clear_refs to reset the peak RSS after loading the model")
    phases = Phases(logprobs.causal_lm_parts(model)[0], memory_status()["VmRSS"])
    started = time.perf_counter()
    if name == "evaluate_loss":
        value = (full_logits_evaluate_loss if path == "full_logits" else sft.evaluate_loss)(model, data, PAD)
    elif name == "dpo_reference":
        pair_logps = full_logits_pair_logps if path == "full_logits" else preference.pair_logps
        chosen, rejected = pair_logps(model, data, PAD)
        value = sum(chosen) + sum(rejected)
    elif name == "rloo_step":           # train mode + gradient checkpointing: full sequences on both paths
        model.train()
        assert not logprobs.can_share_prompt(model) and not full_logits_can_share_prompt(model)
        seqs = to_device(collate(sample_rows(data), PAD), model_device(model))
        logps = (full_logits_sequence_logps if path == "full_logits" else logprobs.sequence_logps)(model, seqs)
        loss = -(advantages * logps).sum()
        phases.switch("head backward")
        loss.backward()
        value = float(loss)
    else:                               # one SFT micro-batch: sft_loss + backward
        model.train()
        batch = sft.sft_collate(PAD)(data)
        loss, _ = (full_logits_sft_loss if path == "full_logits" else sft.sft_loss)(model, batch)
        loss = loss / batch["normalizer"]
        phases.switch("head backward")
        loss.backward()
        value = float(loss)
    seconds = time.perf_counter() - started
    phases.switch(None)
    if name in ("rloo_step", "sft_step"):
        assert all(p.grad is not None for p in lora), "LoRA adapters got no gradient"
    peaks = {k: v for k, v in phases.peaks.items() if k in PHASES}
    return {"pass": name, "path": path, "rows": rows, "length": length, "tokens": rows * length, "value": value,
            "seconds": seconds, "rss_after_load_mib": phases.base, "delta_mib": max(phases.peaks.values()),
            "phases_mib": peaks, "lora_parameters": sum(p.numel() for p in lora)}


def child(args: list[str], env: dict) -> dict:
    # glibc keeps freed blocks under its dynamic mmap threshold (up to 32 MiB) in the heap: RSS then counted ~0.9 GiB
    # of a forward pass's freed activations as in use. A fixed 128 KiB threshold hands them back, so RSS follows
    # the live tensors (what a GPU's max_memory_allocated reports).
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", **env}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed MiB, MiB per token) of the line through the two measured sizes."""
    (t0, m0), (t1, m1) = points
    slope = (m1 - m0) / (t1 - t0)
    return m0 - slope * t0, slope


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--build":
        build_random_model(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("QWEN_MODEL_DIR") or None,
                        help="a Qwen2.5-architecture checkpoint (default: $QWEN_MODEL_DIR, else random weights)")
    parser.add_argument("--passes", default="evaluate_loss,dpo_reference,rloo_step,sft_step",
                        help="comma-separated subset of the passes")
    parser.add_argument("--child", nargs=4, metavar=("PASS", "PATH", "ROWS", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, path, rows, length = args.child
        print(json.dumps(run_pass(name, path, int(rows), int(length), args.model)))
        return
    passes = args.passes.split(",")
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(Path(tmp) / "qwen2.5-0.5b-shaped")
            subprocess.run([sys.executable, __file__, "--build", model_dir], check=True, env=env)
        weights = args.model or "random weights in Qwen2.5-0.5B's shape (tied embeddings)"
        print(f"model: {weights}; LoRA {config.QWEN_LORA['r']} on every linear layer, gradient checkpointing on, "
              f"fp32 on CPU, {torch.get_num_threads()} threads")
        print("memory = peak RSS during the pass − RSS after loading the model (its own process each)\n")
        results = {}
        header = f"{'pass':<14} {'size':<18} {'full MiB':>8} {'lean MiB':>8} {'lean/full':>9} " \
                 f"{'full MiB/tok':>12} {'lean MiB/tok':>12} {'full s':>6} {'lean s':>6}  |full-lean| value"
        if set(passes) & set(SIZES):
            print(header)
        for name in (p for p in SIZES if p in passes):
            for size in SIZES[name]:
                rows, length = size["rows"], size["length"]
                got = {path: child(["--child", name, path, str(rows), str(length), "--model", model_dir], env)
                       for path in ("full_logits", "lean")}
                results.setdefault(name, []).append(got)
                shape = {"evaluate_loss": f"{rows} rows × {length}", "dpo_reference": f"{rows // 2} pair × {length}",
                         "rloo_step": f"1 × k={rows} × {length}"}[name]
                if any("error" in g for g in got.values()):
                    print(f"{name:<14} {shape:<18} failed: {got}")
                    continue
                full, lean = got["full_logits"], got["lean"]
                print(f"{name:<14} {shape:<18} {full['delta_mib']:>8.0f} {lean['delta_mib']:>8.0f} "
                      f"{lean['delta_mib'] / full['delta_mib']:>8.2f}x {full['delta_mib'] / full['tokens']:>12.3f} "
                      f"{lean['delta_mib'] / lean['tokens']:>12.3f} {full['seconds']:>6.0f} {lean['seconds']:>6.0f}  "
                      f"{abs(full['value'] - lean['value']):.2e}")
        fits = extrapolate(results)
        if set(fits) == set(SIZES):     # every pass measured: the per-stage estimate at the preset (README table)
            saved = Path(tempfile.gettempdir()) / "bench_memory_fits.json"
            saved.write_text(json.dumps(fits, indent=1))
            print(f"\n(phase lines saved to {saved}; `python benchmarks/qwen_budget.py {saved}` prints the tables)")
            qwen_budget.print_memory(fits)
            qwen_budget.print_time()
        if "sft_step" in passes:
            rows, length = SFT_STEP["rows"], SFT_STEP["length"]
            got = child(["--child", "sft_step", "lean", str(rows), str(length), "--model", model_dir], env)
            if "error" in got:
                print(f"\nSFT micro-batch failed: {got}")
            else:
                print(f"\nSFT micro-batch, lean path ({rows} rows × {length}, half of each row trained; sft_loss + "
                      f"backward, LoRA + gradient checkpointing, fp32, no optimizer state): {got['delta_mib']:.0f} MiB"
                      f" = {got['delta_mib'] / got['tokens']:.3f} MiB per token ({got['seconds']:.0f} s); by phase: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in got["phases_mib"].items()))
                if "rloo_step" in fits:     # the same code (weighted_token_logps with gradients), other data
                    q = config.PROFILES["qwen"]().sft
                    tokens = q.batch_size * q.max_length
                    at = {phase: fixed + per_token * tokens for phase, (fixed, per_token) in fits["rloo_step"].items()}
                    top = max(at, key=at.get)
                    print(f"  EXTRAPOLATION with the RLOO step's phase lines (same code with backward) to the qwen "
                          f"preset's SFT micro-batch ({q.batch_size} × {q.max_length:,}): {at[top] / 1024:.1f} GiB "
                          f"({top}: {fits['rloo_step'][top][0]:.0f} MiB + {fits['rloo_step'][top][1]:.3f} MiB/token)")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def extrapolate(results: dict) -> dict:
    """Prints the extrapolation; returns the lean path's {phase: (fixed MiB, MiB per token)} per pass."""
    fits = {}
    if not results:
        return fits
    print("\nEXTRAPOLATION to the qwen preset's shapes (not measured): each phase's peak on a line through the two "
          "sizes above\n(fixed MiB + MiB per token of the batch held at once), the pass's peak the largest phase's")
    print(f"{'pass':<14} {'preset shape':<34} {'path':<11} {'batch tokens':>12} "
          + " ".join(f"{p:>16}" for p in PHASES) + f" {'peak GiB':>8}  largest phase: fixed MiB + MiB/token")
    for name, sizes in results.items():
        if any("error" in g for size in sizes for g in size.values()):
            continue
        gib = {}
        for path in ("full_logits", "lean"):
            tokens = preset_batch_tokens(name, path)
            lines = {phase: fit([(size[path]["tokens"], size[path]["phases_mib"][phase]) for size in sizes])
                     for phase in PHASES if all(phase in size[path]["phases_mib"] for size in sizes)}
            at = {phase: (fixed + per_token * tokens) / 1024 for phase, (fixed, per_token) in lines.items()}
            top = max(at, key=at.get)
            gib[path] = at[top]
            if path == "lean":
                fits[name] = lines
            cells = " ".join(f"{at[p]:>16.1f}" if p in at else f"{'-':>16}" for p in PHASES)
            print(f"{name:<14} {PRESET[name][0]:<34} {path:<11} {tokens:>12,} {cells} {gib[path]:>8.1f}  "
                  f"{top}: {lines[top][0]:.0f} + {lines[top][1]:.3f}")
        ratio = gib["lean"] / gib["full_logits"]
        print(f"{'':<14} {'':<34} lean/full {ratio:.3f}x "
              f"({'meets' if ratio <= MEMORY_TARGET else 'misses'} the {MEMORY_TARGET}x target)")
    return fits


if __name__ == "__main__":
    main()
