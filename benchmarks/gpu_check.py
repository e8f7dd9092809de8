"""Every stage of the `qwen` pipeline for 2–3 steps at the preset's shapes on this device: peak memory, step time
and decoding speed, in one table — what `benchmarks/qwen_budget.py` assumes, measured.

    .venv/bin/python benchmarks/gpu_check.py           # CUDA: Qwen2.5-0.5B's shapes, random weights (no hub);
                                                       # without a GPU: tiny shapes, a test of the script
    .venv/bin/python benchmarks/gpu_check.py --tiny    # tiny shapes on any device (make test)

The model is a randomly initialised Qwen2.5-0.5B (its real shapes and tied head) with the real tokenizer from
../shared/qwen2.5-tokenizer (or --tokenizer DIR). Rows are random tokens at each stage's length cap; RLOO's prompts
are real Countdown prompts, and random weights never stop early, so every sampling call runs to its token cap — the
estimator's upper bound. Each stage runs the project's own loss (sft_loss, DPO/IPO, Bradley–Terry, RLOO) under the
same autocast, LoRA and checkpointing as training. Decoding is timed eager and, on CUDA, with the compiled static-
cache step (`generation.sample_completions(compiled=True)`, i.e. `sample_policy_static`). Within ~8 minutes on one
GPU. What it leaves out: RLOO's reference forward (its scoring row is the policy's pass alone), the reference and
the judge beside the sampling (its calls are wider than RLOO's), prompts longer than Countdown's (evaluation).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import config, countdown, dpo, generation, logprobs, modeling, reward_model, rloo, sft  # noqa: E402
from helpers.batching import collate, to_device  # noqa: E402
from helpers.preference import pair_collate  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "qwen2.5-tokenizer"
SHAPES = {"qwen": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)}


def sizes(tiny: bool) -> dict:
    """Rows and lengths per stage: the qwen preset's micro-batches, or a few short rows (--tiny)."""
    q = config.get_config("qwen")
    if tiny:
        return dict(sft=(2, 48), dpo=(2, 48), reward=(2, 48), rloo_prompts=2, k=2, new_tokens=8, eval_rows=4)
    return dict(sft=(q.sft.batch_size, q.sft.max_length), dpo=(q.dpo.batch_size, q.dpo.max_length),
                reward=(q.reward.batch_size, q.reward.max_length), rloo_prompts=q.rloo.batch_size * q.rloo.grad_accum,
                k=q.rloo.k, new_tokens=q.rloo.max_new_tokens, eval_rows=q.eval.countdown_rows)


def build(tokenizer, tiny: bool, dev):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, max_position_embeddings=32768,
                      eos_token_id=tokenizer.convert_tokens_to_ids(modeling.IM_END),
                      pad_token_id=tokenizer.pad_token_id, **SHAPES["tiny" if tiny else "qwen"])
    return Qwen2ForCausalLM(cfg).to(dev)


def rows(gen, n: int, length: int, vocab: int, prompt: int | None = None) -> list[dict]:
    """n rows of random tokens, a quarter of them prompt (-100 labels); `prompt` fixes the prompt tokens' ids."""
    p = length // 4
    head = torch.randint(0, vocab, (p,), generator=gen).tolist() if prompt is not None else None
    out = []
    for _ in range(n):
        ids = (head or torch.randint(0, vocab, (p,), generator=gen).tolist()) + \
            torch.randint(0, vocab, (length - p,), generator=gen).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * p + ids[p:]})
    return out


class Meter:
    """Peak memory (CUDA: max_memory_allocated) and wall time of what runs inside, per stage."""

    def __init__(self, dev):
        self.dev, self.rows = dev, []

    def run(self, stage: str, shape: str, steps: int, fn, decode_steps: int = 0):
        cuda = self.dev.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fn()                                    # the first step: warm-up (allocations, kernels), not timed
        started = time.perf_counter()
        for _ in range(steps - 1):
            fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / max(1, steps - 1)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        self.rows.append((stage, shape, peak, seconds, decode_steps / seconds if decode_steps else None))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on any device (a test of the script)")
    parser.add_argument("--tokenizer", default=str(TOKENIZER), help="a Qwen2.5 tokenizer dir")
    parser.add_argument("--steps", type=int, default=3, help="steps per stage (the first is a warm-up)")
    args = parser.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and dev.type != "cuda":
        print("no CUDA device: the qwen shapes need a GPU, so this runs the script at tiny shapes", file=sys.stderr)
        args.tiny = True
    if not (Path(args.tokenizer) / "tokenizer.json").exists():
        print(f"no tokenizer in {args.tokenizer}: pass --tokenizer DIR (a Qwen2.5 tokenizer)", file=sys.stderr)
        return 2
    modeling.quiet_output()
    tokenizer, s, gen = modeling.load_tokenizer(args.tokenizer), sizes(args.tiny), torch.Generator().manual_seed(0)
    vocab, pad, q = len(tokenizer), tokenizer.pad_token_id, config.get_config("qwen")
    meter = Meter(dev)
    policy = modeling.add_lora(build(tokenizer, args.tiny, dev), config.QWEN_LORA)
    modeling.enable_checkpointing(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def step(loss_fn, batch):
        with modeling.autocast_context(dev):
            loss, _ = loss_fn(policy, batch)
        (loss / batch["normalizer"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    n, length = s["sft"]
    batch = to_device(sft.sft_collate(pad)(rows(gen, n, length, vocab)), dev)
    meter.run("SFT", f"{n} × {length:,}", args.steps, lambda: step(sft.sft_loss, batch))
    n, length = s["dpo"]
    pairs = [{"chosen": c, "rejected": r, "ref_chosen_logps": -1.0, "ref_rejected_logps": -1.0}
             for c, r in zip(rows(gen, n, length, vocab, prompt=1), rows(gen, n, length, vocab, prompt=1))]
    batch = to_device(pair_collate(pad)(pairs), dev)
    loss_fn = dpo.make_dpo_loss(q.dpo.beta, q.dpo.sft_weight, q.dpo.loss_type)
    meter.run("DPO", f"{n} pairs × 2 × {length:,}", args.steps, lambda: step(loss_fn, batch))

    # sampling: one RLOO step's prompts (real Countdown prompts) × k, as wide as memory allows
    rcfg = config.replace_config(q.rloo, k=s["k"], max_new_tokens=s["new_tokens"])
    prompts = [countdown.countdown_prompt([3 + i % 50, 7, 11, 19][:3 + i % 2], 24 + i, "warmstart")
               for i in range(s["rloo_prompts"])]
    per_call = generation.rollout_prompts(policy, tokenizer, prompts, rcfg.k, rcfg.max_new_tokens,
                                          q.eval.sampling_memory) or len(prompts)
    samples = []

    def sample(compiled: bool):
        torch.manual_seed(0)
        samples[:] = []
        for i in range(0, len(prompts), per_call):
            samples.extend(generation.sample_completions(policy, tokenizer, prompts[i:i + per_call], rcfg.k,
                                                         rcfg.max_new_tokens, rcfg.temperature, compiled))
    decode = -(-len(prompts) // per_call) * rcfg.max_new_tokens
    shape = f"{len(prompts)} prompts × {rcfg.k}, {min(per_call, len(prompts)) * rcfg.k} rows a call"
    meter.run("RLOO sampling, eager", shape, 2, lambda: sample(False), decode)
    if dev.type == "cuda":
        meter.run("RLOO sampling, compiled", shape, 2, lambda: sample(True), decode)

    micro = samples[:rcfg.batch_size * rcfg.k]                  # one micro-batch's groups

    def rloo_step():
        rewards = torch.tensor([countdown.countdown_reward(x["text"], 24, [3, 7, 11]) for x in micro])
        with modeling.autocast_context(dev):
            if logprobs.can_share_prompt(policy):
                logps = logprobs.shared_prompt_logps(policy, micro, rcfg.k, pad)
            else:                                   # checkpointing keeps no cache: whole rows, as run_rloo does
                logps = logprobs.sequence_logps(policy, to_device(collate(rloo.sample_rows(micro), pad), dev))
            loss = rloo.rloo_loss(logps, rewards, rcfg.k, None, 0.0)
        (loss / len(micro)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    longest = max(len(x["prompt_ids"]) for x in micro) + rcfg.max_new_tokens
    meter.run("RLOO scoring step", f"{len(micro)} rows ≤ {longest:,}", args.steps, rloo_step)

    # evaluation: greedy Countdown prompts, one call as wide as memory allows
    eval_cfg = config.replace_config(q.eval, max_new_tokens=s["new_tokens"])
    conversations = (prompts * (-(-s["eval_rows"] // len(prompts))))[:s["eval_rows"]]
    row = max(len(generation.encode_prompt(tokenizer, c)) for c in conversations) + eval_cfg.max_new_tokens
    width = min(generation.memory_rows(policy, row, eval_cfg.sampling_memory) or eval_cfg.batch_size,
                len(conversations))                                 # as generate_eval sizes its calls
    meter.run("evaluation, greedy", f"{len(conversations)} Countdown prompts, {width} a call", 2,
              lambda: generation.generate_eval(policy, tokenizer, conversations, eval_cfg),
              -(-len(conversations) // width) * eval_cfg.max_new_tokens)

    # the reward model: full fine-tuning of a scalar head on the (merged) policy
    from transformers import Qwen2ForSequenceClassification
    base_config = policy.get_base_model().config
    policy = optimizer = params = None            # freed before the reward model's full fine-tuning
    import gc
    gc.collect()
    torch._dynamo.reset()                         # the compiled step holds the policy
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    base_config.num_labels, base_config.pad_token_id = 1, pad       # a scalar head read at the last real token
    rm = Qwen2ForSequenceClassification(base_config).to(dev)
    rm_params = list(rm.parameters())
    rm_optimizer = torch.optim.AdamW(rm_params, lr=1e-6)
    modeling.enable_checkpointing(rm)
    n, length = s["reward"]
    pairs = [{"chosen": c, "rejected": r} for c, r in zip(rows(gen, n, length, vocab, prompt=1),
                                                         rows(gen, n, length, vocab, prompt=1))]
    batch = to_device(pair_collate(pad)(pairs), dev)

    def rm_step():
        with modeling.autocast_context(dev):
            loss, _ = reward_model.bradley_terry_loss(rm, batch)
        (loss / batch["normalizer"]).backward()
        rm_optimizer.step()
        rm_optimizer.zero_grad(set_to_none=True)
    meter.run("reward model (full)", f"{n} pairs × 2 × {length:,}", args.steps, rm_step)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, {'tiny' if args.tiny else 'Qwen2.5-0.5B'} shapes, random weights "
          f"({sum(p.numel() for p in rm.model.parameters()):,} decoder parameters); torch {torch.__version__}")
    print(f"{'stage':<26} {'shape':<40} {'peak GiB':>8} {'s/step':>8} {'decode steps/s':>14}")
    for stage, shape, peak, seconds, rate in meter.rows:
        peak = f"{peak:.2f}" if peak == peak else "—"              # no peak off CUDA
        print(f"{stage:<26} {shape:<40} {peak:>8} {seconds:>8.2f} {f'{rate:.1f}' if rate else '—':>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
