"""Evaluation of every stage: pass@k, best-of-n, the summary files, batched generation, the final-checkpoint rule."""

import pandas as pd
import pytest
import torch

import helpers as H


# ── pass@k (Chen et al. 2021), checked by hand ──────────────────────────────────────────────────
@pytest.mark.parametrize("n, c, k, expected", [
    (8, 0, 1, 0.0),          # nothing correct: never passes
    (8, 8, 4, 1.0),          # everything correct
    (4, 1, 1, 0.25),         # 1 − C(3,1)/C(4,1) = 1 − 3/4
    (4, 1, 2, 0.5),          # 1 − C(3,2)/C(4,2) = 1 − 3/6
    (5, 2, 2, 0.7),          # 1 − C(3,2)/C(5,2) = 1 − 3/10
    (8, 2, 4, 1 - 15 / 70),  # 1 − C(6,4)/C(8,4)
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert H.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 2, 3), (4, 1, 4), (8, 5, 4), (2, 1, 2)])
def test_pass_at_k_is_one_when_every_k_subset_holds_a_correct_sample(n, c, k):
    assert n - c < k
    assert H.pass_at_k(n, c, k) == 1.0


def test_pass_at_1_is_the_plain_accuracy():
    assert [H.pass_at_k(8, c, 1) for c in range(9)] == pytest.approx([c / 8 for c in range(9)])


# ── best-of-n ───────────────────────────────────────────────────────────────────────────────────
SCORES = [[0.1, 0.9, 0.5, 0.2],
          [0.8, 0.3, 0.8, 0.1],     # a tie at n=4 between sample 0 (wrong) and sample 2 (right): the first wins
          [0.2, 0.2, 0.9, 0.95]]    # a tie at n=2 (first wins: right); the best of all four is only seen at n=4
CORRECT = [[0, 1, 0, 0],
           [0, 1, 1, 0],
           [1, 0, 0, 1]]


@pytest.mark.parametrize("n, expected", [
    (1, 1 / 3),   # picks sample 0 everywhere: 0, 0, 1
    (2, 2 / 3),   # picks 1, 0 (0.8 > 0.3), 0 (tie → first): 1, 0, 1
    (3, 1 / 3),   # picks 1, 0, 2: 1, 0, 0
    (4, 2 / 3),   # picks 1, 0 (tie with 2 → first), 3: 1, 0, 1
])
def test_best_of_n_by_hand(n, expected):
    assert H.best_of_n(SCORES, CORRECT, n) == pytest.approx(expected)


def test_best_of_n_uses_only_the_first_n_samples():
    scores = [[0.5, 0.1, 9.0], [0.2, 0.7, 0.1]]
    correct = [[1, 0, 0], [0, 1, 1]]
    assert H.best_of_n(scores, correct, 2) == 1.0      # sample 2 of the first prompt (wrong, 9.0) is not seen
    assert H.best_of_n(scores, correct, 3) == 0.5
    assert H.best_of_n(scores, [[0.5, 0.25, 0], [0, 1.0, 1]], 2) == pytest.approx(0.75)   # graded quality


# ── summaries: csv, md, txt, xlsx ───────────────────────────────────────────────────────────────
@pytest.fixture
def results_frame():
    return pd.DataFrame({"model": ["initial", "sft_masked", "dpo"],
                         "exact_match": [0.0, 0.123456789, 0.5],
                         "countdown_accuracy": [0.0625, 0.25, 1 / 3],
                         "steps": [0, 600, 200]})


def test_write_summary_writes_four_formats_that_read_back(results_frame, output_dir):
    cfg = H.get_config("smoke")
    paths = H.write_summary(results_frame, cfg, "stage_comparison", "20240101_120000")
    folder = output_dir / "evaluation_results" / "smoke" / "stage_comparison" / "20240101_120000" / "summary"
    assert set(paths) == {"csv", "md", "txt", "xlsx"}
    for ext, path in paths.items():
        assert path == folder / f"summary_20240101_120000.{ext}"
        assert path.is_file() and path.stat().st_size > 0

    for read in (pd.read_csv, pd.read_excel):
        back = read(paths["csv"] if read is pd.read_csv else paths["xlsx"])
        assert list(back.columns) == list(results_frame.columns)
        pd.testing.assert_frame_equal(back, results_frame, check_dtype=False, check_exact=False, rtol=1e-12)

    md = paths["md"].read_text().splitlines()
    assert len(md) == 2 + len(results_frame)
    assert [c.strip() for c in md[0].strip("|").split("|")] == list(results_frame.columns)
    assert set(md[1]) == {"|", "-"} and md[1].count("|") == len(results_frame.columns) + 1
    assert [c.strip() for c in md[3].strip("|").split("|")] == ["sft_masked", "0.1235", "0.2500", "600"]
    txt = paths["txt"].read_text()
    assert "sft_masked" in txt and "countdown_accuracy" in txt

    assert H.latest_summary(cfg, "stage_comparison")["model"].tolist() == ["initial", "sft_masked", "dpo"]


def test_markdown_table_formats_floats_with_four_decimals(results_frame):
    lines = H.markdown_table(results_frame).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[2] == ["initial", "0.0000", "0.0625", "0"]
    assert cells[4] == ["dpo", "0.5000", "0.3333", "200"]
    assert len({len(line) for line in lines}) == 1          # columns padded to one width


# ── batched generation ──────────────────────────────────────────────────────────────────────────
PROMPTS = [[{"role": "user", "content": "hello"}],
           [{"role": "user", "content": "tell me a joke why did the chicken cross the road"}],
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the capital of france is"}],
           [{"role": "user", "content": "how are you today, my friend"}],
           [{"role": "user", "content": "fine thanks"}, {"role": "assistant", "content": "good"},
            {"role": "user", "content": "answer short: to get to the other side?"}],
           [{"role": "user", "content": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"}]]


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    """The tiny Qwen2 with its matrices redrawn at std 0.3: at the default 0.02 a random tied model just repeats
    the last prompt token ("\\n") and every answer strips to "", which would hide a reordering."""
    model = H.build_tiny_model(tiny_tokenizer, H.get_config("smoke").model, seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model


def test_batched_greedy_equals_one_at_a_time(tiny_tokenizer, tiny_model):
    lengths = {len(tiny_tokenizer(H.render_chat(tiny_tokenizer, p, True), add_special_tokens=False)["input_ids"])
               for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)                      # every prompt a different length: real left padding
    original, tiny_tokenizer.padding_side = tiny_tokenizer.padding_side, "right"
    try:
        batched = H.generate_responses(tiny_model, tiny_tokenizer, PROMPTS, batch_size=8, max_new_tokens=8,
                                       progress=False)
        assert tiny_tokenizer.padding_side == "right"      # restored
        single = [H.generate_responses(tiny_model, tiny_tokenizer, [p], batch_size=1, max_new_tokens=8,
                                       progress=False)[0] for p in PROMPTS]
        uneven = H.generate_responses(tiny_model, tiny_tokenizer, PROMPTS, batch_size=4, max_new_tokens=8,
                                      progress=False)
    finally:
        tiny_tokenizer.padding_side = original     # the tokenizer fixture is shared by the session
    assert batched == single == uneven                      # same answers, in the caller's order
    assert len(set(single)) > 1                              # distinct answers, so a reordering would show
    assert all(isinstance(s, str) and s for s in single)


def test_generation_stops_at_im_end(tiny_tokenizer, tiny_model):
    """A hook forces <|im_end|> as the 4th token: the answer is the first 3 tokens, with no special text."""
    im_end = tiny_tokenizer.convert_tokens_to_ids(H.IM_END)
    prompts = PROMPTS[:3]
    first3 = H.generate_responses(tiny_model, tiny_tokenizer, prompts, max_new_tokens=3, progress=False)
    free8 = H.generate_responses(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8, progress=False)
    assert all(len(a) > len(b) for a, b in zip(free8, first3))   # left alone, the model keeps going
    calls = []

    def force_end(module, inputs, output):
        calls.append(1)
        if len(calls) == 4:            # forward 1 = the prompt (→ token 1), forward 4 → token 4
            output = output.clone()
            output[..., im_end] = 1e4
            return output

    handle = tiny_model.lm_head.register_forward_hook(force_end)
    try:
        stopped = H.generate_responses(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 4                                   # no forward pass after <|im_end|>
    assert stopped == first3
    assert not any("<|im_end|>" in s or "<|endoftext|>" in s for s in stopped + free8)


def test_generation_restores_training_mode_and_padding_side(tiny_tokenizer, tiny_model):
    tiny_model.train()
    original, tiny_tokenizer.padding_side = tiny_tokenizer.padding_side, "right"
    try:
        H.generate_responses(tiny_model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=2, progress=False)
        assert tiny_model.training and tiny_tokenizer.padding_side == "right"
    finally:
        tiny_model.eval()
        tiny_tokenizer.padding_side = original


# ── the final checkpoint ────────────────────────────────────────────────────────────────────────
def test_choose_final_picks_the_max_and_the_later_row_on_ties():
    table = pd.DataFrame({"model": ["initial", "sft_masked", "sft_unmasked", "dpo", "rloo"],
                          "exact_match": [0.0, 0.50, 0.40, 0.50, 0.30],
                          "countdown_accuracy": [0.0, 0.10, 0.20, 0.05, 0.60],
                          "mean_quality": [0.0, 0.30, 0.30, 0.275, 0.45]})
    assert H.choose_final(table, "exact_match") == "dpo"          # tie with sft_masked: the later row
    assert H.choose_final(table, "countdown_accuracy") == "rloo"
    assert H.choose_final(table.iloc[:4], "mean_quality") == "sft_unmasked"   # tie 0.30 / 0.30 → later
    with pytest.raises(ValueError, match="no_such_metric"):
        H.choose_final(table, "no_such_metric")


def test_win_rate_against_a_reference_model(tmp_path, monkeypatch):
    """Win rate judged by the reward model: a model against itself never wins (ties count as losses)."""
    import shutil
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path))
    cfg = H.get_config("smoke")
    H.prepare_data(cfg)
    initial = H.build_initial_model(cfg, log=False)
    shutil.copytree(initial, H.out_path("checkpoints", cfg, "sft_masked"))
    H.run_reward_model(cfg, log=False)
    cfg.eval.reference_model = str(initial)
    table, _ = H.evaluate_all_stages(cfg, stages=("initial", "sft_masked"))
    assert list(table["win_rate"][:2]) == [0.0, 0.0]     # both are the reference model itself
