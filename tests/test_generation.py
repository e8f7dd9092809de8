"""Generation: batched greedy equals one at a time, stops at <|im_end|>, restores modes; exact sampled ids."""
import os
import time

import torch

from helpers import config, formatting, generation, modeling, tiny_world


def test_sample_completions_returns_exact_sampled_ids():
    cfg = config.get_config("smoke")
    world = tiny_world.build_tiny_world(cfg.data)
    tokenizer = modeling.train_tiny_tokenizer([r["text"] for r in world["pretrain"]["train"]], cfg.model.vocab_size)
    model = modeling.build_tiny_model(tokenizer, cfg.model, seed=0)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    torch.manual_seed(0)
    samples = generation.sample_completions(model, tokenizer, prompts, k=3, max_new_tokens=6, temperature=1.0)
    assert len(samples) == 6
    for i, s in enumerate(samples):
        prompt_text = formatting.render_chat(tokenizer, prompts[i // 3], add_generation_prompt=True)
        assert s["prompt_ids"] == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        assert 1 <= len(s["response_ids"]) <= 6
        stops = set(generation.stop_token_ids(tokenizer))
        assert not any(t in stops for t in s["response_ids"][:-1])    # cut right after the first stop token


PROMPTS = [[{"role": "user", "content": "hello"}],
           [{"role": "user", "content": "tell me a joke why did the chicken cross the road"}],
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the capital of france is"}],
           [{"role": "user", "content": "how are you today, my friend"}],
           [{"role": "user", "content": "fine thanks"}, {"role": "assistant", "content": "good"},
            {"role": "user", "content": "answer short: to get to the other side?"}],
           [{"role": "user", "content": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"}]]


def test_batched_greedy_equals_one_at_a_time(tiny_tokenizer, lively_model):
    render = lambda p: formatting.render_chat(tiny_tokenizer, p, True)
    lengths = {len(tiny_tokenizer(render(p), add_special_tokens=False)["input_ids"]) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)                      # every prompt a different length: real left padding
    original, tiny_tokenizer.padding_side = tiny_tokenizer.padding_side, "right"
    try:
        batched = generation.generate_responses(lively_model, tiny_tokenizer, PROMPTS, batch_size=8, max_new_tokens=8,
                                       progress=False)
        assert tiny_tokenizer.padding_side == "right"      # restored
        single = [generation.generate_responses(lively_model, tiny_tokenizer, [p], batch_size=1, max_new_tokens=8,
                                       progress=False)[0] for p in PROMPTS]
        uneven = generation.generate_responses(lively_model, tiny_tokenizer, PROMPTS, batch_size=4, max_new_tokens=8,
                                      progress=False)
    finally:
        tiny_tokenizer.padding_side = original     # the tokenizer fixture is shared by the session
    assert batched == single == uneven                      # same answers, in the caller's order
    assert len(set(single)) > 1                              # distinct answers, so a reordering would show
    assert all(isinstance(s, str) and s for s in single)


def test_generation_stops_at_im_end(tiny_tokenizer, lively_model):
    """A hook forces <|im_end|> as the 4th token: the answer is the first 3 tokens, with no special text."""
    im_end = tiny_tokenizer.convert_tokens_to_ids(modeling.IM_END)
    prompts = PROMPTS[:3]
    first3 = generation.generate_responses(lively_model, tiny_tokenizer, prompts, max_new_tokens=3, progress=False)
    free8 = generation.generate_responses(lively_model, tiny_tokenizer, prompts, max_new_tokens=8, progress=False)
    assert all(len(a) > len(b) for a, b in zip(free8, first3))   # left alone, the model keeps going
    calls = []

    def force_end(module, inputs, output):
        calls.append(1)
        if len(calls) == 4:            # forward 1 = the prompt (→ token 1), forward 4 → token 4
            output = output.clone()
            output[..., im_end] = 1e4
            return output

    handle = lively_model.lm_head.register_forward_hook(force_end)
    try:
        stopped = generation.generate_responses(lively_model, tiny_tokenizer, prompts, max_new_tokens=8, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 4                                   # no forward pass after <|im_end|>
    assert stopped == first3
    assert not any("<|im_end|>" in s or "<|endoftext|>" in s for s in stopped + free8)


def test_generation_restores_training_mode_and_padding_side(tiny_tokenizer, lively_model):
    lively_model.train()
    original, tiny_tokenizer.padding_side = tiny_tokenizer.padding_side, "right"
    try:
        generation.generate_responses(lively_model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=2, progress=False)
        assert lively_model.training and tiny_tokenizer.padding_side == "right"
    finally:
        lively_model.eval()
        tiny_tokenizer.padding_side = original


def test_a_repeated_prompt_runs_once_and_samples_what_k_separate_prompts_would(tiny_tokenizer, lively_model,
                                                                                monkeypatch):
    """k samples of one prompt share its KV cache (the prompt's forward has one row per distinct prompt), and the
    samples are the ones drawn without sharing: same seed, same tokens."""
    rows = []
    hook = lively_model.model.embed_tokens.register_forward_hook(lambda m, inputs, out: rows.append(inputs[0].shape))
    prompts = [p for p in PROMPTS[:3] for _ in range(4)]
    sample = lambda: generation.generate_responses(lively_model, tiny_tokenizer, prompts, max_new_tokens=8,
                                                   temperature=1.0, seed=0, progress=False)
    k_samples = lambda: generation.sample_completions(lively_model, tiny_tokenizer, PROMPTS[:3], k=4,
                                                      max_new_tokens=8, temperature=1.0)
    try:
        shared = sample()
        assert rows[0][0] == 3 and rows[1] == (12, 1)        # 3 distinct prompts once, then 12 rows a token each
        torch.manual_seed(1)
        shared_k = k_samples()
        rows.clear()
        monkeypatch.setattr(generation, "shared_prompt_cache", lambda model, enc: None)
        separate = sample()
        assert rows[0][0] == 12                               # without sharing: every row's whole prompt
        torch.manual_seed(1)
        separate_k = k_samples()
    finally:
        hook.remove()
    assert shared == separate and len(set(shared)) > 3        # different samples, the same under both
    assert [s["response_ids"] for s in shared_k] == [s["response_ids"] for s in separate_k]


def test_distinct_prompts_need_no_shared_cache(tiny_tokenizer, lively_model):
    enc = generation.left_padded([[5, 6, 7], [8, 9], [5, 6, 7, 8]], tiny_tokenizer.pad_token_id, "cpu")
    assert generation.shared_prompt_cache(lively_model, enc) is None
    repeated = generation.left_padded([[5, 6, 7], [8, 9], [5, 6, 7]], tiny_tokenizer.pad_token_id, "cpu")
    cache = generation.shared_prompt_cache(lively_model, repeated)
    assert cache.get_seq_length() == 2 and cache.layers[0].keys.shape[0] == 3     # all but the last token, per row
    assert torch.equal(cache.layers[0].keys[0], cache.layers[0].keys[2])


def test_sampling_drops_finished_rows_and_draws_what_generate_draws(tiny_tokenizer, lively_model):
    """`sample_completions` runs a stopped row no further, yet its samples are `generate`'s for the same seed (every
    step draws for every row, as generate does). A hook makes <|im_end|> likely, so rows stop at different steps."""
    im_end = tiny_tokenizer.convert_tokens_to_ids(modeling.IM_END)

    def likelier_end(module, inputs, output):
        output = output.clone()
        output[..., im_end] += 4.0
        return output
    rows = []
    hooks = [lively_model.lm_head.register_forward_hook(likelier_end),
             lively_model.model.embed_tokens.register_forward_hook(lambda m, inputs, out: rows.append(inputs[0].shape))]
    stops = generation.stop_token_ids(tiny_tokenizer)
    try:
        torch.manual_seed(3)
        ours = generation.sample_completions(lively_model, tiny_tokenizer, PROMPTS[:4], k=4, max_new_tokens=10,
                                             temperature=1.0)
        decoded = [shape[0] for shape in rows[1:]]            # rows fed at each decoding step (after the prefill)
        enc = generation.left_padded([formatting.encode_prompt(tiny_tokenizer, p) for p in PROMPTS[:4]],
                                     tiny_tokenizer.pad_token_id, "cpu")
        torch.manual_seed(3)
        with torch.no_grad():
            out = lively_model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=10,
                                        num_return_sequences=4, eos_token_id=stops,
                                        pad_token_id=tiny_tokenizer.pad_token_id)
    finally:
        for hook in hooks:
            hook.remove()
    theirs = [row[enc["input_ids"].shape[1]:].tolist() for row in out]
    theirs = [r[:next((i + 1 for i, t in enumerate(r) if t in stops), len(r))] for r in theirs]
    assert [s["response_ids"] for s in ours] == theirs
    lengths = {len(s["response_ids"]) for s in ours}
    assert len(lengths) > 2                                   # rows stopped at different steps
    assert rows[0][0] == 4 and decoded[0] == 16                # 4 prompts prefilled once, then 16 rows
    assert decoded[-1] < 16 and decoded == sorted(decoded, reverse=True)     # fewer as rows stop


def test_plain_temperature_sampling_of_responses_is_generates(tiny_tokenizer, lively_model, monkeypatch):
    """`generate_responses` at top_p 1 / top_k 0 (DPO's on-policy samples) samples through `sample_policy`: the same
    texts as `generate` for the same seed."""
    prompts = [p for p in PROMPTS for _ in range(3)]
    sample = lambda: generation.generate_responses(lively_model, tiny_tokenizer, prompts, batch_size=8,
                                                   max_new_tokens=8, temperature=1.0, seed=5, progress=False)
    calls = []
    real = generation.sample_policy
    monkeypatch.setattr(generation, "sample_policy", lambda *args: calls.append(1) or real(*args))
    ours = sample()
    assert calls                                              # it went through sample_policy

    def via_generate(model, enc, max_new_tokens, temperature, stops, compiled=False):
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, eos_token_id=stops,
                             pad_token_id=tiny_tokenizer.pad_token_id)
        return out[:, enc["input_ids"].shape[1]:]
    monkeypatch.setattr(generation, "sample_policy", via_generate)
    assert sample() == ours and len(set(ours)) > len(PROMPTS)


def test_next_token_keeps_the_nucleus_only():
    """top_p = 0.5 over probabilities 0.6, 0.3, 0.1: the nucleus is the first token alone; 0.7 adds the second."""
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    torch.manual_seed(0)
    assert {generation.next_token(logits, 1.0, 0.5) for _ in range(50)} == {0}
    assert {generation.next_token(logits, 1.0, 0.7) for _ in range(200)} == {0, 1}
    assert generation.next_token(logits, 0.0) == 0                               # greedy


def test_stream_text_is_the_greedy_reply_piece_by_piece(lively_model, tiny_tokenizer):
    """The chat's decoding loop gives, greedily, exactly the evaluation path's answer; Stop ends it between tokens."""
    messages = [{"role": "user", "content": "hello there"}]
    prompt = formatting.encode_prompt(tiny_tokenizer, messages)
    pieces = list(generation.stream_text(lively_model, tiny_tokenizer, prompt, 12))
    expected = generation.generate_responses(lively_model, tiny_tokenizer, [messages], max_new_tokens=12,
                                             progress=False)[0]
    assert "".join(pieces).strip() == expected and len(pieces) >= 2
    calls = []
    stopped = list(generation.stream_text(lively_model, tiny_tokenizer, prompt, 12,
                                          should_stop=lambda: calls.append(1) or len(calls) > 2))
    assert len(stopped) <= 2 and "".join(stopped) == "".join(pieces)[:len("".join(stopped))]


def test_evaluation_calls_are_as_wide_as_memory_holds(lively_model, tiny_tokenizer, monkeypatch):
    """`eval.sampling_memory` on a GPU (pretended here) sizes a generate call by the free memory: rows of the longest
    prompt + max_new_tokens, far past `batch_size`; without a GPU the configured sizes hold."""
    cfg = config.get_config("smoke", eval__sampling_memory=0.5, eval__batch_size=4, eval__max_new_tokens=2)
    seen, real = [], generation.token_budget_batches
    monkeypatch.setattr(generation, "token_budget_batches",
                        lambda lengths, tokens, max_rows: seen.append((max_rows, tokens)) or real(lengths, tokens,
                                                                                                 max_rows))
    conversations = [[{"role": "user", "content": "What is 2 + 3?"}]] * 10
    generation.generate_eval(lively_model, tiny_tokenizer, conversations, cfg.eval)
    assert seen[-1] == (4, cfg.eval.generation_tokens)
    monkeypatch.setattr(generation, "free_gpu_bytes", lambda device: 10 ** 8)
    wide = generation.generate_eval(lively_model, tiny_tokenizer, conversations, cfg.eval)
    row = len(formatting.encode_prompt(tiny_tokenizer, conversations[0])) + cfg.eval.max_new_tokens
    rows = generation.memory_rows(lively_model, row, 0.5)
    assert rows > 100 and seen[-1] == (rows, rows * row)
    assert len(wide) == 10


def test_static_cache_sampling_draws_the_same_samples(tiny_tokenizer, lively_model):
    """The compiled step's code path (a static KV cache, every row to the end, the whole mask from the start), run
    eagerly on the CPU, draws `sample_policy`'s samples for the same seed: rows of several prompt lengths, stopping
    at different steps (a hook makes <|im_end|> likely)."""
    im_end = tiny_tokenizer.convert_tokens_to_ids(modeling.IM_END)

    def likelier_end(module, inputs, output):
        output = output.clone()
        output[..., im_end] += 4.0
        return output
    hook = lively_model.lm_head.register_forward_hook(likelier_end)
    try:
        draws = {}
        for autocast in (False, True):          # bf16 autocast as on a GPU: fp32 keys (RoPE), bf16 values
            for compiled in (False, True):
                torch.manual_seed(5)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    draws[autocast, compiled] = generation.sample_completions(
                        lively_model, tiny_tokenizer, PROMPTS[:4], k=3, max_new_tokens=12, temperature=1.0,
                        compiled=compiled)
    finally:
        hook.remove()
    for autocast in (False, True):
        assert [s["response_ids"] for s in draws[autocast, True]] == [s["response_ids"] for s in draws[autocast, False]]
    assert len({len(s["response_ids"]) for s in draws[False, False]}) > 2      # rows stopped at different steps


def test_greedy_decoding_in_two_processes_gives_one_process_answers(tiny_tokenizer, lively_model, monkeypatch,
                                                                    tmp_path):
    """On a CPU of two threads greedy batches are split over a forked process (one thread each): the answers are a
    one-thread single process's, in the caller's order; a child that fails, or is stuck past `CHILD_PATIENCE`, has its
    batches decoded by the parent; at one thread nothing is forked."""
    parent, log, real = os.getpid(), tmp_path / "pids", generation.left_padded

    def logged(*args, fail_in_child=False):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if fail_in_child and os.getpid() != parent:
            raise RuntimeError("the child fails")
        return real(*args)

    decode = lambda: generation.generate_responses(lively_model, tiny_tokenizer, PROMPTS, batch_size=1,
                                                   max_new_tokens=8, progress=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(generation, "left_padded", logged)
        alone = decode()
        assert set(log.read_text().split()) == {str(parent)}          # one thread: no second process
        torch.set_num_threads(2)
        log.unlink()
        assert decode() == alone
        pids = log.read_text().split()
        assert len(set(pids)) == 2 and pids.count(str(parent)) == 3      # 6 batches: 3 here, 3 in the child
        assert torch.get_num_threads() == 2                            # restored
        monkeypatch.setattr(generation, "left_padded", lambda *a: logged(*a, fail_in_child=True))
        assert decode() == alone                                       # the child's batches decoded here

        def stuck_child(*args):
            if os.getpid() != parent:
                time.sleep(60)
            return real(*args)
        monkeypatch.setattr(generation, "left_padded", stuck_child)
        monkeypatch.setattr(generation, "CHILD_PATIENCE", (0.5, 0.0))
        started = time.monotonic()
        assert decode() == alone and time.monotonic() - started < 30   # a stuck child is killed, not waited for
    finally:
        torch.set_num_threads(threads)
