"""The Countdown task: the prompt builder, the solver and the rule-based reward live together (TinyZero's
format), so the format the prompt asks for and the parser that scores it cannot drift apart. Imports nothing from
the package: the reward serves DPO pair labelling, RLOO and evaluation alike."""
from __future__ import annotations

import ast


COUNTDOWN_SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in the mind "
                    "and then provide the user with the answer.")


def countdown_prompt(nums, target) -> list[dict]:
    """The TinyZero Countdown prompt as chat messages; `countdown_reward` parses the answer it asks for."""
    user = (f"Using the numbers {list(nums)}, create an equation that equals {target}. You can use basic "
            "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
            "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
            "<answer> (1 + 2) / 3 </answer>.")
    return [{"role": "system", "content": COUNTDOWN_SYSTEM}, {"role": "user", "content": user}]


_MAX_EXPRESSION_CHARS = 200          # an honest answer to a Countdown task is a few dozen characters


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
    wherever it is in the text. Model output is untrusted: it is parsed with `ast` and only + - * /, parentheses
    and non-negative integers are evaluated — never eval/exec — and the function never raises.
    """
    if not isinstance(completion, str):
        return 0.0
    end = completion.rfind("</answer>")          # rfind, not a regex: linear time on hostile text
    start = completion.rfind("<answer>", 0, end) if end != -1 else -1
    if start == -1:
        return 0.0
    expression = completion[start + len("<answer>"):end].strip()
    if not expression or len(expression) > _MAX_EXPRESSION_CHARS:
        return 0.1
    try:
        used: list = []
        value = _evaluate_arithmetic(ast.parse(expression, mode="eval"), used)
        if sorted(used) != sorted(int(n) for n in nums):
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

    def search(items):
        if len(items) == 1:
            value, expr, steps = items[0]
            return (expr, steps) if value == target else None
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


def countdown_reasoning(nums, target, steps) -> str:
    """"Numbers [17, 2] make 34: 17 * 2 = 34" — one phrasing for the tiny world's pre-training text and the WarmStart
    <think>, so SFT builds on what the base model already does in it instead of learning to copy numbers afresh."""
    return f"Numbers {list(nums)} make {target}: {', '.join(steps)}"
