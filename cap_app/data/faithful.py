"""A draft's own computations, and the program that recomputes them: the SFT target a small model can learn.

A 135M model cannot re-solve GSM8K, but it can transcribe a draft: every `16 - 3 - 4 = 9` (or
calculator annotation `<<16-3-4=9>>`) becomes `duck_eggs = 16 - 3 - 4`, and a number that an
earlier step stated as its result becomes that step's *name*. The program then recomputes every
step with the tool instead of trusting the draft's stated results, so an arithmetic slip, and
everything the draft built on it, comes out right, while a right draft keeps its answer.
"""

from __future__ import annotations

import ast
import dataclasses
import re

from cap_app.data.gsm8k_programs import annotation_span, step_name, unique_name
from cap_app.engine.align import EQUATION_RE
from cap_app.engine.answers import extract_draft_answer, normalize_answer
from cap_app.engine.arithmetic import ANNOTATION, parse_number, python_arithmetic, same_number

_ANSWER_LINE = re.compile(r"^\s*(?:A:|####|The answer is|Answer:)", re.IGNORECASE)


@dataclasses.dataclass
class Computation:
    """One computation a draft writes out: its arithmetic and the result it states."""

    expression: str  # Python arithmetic over literals, e.g. "16 - 3 - 4"
    stated: str  # the result as the draft wrote it, e.g. "9"
    line: int  # index of the draft line
    start: int  # span in that line: shown expression (or annotation) through the stated result
    end: int
    name: str = ""

    @property
    def stated_value(self) -> float | None:
        return parse_number(self.stated)


def computations(draft: str) -> list[Computation]:
    """Every computation of the draft, in order: a line's calculator annotations when it has
    any, else the equations written in its prose. The final-answer line is not a computation."""
    found: list[Computation] = []
    for line_no, line in enumerate(draft.split("\n")):
        if _ANSWER_LINE.match(line):
            continue
        annotations = list(ANNOTATION.finditer(line))
        for match in annotations:
            expression = python_arithmetic(match.group(1))
            if expression is None or parse_number(match.group(2)) is None:
                continue
            start, end, _ = annotation_span(line, match)
            found.append(Computation(expression, match.group(2).strip(), line_no, start, end))
        if annotations:
            continue
        for match in EQUATION_RE.finditer(line):
            expression = python_arithmetic(match.group("expr"))
            if expression is not None and not match.group("result").endswith("%"):
                found.append(Computation(expression, match.group("result"), line_no, match.start(), match.end()))
    return found


def faithful_program(draft: str) -> str | None:
    """The draft's computations as a program that recomputes them; None when the draft writes
    out no computation. Each step is named after the words that follow its result; a number
    that an earlier step stated becomes that step's name; the program prints the step whose
    stated result is the draft's final answer (else the last step)."""
    steps = computations(draft)
    if not steps:
        return None
    lines_of_draft = draft.split("\n")
    taken: set[str] = set()
    named: list[Computation] = []
    program = []
    for step in steps:
        tree = ast.parse(step.expression, mode="eval").body
        expression = ast.unparse(_ReferEarlier(named).visit(tree))
        step.name = unique_name(step_name(lines_of_draft[step.line], step.start, step.end), taken)
        program.append(f"{step.name} = {expression}")
        named.append(step)
    printed = _printed_step(steps, extract_draft_answer(draft))
    program.append(f"print({printed.name})")
    return "\n".join(program) + "\n"


class _ReferEarlier(ast.NodeTransformer):
    """Numbers that an earlier step stated as its result become that step's name (the latest one)."""

    def __init__(self, earlier: list[Computation]):
        self.earlier = earlier

    def visit_Constant(self, node: ast.Constant) -> ast.expr:
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            for step in reversed(self.earlier):
                if step.stated_value is not None and same_number(float(node.value), step.stated_value):
                    return ast.Name(id=step.name, ctx=ast.Load())
        return node


def _printed_step(steps: list[Computation], final: str | None) -> Computation:
    value = parse_number(normalize_answer(final)) if final else None
    if value is not None:
        for step in reversed(steps):
            if step.stated_value is not None and same_number(step.stated_value, value):
                return step
    return steps[-1]
