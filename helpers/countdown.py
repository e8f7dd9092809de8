"""The Countdown task: the prompt builder, the solver and the rule-based reward live together (TinyZero's
format), so the format the prompt asks for and the parser that scores it cannot drift apart. Imports nothing from
the package: the reward serves DPO pair labelling, RLOO and evaluation alike."""
from __future__ import annotations

import ast
import math
import re

COUNTDOWN_SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in the mind "
                    "and then provide the user with the answer.")
COUNTDOWN_QUESTION = "Using the numbers {nums}, create an equation that equals {target}."
COUNTDOWN_RULES = ("You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. Show "
                   "your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, for "
                   "example <answer> (1 + 2) / 3 </answer>.")
COUNTDOWN_TASK = COUNTDOWN_QUESTION + " " + COUNTDOWN_RULES       # TinyZero's order, as the WarmStart query has it
# The WarmStart set (cog_behav_all_strategies) writes TinyZero's base-model prompt into its `query`, numbers
# space-separated: the qwen profile's SFT trains on it, so every later Countdown step must ask the same way.
WARMSTART_QUERY = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
                   "The assistant first thinks about the reasoning process in the mind and then provides the user "
                   "with the answer.\nUser: " + COUNTDOWN_TASK + "\nAssistant: Let me solve this step by step.")
# The tiny world's prompt: TinyZero's question word for word, its rules in one short sentence. The tiny model pays
# for every prompt token in every stage; TinyZero's rules would be ~70 % of a Countdown example's tokens.
SHORT_RULES = "Use + - * / and each number once. Think in <think> </think>, then answer in <answer> </answer>."
COUNTDOWN_FORMATS = ("short", "chat", "warmstart")


def countdown_prompt(nums, target, style: str = "short") -> list[dict]:
    """The profile's one Countdown prompt, as chat messages; `countdown_reward` parses the answer it asks for.

    "short" (tiny): TinyZero's question and its rules in a sentence, as a user turn, numbers as [17, 2].
    "chat": TinyZero's whole instruction as a user turn under its system prompt.
    "warmstart" (qwen): the WarmStart `query` text as a user turn, exactly as SFT saw it, numbers as [44 19 35].
    """
    if style == "short":
        return [{"role": "user", "content": f"{COUNTDOWN_QUESTION.format(nums=list(nums), target=target)} "
                                            f"{SHORT_RULES}"}]
    if style == "chat":
        return [{"role": "system", "content": COUNTDOWN_SYSTEM},
                {"role": "user", "content": COUNTDOWN_TASK.format(nums=list(nums), target=target)}]
    if style == "warmstart":
        numbers = "[" + " ".join(str(n) for n in nums) + "]"
        return [{"role": "user", "content": WARMSTART_QUERY.format(nums=numbers, target=target)}]
    raise ValueError(f"unknown Countdown prompt style {style!r}; choose one of {COUNTDOWN_FORMATS}")


_TASK_IN_TEXT = re.compile(r"Using the numbers \[([0-9 ,]+)\], create an equation that equals (\d+)\.")


def parse_countdown_task(text: str):
    """(nums, target) named in a Countdown prompt's text, in either format; None if it names no task."""
    found = _TASK_IN_TEXT.search(text) if isinstance(text, str) else None
    if found is None:
        return None
    nums = [int(n) for n in re.split(r"[ ,]+", found.group(1).strip())]
    return nums, int(found.group(2))


_MAX_EXPRESSION_CHARS = 200          # an honest answer to a Countdown task is a few dozen characters
# The answer's grammar: decimal integers, + - * /, parentheses and spaces — nothing else reaches the parser, so
# 0x7, 0o7, 0b1, 1_0, 1e3, 3.5, comments and line continuations are wrong answers, not numbers.
_ANSWER_CHARS = re.compile(r"[0-9+\-*/() ]+")


_ALLOWED_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                   ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _evaluate_arithmetic(node, numbers: list):
    """Evaluate a whitelisted arithmetic AST (+ - * / and non-negative int literals); collect the literals."""
    if isinstance(node, ast.Expression):
        return _evaluate_arithmetic(node.body, numbers)
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_BINOPS:
        left, right = _evaluate_arithmetic(node.left, numbers), _evaluate_arithmetic(node.right, numbers)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError("division by zero")
        return _ALLOWED_BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        numbers.append(node.value)
        return node.value
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def countdown_reward(completion: str, target, nums) -> float:
    """TinyZero's tiered reward: 0.0 no <answer>; 0.1 answer present but wrong; 1.0 correct.

    Correct = uses each given number exactly once and equals the target within 1e-5. The *last* <answer> counts,
    wherever it is in the text. Model output is untrusted: only decimal integers, + - * / and parentheses are
    accepted, parsed with `ast` — never eval/exec — and the function never raises. Against ground truth that is not
    whole numbers (a float or bool among the numbers, a text target) no answer is correct: 0.1 at most.
    """
    if not isinstance(completion, str):
        return 0.0
    end = completion.rfind("</answer>")          # rfind, not a regex: linear time on hostile text
    start = completion.rfind("<answer>", 0, end) if end != -1 else -1
    if start == -1:
        return 0.0
    expression = completion[start + len("<answer>"):end].strip()
    whole = lambda n: isinstance(n, int) and not isinstance(n, bool)
    verifiable = (isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target)
                  and isinstance(nums, (list, tuple)) and all(whole(n) for n in nums))
    if not verifiable or not expression or len(expression) > _MAX_EXPRESSION_CHARS \
            or not _ANSWER_CHARS.fullmatch(expression):
        return 0.1
    try:
        used: list = []
        value = _evaluate_arithmetic(ast.parse(expression, mode="eval"), used)
        if sorted(used) != sorted(nums):
            return 0.1
        return 1.0 if abs(value - float(target)) < 1e-5 else 0.1
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError, TypeError):
        return 0.1


def solve_countdown(nums, target):
    """All ways to combine every number once with + - * / (exact fractions); returns (expression, steps) or None.

    `steps` are the intermediate equations a WarmStart completion narrates, e.g. ["7 - 2 = 5", "5 * 3 = 15"].
    """
    from fractions import Fraction
    start = [(Fraction(n), str(n), []) for n in nums]
    dead_ends = set()       # multisets of values already shown not to reach the target: 5 numbers take ms, not s

    def search(items):
        if len(items) == 1:
            value, expr, steps = items[0]
            return (expr, steps) if value == target else None
        values = tuple(sorted(v for v, _, _ in items))
        if values in dead_ends:
            return None
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (a, ea, sa), (b, eb, sb) = items[i], items[j]
                for op in "+-*/":
                    if op in "+*" and i > j:
                        continue      # commutative: one order is enough
                    if op == "/" and b == 0:
                        continue
                    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
                    wrap = lambda e, simple: e if simple else f"({e})"
                    expr = f"{wrap(ea, len(sa) == 0)} {op} {wrap(eb, len(sb) == 0)}"
                    step = f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(value)}"
                    # the result takes the place of its first operand: answers keep the prompt's order,
                    # which a small model copies far more easily than a shuffled one
                    merged = (value, expr, sa + sb + [step])
                    found = search([merged if k == i else items[k] for k in range(len(items)) if k != j])
                    if found:
                        return found
        dead_ends.add(values)
        return None

    return search(start)


def _fmt(x) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def countdown_completion(nums, target) -> str | None:
    """A WarmStart-style completion written by the solver: reasoning in <think>, expression in <answer>."""
    solved = solve_countdown(nums, target)
    if solved is None:
        return None
    expression, steps = solved
    return f"<think> {countdown_reasoning(nums, target, steps)} </think>\n<answer> {expression} </answer>"


def countdown_text(nums, target, steps) -> str:
    """A solved task as the tiny world's pre-training text: the prompt's own question, then the reasoning that
    restates it ("Using the numbers [17, 2], create an equation that equals 34. Numbers [17, 2] make 34: 17 * 2 =
    34."). The base model learns to copy a task's numbers from its question into the restatement — the step every
    WarmStart answer begins with — before it ever sees the chat format (without the question, 1 base model in 4
    never learned to copy them from a chat prompt: docs/LOG.md)."""
    return f"{COUNTDOWN_QUESTION.format(nums=list(nums), target=target)} {countdown_reasoning(nums, target, steps)}."


def countdown_reasoning(nums, target, steps) -> str:
    """"Numbers [17, 2] make 34: 17 * 2 = 34" — one phrasing for the tiny world's pre-training text and the WarmStart
    <think>, so SFT builds on what the base model already does in it instead of learning to copy numbers afresh."""
    return f"Numbers {list(nums)} make {target}: {', '.join(steps)}"
