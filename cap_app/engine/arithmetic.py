"""Numbers and arithmetic as math text writes them, one rule each: GSM8K calculator annotations
(`<<48/2=24>>`), numbers in prose and answers, how a number is read and written, and a safe
evaluator for written-out calculations.

Drafts, questions and program output are untrusted, so a calculation is evaluated from its AST
(numbers, names the caller gives, + - * / // % ** with a bounded exponent) and never executed.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Mapping

from text_to_num import alpha2digit

# A GSM8K calculator annotation: `<<48/2=24>>` holds the expression "48/2" and the result "24".
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# Digits as prose writes them: "1,200" (a comma only between groups of three), "13.50", ".5".
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# Not the "2" of a name like "x2" or "m2", nor the tail of "1.2.3". ASCII, because Chinese or
# Japanese prose puts numbers straight after word characters ("有8个").
NUMBER = re.compile(rf"(?<![\w.])(?:{_DIGITS})", re.ASCII)
# An answer may be negative; in prose "16-3" is a subtraction, so a sign right after a digit is not one.
SIGNED_NUMBER = re.compile(rf"(?<![\w.])[-−]?(?:{_DIGITS})", re.ASCII)
_DIGITS_WITH_SCALE = re.compile(r"\d\s*(?:hundred|thousand|million|billion|trillion)\b", re.IGNORECASE)
MAX_EXPONENT = 64  # `2 ** 10**9` in a draft must not hang the page
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def parse_number(text: str | None) -> int | float | None:
    """The number a short text states ("$1,200", "13.50", "'18'" from a repr, "25%" -> 25); None when it
    states none. Whole numbers come back as int, so a program built from them says `24`, not `24.0`."""
    if text is None:
        return None
    cleaned = text.strip().strip("'\"").replace(",", "").replace("$", "").rstrip("%")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() else value


def words_as_digits(text: str, *, small: bool = False) -> str:
    """English spelled-out numbers written as digits ("five plus seven is twelve" -> "5 plus 7 is
    12"), by text2num (a maintained parser, not a word list of ours); other text is unchanged. A
    lone "one", "two" or "three" in prose is mostly no quantity ("one of them"), so it stays a word
    unless `small` (a short answer: "Final answer: two")."""
    if not any(c.isalpha() for c in text):
        return text
    # "1.8 billion" is a number already written in digits with its scale: alpha2digit would make the
    # scale a number of its own ("1.8 1000000000"), so it is kept out of reach
    kept = _DIGITS_WITH_SCALE.findall(text)
    masked = _DIGITS_WITH_SCALE.sub("\ue000", text)
    converted = alpha2digit(masked, "en", 0.0 if small else 3.0)
    return re.sub("\ue000", lambda _: kept.pop(0), converted) if kept else converted


def format_number(value: float) -> str:
    """How a number is written in prose and programs: 24.0 -> '24', 1/3 -> '0.33'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}".rstrip("0").rstrip(".")


def same_number(actual: float, claimed: float, *, decimals: int | None = None) -> bool:
    """Equal up to float noise, or up to the rounding the writer used ("3.33" for 10/3)."""
    if math.isclose(actual, claimed, rel_tol=1e-9, abs_tol=1e-9):
        return True
    return bool(decimals) and abs(actual - claimed) <= 0.5 * 10**-decimals + 1e-9


def evaluate(node: ast.AST, names: Mapping[str, float] | None = None) -> int | float:
    """The value of an arithmetic AST: numbers, unary + -, + - * / // % **, and names when `names` is given.

    Raises ValueError for anything else or an exponent over MAX_EXPONENT, KeyError for a name
    missing from `names`, ArithmeticError for x/0 or a result that is not a finite real number.
    """
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and names is not None:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = evaluate(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = evaluate(node.left, names), evaluate(node.right, names)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError("exponent too large")
        value = _OPERATORS[type(node.op)](left, right)
        if isinstance(value, complex) or not math.isfinite(value):  # (-8) ** 0.5, 1e308 * 10
            raise ArithmeticError("not a finite real number")
        return value
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def python_arithmetic(text: str) -> str | None:
    """A written calculation as Python ("$1,200 x 2%" -> "1200 * (2 / 100)"); None if it is not one
    (not arithmetic, or no finite value)."""
    tree = _written_calculation(text)
    return ast.unparse(tree) if tree is not None and _value(tree) is not None else None


def evaluate_arithmetic(text: str) -> float | None:
    """The value of a written calculation ("(16 - 3) x 2", "$1,200 / 4", "50% * 8"); None if it is not one."""
    tree = _written_calculation(text)
    return _value(tree) if tree is not None else None


def _written_calculation(text: str) -> ast.expr | None:
    """Prose notation made Python: "$" dropped, thousands commas dropped, x × ÷ as * /, 5% as (5 / 100)."""
    text = text.replace("$", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    text = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1 / 100)", text)
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError):  # ValueError: a NUL byte
        return None


def _value(tree: ast.expr) -> float | None:
    try:
        return float(evaluate(tree))
    except (ValueError, ArithmeticError, RecursionError):
        return None
