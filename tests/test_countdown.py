"""countdown_reward (TinyZero tiers 0.0 / 0.1 / 1.0) on honest and hostile completions, and solve_countdown."""
from fractions import Fraction
import ast
import re
import time

import pytest

from helpers import countdown
from helpers.countdown import countdown_reward
from helpers.countdown import solve_countdown


@pytest.mark.parametrize("completion, target, nums, expected", [
    ("no tags at all, just (8 + 9) - 5", 12, [8, 9, 5], 0.0),
    ("<answer> (8 + 9) - 5", 12, [8, 9, 5], 0.0),                                # never closed
    ("<answer> (8 + 9) - 5 </answer>", 12, [8, 9, 5], 1.0),
    ("<answer>(8+9)-5</answer>", 12, [8, 9, 5], 1.0),
    ("<answer> 5 - (8 + 9) </answer>", 12, [8, 9, 5], 0.1),                       # right numbers, wrong value
    ("<answer> (8 * 9) - 5 </answer>", 12, [8, 9, 5], 0.1),
    ("<answer> 8 + 9 - 5 + 5 - 5 </answer>", 12, [8, 9, 5], 0.1),                 # 5 reused, value right
    ("<answer> 8 + 5 </answer>", 13, [8, 9, 5], 0.1),                             # 9 missing, value right
    ("<answer> (8 + 9) - 5 + 0 </answer>", 12, [8, 9, 5], 0.1),                   # 0 was not given
    ("<answer> (8 + 9) - 5 + 1 - 1 </answer>", 12, [8, 9, 5], 0.1),               # 1 was not given
    ("<answer> (9 + 9) - 6 </answer>", 12, [8, 9, 5], 0.1),
    ("<answer> 1 </answer> then <answer> (8 + 9) - 5 </answer>", 12, [8, 9, 5], 1.0),    # last one counts
    ("<answer> (8 + 9) - 5 </answer> then <answer> 1 </answer>", 12, [8, 9, 5], 0.1),
    ("<answer> (8 + 9) - 5 </answer>\nDone.", 12, [8, 9, 5], 1.0),                # TinyZero's last-line trap
    ("<think> 8 + 9 = 17 </think>\n<answer>\n(8 + 9) - 5\n</answer>", 12, [8, 9, 5], 1.0),   # multi-line
    ("<answer>  </answer>", 12, [8, 9, 5], 0.1),                                  # present but empty
    ("<answer> (6 / 3) * 4 </answer>", 8, [6, 3, 4], 1.0),
    ("<answer> 6 / (3 * 4) </answer>", 8, [6, 3, 4], 0.1),
    ("<answer> (1 / 49) * 49 </answer>", 1, [1, 49, 49], 1.0),                    # float 0.9999999999999999
    ("<answer> 5 * (5 - (1 / 5)) </answer>", 24, [1, 5, 5, 5], 1.0),             # 24.000000000000004
    ("<answer> (8 + 9) - 5 </answer>", 12.000001, [8, 9, 5], 1.0),                # within 1e-5
    ("<answer> (8 + 9) - 5 </answer>", 12.0001, [8, 9, 5], 0.1),                  # not within 1e-5
    ("<answer> 3 + 3 + 8 </answer>", 14, [3, 8, 3], 1.0),                         # duplicates in nums
    ("<answer> 3 + 8 + 8 </answer>", 19, [3, 8, 3], 0.1),                         # wrong multiplicity
])
def test_reward_table(completion, target, nums, expected):
    assert countdown_reward(completion, target, nums) == expected


def answer(expression: str) -> str:
    return f"<think> thinking </think>\n<answer> {expression} </answer>"


@pytest.mark.parametrize("expression, target, nums", [
    ("9**9**9**9", 1, [9, 9, 9, 9]),
    ("2 ** 3", 8, [2, 3]),                                       # value right, operator not allowed
    ("16 // 2", 8, [16, 2]),
    ("20 % 12", 8, [20, 12]),
    ("8 | 4", 12, [8, 4]),
    ("8 << 1", 16, [8, 1]),
    ("-3", -3, [3]),                                             # unary minus is not allowed
    ("+12", 12, [12]),
    ("8 - -4", 12, [8, 4]),
    ("1.5", 1.5, [1]),
    ("12.0", 12, [12]),
    ("1e1 + 2", 12, [10, 2]),
    ("1j", 0, [1]),
    ("True + 11", 12, [1, 11]),
    ("'12'", 12, [12]),
    ("b'12'", 12, [12]),
    ("f'{12}'", 12, [12]),
    ("x + 12", 12, [12]),
    ("abs(12)", 12, [12]),
    ("int('12')", 12, [12]),
    ("(12).real", 12, [12]),
    ("[12][0]", 12, [12]),
    ("(12, 0)", 12, [12, 0]),
    ("[x for x in (8, 9, 5)]", 12, [8, 9, 5]),
    ("lambda: 12", 12, [12]),
    ("(y := 12)", 12, [12]),
    ("12 if 1 else 0", 12, [12, 1, 0]),
    ("8 < 9", 1, [8, 9]),
    ("not 0", 1, [0]),
    ("__import__('os').system('echo hi')", 0, [0]),
    ("().__class__.__bases__[0].__subclasses__()", 0, [0]),
    ("(8 + 9) - 5; 1", 12, [8, 9, 5]),
    ("8 + 9 - 5,", 12, [8, 9, 5]),
    ("8 +", 12, [8]),
    ("8 / (9 - 9)", 0, [8, 9, 9]),                               # division by zero
    ("8 / 0", 0, [8, 0]),
    ("1 / (8 - 8) * 0", 0, [1, 8, 8, 0]),
    ("99999999999999999999 * 99999999999999999999 / 1", 1, [99999999999999999999, 99999999999999999999, 1]),
])
@pytest.mark.hostile
def test_hostile_expressions_score_present_but_wrong_fast(expression, target, nums):
    started = time.perf_counter()
    reward = countdown_reward(answer(expression), target, nums)
    assert time.perf_counter() - started < 0.1
    assert reward == 0.1


@pytest.mark.hostile
def test_answer_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    expression = f"__import__('os').makedirs({str(marker)!r})"
    assert len(expression) < 200          # short enough to be parsed, not rejected for length
    assert countdown_reward(answer(expression), 0, [0]) == 0.1
    assert not marker.exists()


@pytest.mark.hostile
@pytest.mark.parametrize("depth", [150, 3000, 50_000])
def test_deep_nesting_returns_a_tier(depth):
    started = time.perf_counter()
    assert countdown_reward(answer("(" * depth + "1" + ")" * depth), 1, [1]) == 0.1
    assert countdown_reward(answer("-" * depth + "1"), 1, [1]) == 0.1
    assert countdown_reward(answer("1" + " + 0" * depth), 1, [1] + [0] * depth) == 0.1
    assert time.perf_counter() - started < 0.5


def test_long_but_honest_chain_within_the_length_limit():
    # 40 additions: under the 200-character cap, evaluated normally
    expression = " + ".join(["1"] * 40)
    assert len(expression) < 200
    assert countdown_reward(answer(expression), 40, [1] * 40) == 1.0
    assert countdown_reward(answer(expression), 40, [1] * 39) == 0.1


NUMS, TARGET = [8, 9, 5], 12


@pytest.mark.hostile
@pytest.mark.parametrize("completion", [None, 12, 12.0, b"<answer> (8 + 9) - 5 </answer>",
                                        ["<answer> (8 + 9) - 5 </answer>"], {"text": "x"}])
def test_non_string_completion_scores_zero(completion):
    assert countdown_reward(completion, TARGET, NUMS) == 0.0


@pytest.mark.hostile
@pytest.mark.parametrize("target, nums", [(None, NUMS), ("twelve", NUMS), (TARGET, None), (TARGET, ["a", "b"]),
                                          (TARGET, 5), (float("nan"), NUMS), (float("inf"), NUMS)])
def test_malformed_ground_truth_never_raises(target, nums):
    assert countdown_reward(answer("(8 + 9) - 5"), target, nums) == 0.1


@pytest.mark.hostile
def test_one_megabyte_completions_are_fast():
    filler = "x" * 1_000_000 + answer("(8 + 9) - 5")
    many = answer("(8 + 9) - 5") * (1_000_000 // len(answer("(8 + 9) - 5")) + 1)
    for text, expected in ((filler, 1.0), (many, 1.0), ("<answer>" + "1" * 1_000_000 + "</answer>", 0.1),
                           ("y" * 1_000_000, 0.0)):
        assert len(text) >= 1_000_000
        started = time.perf_counter()
        assert countdown_reward(text, TARGET, NUMS) == expected
        assert time.perf_counter() - started < 0.5


@pytest.mark.hostile
def test_ten_kilobyte_completion_under_ten_milliseconds():
    reasoning = "<think> " + "Let me try 8 + 9 = 17, then 17 - 5 = 12. " * 245 + "</think>\n"
    completion = reasoning + "<answer> (8 + 9) - 5 </answer>"
    assert 10_000 <= len(completion) <= 11_000
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        assert countdown_reward(completion, TARGET, NUMS) == 1.0
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.010


@pytest.mark.hostile
def test_unclosed_answer_tags_are_linear():
    completion = "<answer>" * 4000            # 32 kB
    started = time.perf_counter()
    assert countdown_reward(completion, TARGET, NUMS) == 0.0
    assert time.perf_counter() - started < 0.05


def _fraction_value(expression: str) -> Fraction:
    """Exact value of a + - * / expression (test-side check, parsed with ast, never eval)."""
    ops = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__,
           ast.Div: Fraction.__truediv__}

    def walk(node):
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):     # negative intermediates in steps
            return -walk(node.operand)
        assert isinstance(node, ast.Constant) and type(node.value) is int
        return Fraction(node.value)
    return walk(ast.parse(expression, mode="eval").body)


@pytest.mark.parametrize("nums, target", [([8, 9, 5], 12), ([6, 3, 4], 8), ([2, 3, 5, 7], 1), ([4, 7, 8], 20),
                                          ([1, 5, 5, 5], 24), ([3, 3, 8, 8], 24), ([7], 7), ([25, 3], 75)])
def test_solver_answers_score_full_reward(nums, target):
    expression, steps = solve_countdown(nums, target)
    assert _fraction_value(expression) == target
    assert sorted(int(n) for n in re.findall(r"\d+", expression)) == sorted(nums)
    assert countdown_reward(f"<answer> {expression} </answer>", target, nums) == 1.0
    assert len(steps) == len(nums) - 1            # one step per combination of two numbers
    assert steps == [] or steps[-1].endswith(f"= {target}")


def test_solver_steps_narrate_integer_arithmetic():
    expression, steps = solve_countdown([8, 9, 5], 12)
    assert expression == "(8 + 9) - 5"
    assert steps == ["8 + 9 = 17", "17 - 5 = 12"]
    expression, steps = solve_countdown([2, 3, 5, 7], 1)
    assert steps[-1] == "-6 + 7 = 1"                     # negative intermediates are narrated as they are
    for step in steps:
        left, right = step.split(" = ")
        assert _fraction_value(left) == Fraction(right)


@pytest.mark.parametrize("nums, target, expression", [([17, 2], 34, "17 * 2"), ([3, 7], 4, "7 - 3"),
                                                      ([9, 1, 5], 45, "(9 * 1) * 5"), ([6, 3, 4], 36, "(6 + 3) * 4")])
def test_solver_keeps_the_prompt_order_where_it_can(nums, target, expression):
    """WarmStart answers copy the numbers in the order the prompt gives them: easier for a small model to learn."""
    assert solve_countdown(nums, target)[0] == expression


@pytest.mark.parametrize("nums, target", [([1, 1, 1], 100), ([2, 2], 5), ([9], 8), ([], 3)])
def test_solver_returns_none_for_impossible_tasks(nums, target):
    assert solve_countdown(nums, target) is None


def test_countdown_completion_matches_solver_and_scores_one():
    completion = countdown.countdown_completion([8, 9, 5], 12)
    assert completion == ("<think> Numbers [8, 9, 5] make 12: 8 + 9 = 17, 17 - 5 = 12 </think>\n"
                          "<answer> (8 + 9) - 5 </answer>")
    assert countdown_reward(completion, 12, [8, 9, 5]) == 1.0
    assert countdown.countdown_completion([1, 1, 1], 100) is None


def test_countdown_prompt_asks_for_the_format_the_reward_parses():
    messages = countdown.countdown_prompt([8, 9, 5], 12, style="chat")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "[8, 9, 5]" in user and "equals 12" in user
    example = re.findall(r"<answer>.*?</answer>", user)[-1]     # the prompt's own example parses
    assert example == "<answer> (1 + 2) / 3 </answer>"
    assert countdown_reward(example, 1, [1, 2, 3]) == 1.0
    short = countdown.countdown_prompt([8, 9, 5], 12)           # the tiny default: one user turn, same tags
    assert [m["role"] for m in short] == ["user"]
    assert "[8, 9, 5]" in short[0]["content"] and "equals 12" in short[0]["content"]
    assert "<answer> </answer>" in short[0]["content"] and countdown.parse_countdown_task(short[0]["content"]) == \
        ([8, 9, 5], 12)


def test_every_countdown_step_asks_with_the_prompt_sft_trained_on(output_dir, tiny_tokenizer, monkeypatch):
    """One builder for every Countdown step of a profile. In the hub world (the qwen profiles: WarmStart `query`
    format) a task is rendered through SFT's rows, the on-policy DPO pairs, RLOO's rollouts and the evaluation, and
    every path sends the same prompt tokens."""
    import shutil

    from helpers import config, data, dpo, evaluation, formatting, generation, modeling, rloo, sft
    cfg = config.get_config("smoke")
    cfg.data = config.replace_config(cfg.data, world="hub", hub_dir=str(config.REPO_ROOT / "tests/fixtures/hub"),
                                     countdown_format="warmstart", countdown_test=8, max_prompt_tokens=160)
    cfg.eval = config.replace_config(cfg.eval, instruction_rows=2, countdown_rows=4, loss_rows=4, sampled_rows=2)
    cfg.dpo = config.replace_config(cfg.dpo, max_steps=1, onpolicy_countdown_prompts=4)
    cfg.rloo = config.replace_config(cfg.rloo, max_steps=1, eval_every=10)
    data.prepare_data(cfg)
    model_dir = config.out_path("checkpoints", cfg, "sft_masked")
    modeling.save_model(modeling.build_tiny_model(tiny_tokenizer, cfg.model, seed=0), model_dir, tiny_tokenizer)
    shutil.copytree(model_dir, config.out_path("checkpoints", cfg, "initial"))
    sent = []

    def recording(real):
        def wrapped(model, tokenizer, conversations, *args, **kwargs):
            sent.extend(c for c in conversations if "Using the numbers" in c[-1]["content"])
            return real(model, tokenizer, conversations, *args, **kwargs)
        return wrapped
    monkeypatch.setattr(generation, "generate_responses", recording(generation.generate_responses))
    monkeypatch.setattr(rloo, "sample_completions", recording(generation.sample_completions))
    paths = {}
    for stage, run in [("dpo", lambda: dpo.run_dpo(cfg, log=False)),
                       ("rloo", lambda: rloo.run_rloo(cfg, log=False)),
                       ("evaluation", lambda: evaluation.evaluate_all_stages(cfg, stages=("sft_masked",)))]:
        sent.clear()
        run()
        paths[stage] = list(sent)
    assert all(paths.values()), {k: len(v) for k, v in paths.items()}
    warmstart = [r for r in sft.sft_mixture(cfg) if r.get("source") == "warmstart"]
    assert warmstart
    for row in warmstart:                      # SFT trained on exactly what the builder writes for its task
        assert row["messages"][:-1] == countdown.countdown_prompt(row["nums"], row["target"], "warmstart")
    for stage, prompts in paths.items():       # and every later step sends what the builder writes
        for prompt in prompts:
            nums, target = countdown.parse_countdown_task(prompt[-1]["content"])
            assert prompt == countdown.countdown_prompt(nums, target, "warmstart"), stage
    # the same tokens: SFT's prompt part of a WarmStart example == a stage's rendered generation prompt
    row = warmstart[0]
    example = formatting.build_sft_example(tiny_tokenizer, row["messages"], 4096)
    first_trained = next(i for i, label in enumerate(example["labels"]) if label != -100)
    prompt_ids = example["input_ids"][:first_trained]
    stage_prompt = countdown.countdown_prompt(row["nums"], row["target"], "warmstart")
    rendered = formatting.render_chat(tiny_tokenizer, stage_prompt, add_generation_prompt=True)
    assert prompt_ids == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]
