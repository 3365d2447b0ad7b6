"""Final answers: find them in drafts and program output, normalise them, compare them.

Equivalence is decided by math-verify (a maintained library: fractions vs decimals, LaTeX,
rounding) rather than by hand-written parsing. Only short strings made of numbers and simple
math reach it, because its sympy back-end can be made to hang by hostile input (program
output and drafts are untrusted) and its own timeout uses signals, which fail outside the main
thread (the app answers requests in worker threads).
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation

from cap_app.engine.arithmetic import ANNOTATION, SIGNED_NUMBER, words_as_digits

_NUMBER = SIGNED_NUMBER.pattern
_FRACTION_RE = re.compile(rf"^({_NUMBER})\s*/\s*({_NUMBER})$")
_LATEX_FRACTION = re.compile(rf"^\\[dt]?frac\{{({_NUMBER})\}}\{{({_NUMBER})\}}$")
_FINAL_LINE = re.compile(r"^\s*(?:A|Answer|Final answer)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS = re.compile(r"(?:final answer|the answer) is[:\s]*([^\n]+)", re.IGNORECASE)
# "... which is twelve apples. Final answer: twelve": a final answer stated inside a line
_FINAL_INLINE = re.compile(r"\b(?:final answer|answer)\s*:\s*([^\n]+)", re.IGNORECASE)
_SAFE_FOR_MATH_VERIFY = re.compile(r"^[-\d.,/ \\{}a-z()^*+]{1,40}$")
MAX_ANSWER_CHARS = 100  # a final answer, not an essay: the longest answer kept or accepted as gold
_SHORT_ANSWER_CHARS = 20  # "two", "two apples": an answer, whose lone small number words are numbers

# math-verify warns once per process that its signal timeout is off; we bound inputs instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None


def extract_draft_answer(draft: str | None) -> str | None:
    """The final answer a prose draft commits to, normalised; None when it states none.

    Looks, in order, for `#### X`, `\\boxed{X}`, an `A: X` / `Answer: X` line, "the answer is X",
    "Final answer: X" inside a line, and finally the last number in the text. Spelled-out numbers
    count ("Final answer: twelve" is 12): a draft's last digits may be an operand of the sentence
    whose result it wrote in words.
    """
    if not draft:
        return None
    text = ANNOTATION.sub("", draft)
    if "####" in text:
        candidate = text.rsplit("####", 1)[1].strip().splitlines()
        if candidate:
            return normalize_answer(candidate[0])
    stated = (_FINAL_LINE.findall(text), _ANSWER_IS.findall(text), _FINAL_INLINE.findall(text))
    for found in (_boxed(text), *(m[-1] for m in stated if m)):
        if found and (answer := normalize_answer(found)) is not None:
            return answer
    numbers = SIGNED_NUMBER.findall(words_as_digits(text))
    return _canonical_number(numbers[-1]) if numbers else None


def _canonical_number(text: str) -> str | None:
    """`1,000.50` -> `1000.5`, `18.0` -> `18`, `−3` -> `-3`; None when not a number."""
    try:
        value = Decimal(text.replace(",", "").replace("−", "-"))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    return format(value, "f") if value != 0 else "0"


def normalize_answer(answer: str | None) -> str | None:
    """A canonical short form of an answer: numbers as plain decimals, fractions reduced to
    integers when whole; for a sentence ("She earns $18 per day."), the number after its last
    `:` or `=`, else its last number, spelled-out numbers included ("twelve" is 12); other text
    stripped (None when empty)."""
    if answer is None:
        return None
    text = _boxed(answer) or answer
    text = text.strip().replace("\\$", "").replace("$", "").replace("%", "").strip().rstrip(".").strip()
    if not text:
        return None
    number = _canonical_number(text)
    if number is not None:
        return number
    fraction = _FRACTION_RE.match(text) or _LATEX_FRACTION.match(text)
    if fraction:
        numerator, denominator = (_canonical_number(g) for g in fraction.groups())
        if Decimal(denominator) != 0 and (Decimal(numerator) / Decimal(denominator)) % 1 == 0:
            return _canonical_number(str(Decimal(numerator) / Decimal(denominator)))
        return f"{numerator}/{denominator}"
    text = words_as_digits(text, small=len(text) <= _SHORT_ANSWER_CHARS)
    tail = re.split(r"[:=]", text)[-1]
    numbers = SIGNED_NUMBER.findall(tail) or SIGNED_NUMBER.findall(text)
    if numbers:
        return _canonical_number(numbers[-1])
    return text[:MAX_ANSWER_CHARS]


def answers_equal(a: str | None, b: str | None) -> bool:
    """Whether two answers are mathematically the same (`0.5` == `1/2`, `18` == `18.00`)."""
    a, b = normalize_answer(a), normalize_answer(b)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if not (_SAFE_FOR_MATH_VERIFY.match(a) and _SAFE_FOR_MATH_VERIFY.match(b)):
        return False
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    extraction = [ExprExtractionConfig(), LatexExtractionConfig()]
    try:
        gold = parse(a, extraction_config=extraction, parsing_timeout=None)
        target = parse(b, extraction_config=extraction, parsing_timeout=None)
        return bool(gold and target and verify(gold, target, timeout_seconds=None))
    except Exception:  # math-verify raises on odd input; unequal is the safe answer
        return False
