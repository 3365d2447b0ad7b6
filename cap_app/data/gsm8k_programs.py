"""GSM8K calculator annotations -> named-variable programs and prose drafts.

A GSM8K solution marks each computation as `<<48/2=24>>`. We parse those into `Step`s whose
expressions refer to earlier steps and to the question's quantities by *name*, so the program
reads like a worked solution (`clips_in_may = friends / 2`) instead of a calculator tape, and
so a corruption of one step propagates to every step that uses it (see corrupt.py).

Only arithmetic ASTs are ever evaluated here (cap_app.engine.arithmetic; a step holds numbers, names,
+ - * / and parentheses); the programs themselves are verified in the sandbox by build.py.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import keyword
import math
import re

from cap_app.engine.arithmetic import ANNOTATION, NUMBER, evaluate, format_number, parse_number

FINAL_ANSWER = re.compile(r"\n?####\s*(.+?)\s*$")
WORD = re.compile(r"[A-Za-z][A-Za-z']*")
# The prose form of a computation right before its annotation, e.g. "0.2 x 50 = $".
SHOWN_EXPRESSION = re.compile(r"(?:[\d.,$()]+\s*[-+*/x×÷]\s*)+[\d.,$()]+\s*=\s*(\$?)\s*$")
STOPWORDS = frozenset(
    "a an the of to in on at for and or but so is are was were be been has have had do does did "
    "he she it they we you i his her its their our your him them this that these those there "
    "then than with by from as each every all which who what how many much will would can could "
    "more less if when after before into out up about also only just total".split()
)
_STEP_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div)  # the arithmetic a step may do (and a corruption swap)


class UnsupportedSolution(ValueError):
    """The solution cannot be turned into a program (no annotations, odd syntax, ...)."""


@dataclasses.dataclass
class Step:
    """One annotated computation: `name = expr`, and where it sits in the prose."""

    name: str
    expr: ast.expr  # refers to earlier steps / quantities by ast.Name
    line: int  # index of the solution line holding the annotation
    start: int  # span of the shown expression + annotation + result in that line
    end: int
    dollar: str  # "$" when the prose writes the result as money


@dataclasses.dataclass
class Solution:
    """A parsed GSM8K solution: the question's named quantities, the steps, the prose lines."""

    question: str
    quantities: dict[str, float]  # name -> value, in order of first use
    steps: list[Step]
    lines: list[str]  # prose lines without the final `#### answer` line
    gold: str  # the gold final answer, as written after ####

    def program(self, steps: list[Step] | None = None) -> str:
        """The Python program: quantities, one assignment per step, print the last one."""
        steps = self.steps if steps is None else steps
        used = _names_used(steps)
        lines = [f"{name} = {format_number(value)}" for name, value in self.quantities.items() if name in used]
        lines += [f"{step.name} = {ast.unparse(step.expr)}" for step in steps]
        lines.append(f"print({steps[-1].name})")
        return "\n".join(lines) + "\n"

    def values(self, steps: list[Step] | None = None) -> dict[str, float]:
        """Every name's value when the steps run in order (raises ArithmeticError on x/0)."""
        env = dict(self.quantities)
        for step in self.steps if steps is None else steps:
            env[step.name] = evaluate(step.expr, env)
        return env


def render(expr: ast.expr, env: dict[str, float], *, compact: bool = False) -> str:
    """The expression with names replaced by their values, as a draft would show it."""

    class Substitute(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return ast.Constant(value=parse_number(format_number(env[node.id])))

    text = ast.unparse(Substitute().visit(copy_expr(expr)))
    return text.replace(" ", "") if compact else text


def parse_solution(question: str, answer: str) -> Solution:
    """Parse a GSM8K (question, answer) pair; raises UnsupportedSolution when it cannot."""
    final = FINAL_ANSWER.search(answer)
    if not final:
        raise UnsupportedSolution("no #### final answer")
    lines = answer[: final.start()].split("\n")
    question_numbers = _question_numbers(question)
    quantities: dict[str, float] = {}
    results: list[tuple[float, str]] = []  # (annotated value, step name), latest last
    steps: list[Step] = []
    taken: set[str] = set()
    for line_no, line in enumerate(lines):
        for match in ANNOTATION.finditer(line):
            try:
                tree = ast.parse(match.group(1).strip(), mode="eval").body
            except (SyntaxError, ValueError):
                tree = None
            annotated = parse_number(match.group(2))
            if tree is None or annotated is None:
                raise UnsupportedSolution(f"bad annotation {match.group(0)!r}")
            expr = _name_leaves(tree, results, question_numbers, quantities, taken)
            start, end, dollar = annotation_span(line, match)
            name = unique_name(step_name(line, start, end), taken)
            steps.append(Step(name, expr, line_no, start, end, dollar))
            results.append((annotated, name))
    if not steps:
        raise UnsupportedSolution("no calculator annotations")
    return Solution(question, quantities, steps, lines, final.group(1).replace(",", ""))


def copy_expr(expr: ast.expr) -> ast.expr:
    """A deep copy of an expression (corruptions edit copies, never the solution)."""
    return ast.parse(ast.unparse(expr), mode="eval").body


def _names_used(steps: list[Step]) -> set[str]:
    return {node.id for step in steps for node in ast.walk(step.expr) if isinstance(node, ast.Name)}


def _question_numbers(question: str) -> list[tuple[float, str]]:
    """(value, proposed name) for every number in the question, named by the words after it up to the
    next punctuation, else by the words before it."""
    found = []
    for match in NUMBER.finditer(question):
        words = _leading_phrase(re.split(r"[.,;:?!\d$]", question[match.end() :], maxsplit=1)[0])
        if not words:  # "costs $100." -> named by the words before it
            words = _content_words(re.split(r"[.,;:?!\d$]", question[: match.start()])[-1])[-2:]
        found.append((parse_number(match.group(0)), "_".join(words)))
    return found


def _name_leaves(tree, results, question_numbers, quantities, taken) -> ast.expr:
    """Replace numbers by the step or question quantity they come from, when there is one."""

    class Namer(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.expr:
            if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
                raise UnsupportedSolution("non-numeric constant")
            for value, name in reversed(results):
                if math.isclose(value, node.value):
                    return ast.Name(id=name, ctx=ast.Load())
            for name, value in quantities.items():
                if math.isclose(value, node.value):
                    return ast.Name(id=name, ctx=ast.Load())
            for value, proposed in question_numbers:
                if math.isclose(value, node.value) and proposed:
                    name = unique_name(proposed, taken)
                    quantities[name] = value
                    return ast.Name(id=name, ctx=ast.Load())
            return node

    for node in ast.walk(tree):
        if not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)):
            raise UnsupportedSolution(f"unsupported syntax: {type(node).__name__}")
        if isinstance(node, ast.BinOp) and not isinstance(node.op, _STEP_OPERATORS):
            raise UnsupportedSolution("unsupported operator")
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub):
            raise UnsupportedSolution("unsupported unary operator")
    return Namer().visit(tree)


def annotation_span(line: str, match: re.Match) -> tuple[int, int, str]:
    """Where a calculator annotation's computation sits in its prose line, from the shown expression
    ("48/2 = $") through the result GSM8K repeats after the annotation (`>>24`), and its currency sign."""
    start, dollar = _shown_start(line, match.start())
    return start, match.end() + _result_length(line[match.end() :]), dollar


def _shown_start(line: str, annotation_start: int) -> tuple[int, str]:
    """Where the prose form of the computation ("48/2 = $") begins, and its currency sign."""
    shown = SHOWN_EXPRESSION.search(line[:annotation_start])
    if not shown:
        dollar = "$" if line[:annotation_start].rstrip().endswith("$") else ""
        return annotation_start - (1 if dollar and line[annotation_start - 1] == "$" else 0), dollar
    return shown.start(), shown.group(1)


def _result_length(after: str) -> int:
    """Length of the result number GSM8K repeats right after the annotation (`>>24 clips`)."""
    match = NUMBER.match(after)
    return match.end() if match else 0


def step_name(line: str, start: int, end: int) -> str:
    """Name a step after the words that follow its result, else the words before it."""
    after = _content_words(re.split(r"[.,;:?!=\d$]", line[end:], maxsplit=1)[0])[:3]
    if after:
        return "_".join(after)
    before = _content_words(re.split(r"[.,;:?!=\d$]", line[:start])[-1])[-3:]
    return "_".join(before) or "step"


def _leading_phrase(text: str) -> list[str]:
    """The first run of content words ("48 of her friends in April" -> ["friends"])."""
    words: list[str] = []
    for word in WORD.findall(text):
        word = word.lower().replace("'", "")
        if word in STOPWORDS or len(word) < 2:
            if words:
                break
            continue
        words.append(word)
        if len(words) == 3:
            break
    return words


def _content_words(text: str) -> list[str]:
    words = []
    for word in WORD.findall(text):
        word = word.lower().replace("'", "")
        if word not in STOPWORDS and len(word) > 1:
            words.append(word)
    return words


def unique_name(name: str, taken: set[str]) -> str:
    """A valid, unused Python identifier (never a keyword or builtin)."""
    name = re.sub(r"\W", "_", name.lower()).strip("_") or "value"
    if name[0].isdigit() or keyword.iskeyword(name) or hasattr(builtins, name):
        name = f"{name}_value"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate
