"""Systematic corruptions of a correct solution, and the prose drafts they produce.

A CaP model must learn to *fix* a wrong draft, not transcribe it, so most training drafts are
wrong in the ways real chains of thought go wrong: a wrong operation, a wrong or dropped
quantity, a skipped step, an arithmetic slip. Each corruption changes one step; every later
step is recomputed from it, so the draft's wrong final answer follows from its mistake, and
the program that follows the draft (the DPO "rejected" answer) is wrong in the same way.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
import re

from cap_app.data.gsm8k_programs import Solution, Step, copy_expr, render
from cap_app.engine.arithmetic import ANNOTATION, evaluate, format_number, parse_number

KINDS = ("wrong_operation", "wrong_quantity", "dropped_quantity", "skipped_step", "arithmetic_slip")
FINAL_STYLES = ("A: {}", "#### {}", "The answer is {}.")
_SWAPPED = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}


@dataclasses.dataclass
class Corruption:
    """One corrupted solution: the program that follows it and what its draft shows."""

    kind: str
    steps: list[Step]  # the steps of the program that follows the corrupted draft
    shown: dict[str, ast.expr] = dataclasses.field(default_factory=dict)  # draft-only expressions
    removed_line: int | None = None  # the prose line a skipped step lived on


def corrupt(solution: Solution, kind: str, rng: random.Random) -> Corruption | None:
    """Apply `kind` to one random step; None when it does not apply or leaves the answer right."""
    steps = [dataclasses.replace(step, expr=copy_expr(step.expr)) for step in solution.steps]
    order = list(range(len(steps)))
    rng.shuffle(order)
    for index in order:
        corruption = _CORRUPTORS[kind](solution, steps, index, rng)
        if corruption is not None and _answer_changes(solution, corruption):
            return corruption
        steps = [dataclasses.replace(step, expr=copy_expr(step.expr)) for step in solution.steps]
    return None


def render_draft(
    solution: Solution,
    corruption: Corruption | None = None,
    *,
    keep_annotations: bool = True,
    final_style: str = FINAL_STYLES[0],
) -> tuple[str, str]:
    """The prose draft (and its final answer) for the solution, corrupted or not."""
    steps = corruption.steps if corruption else solution.steps
    shown = corruption.shown if corruption else {}
    original = solution.values()
    values = solution.values(steps)
    by_line: dict[int, list[Step]] = {}
    for step in steps:
        by_line.setdefault(step.line, []).append(step)
    originals = {step.name: step for step in solution.steps}
    lines = []
    for line_no, line in enumerate(solution.lines):
        if corruption and line_no == corruption.removed_line:
            continue
        for step in sorted(by_line.get(line_no, []), key=lambda s: s.start, reverse=True):
            expr = shown.get(step.name, step.expr)
            same_value = math.isclose(values[step.name], original[step.name])
            if same_value and ast.dump(expr) == ast.dump(originals[step.name].expr):
                continue
            value = format_number(values[step.name])
            annotation = f"<<{render(expr, values, compact=True)}={value}>>"
            text = f"{render(expr, values)} = {step.dollar}{annotation}{value}"
            line = line[: step.start] + text + line[step.end :]
        lines.append(line)
    answer = solution.gold if corruption is None else format_number(values[steps[-1].name])
    lines.append(final_style.format(answer))
    draft = "\n".join(lines)
    if not keep_annotations:
        draft = ANNOTATION.sub("", draft)
    return draft, answer


def _answer_changes(solution: Solution, corruption: Corruption) -> bool:
    try:
        value = solution.values(corruption.steps)[corruption.steps[-1].name]
    except (ArithmeticError, KeyError):
        return False
    gold = parse_number(solution.gold)
    plausible = value >= 0 or gold < 0  # a count or price does not turn negative in a real draft
    return plausible and not math.isclose(value, gold, rel_tol=1e-6)


def _nodes(expr: ast.expr, kind: type) -> list:
    return [node for node in ast.walk(expr) if isinstance(node, kind)]


def _wrong_operation(solution, steps, index, rng) -> Corruption | None:
    ops = [node for node in _nodes(steps[index].expr, ast.BinOp) if type(node.op) in _SWAPPED]
    if not ops:
        return None
    node = rng.choice(ops)
    node.op = _SWAPPED[type(node.op)]()
    return Corruption("wrong_operation", steps)


def _wrong_quantity(solution, steps, index, rng) -> Corruption | None:
    leaves = [n for n in ast.walk(steps[index].expr) if isinstance(n, (ast.Constant, ast.Name))]
    leaves = [n for n in leaves if not isinstance(n, ast.Name) or n.id in solution.quantities]
    if not leaves:
        return None
    leaf = rng.choice(leaves)
    old = solution.quantities[leaf.id] if isinstance(leaf, ast.Name) else leaf.value
    others = [v for v in solution.quantities.values() if not math.isclose(v, old)]
    new = rng.choice(others) if others and rng.random() < 0.5 else nearby_wrong_number(old, rng)
    _replace(steps[index], leaf, ast.Constant(value=new))
    return Corruption("wrong_quantity", steps)


def _dropped_quantity(solution, steps, index, rng) -> Corruption | None:
    ops = [n for n in _nodes(steps[index].expr, ast.BinOp) if isinstance(n.right, (ast.Constant, ast.Name))]
    if len(_nodes(steps[index].expr, ast.BinOp)) < 2 or not ops:
        return None
    node = rng.choice(ops)
    _replace(steps[index], node, node.left)
    return Corruption("dropped_quantity", steps)


def _skipped_step(solution, steps, index, rng) -> Corruption | None:
    skipped = steps[index]
    if index == len(steps) - 1 or sum(step.line == skipped.line for step in steps) > 1:
        return None
    first_leaf = skipped.expr
    while isinstance(first_leaf, ast.BinOp):
        first_leaf = first_leaf.left
    if not isinstance(first_leaf, (ast.Constant, ast.Name)):
        return None
    rest = steps[:index] + steps[index + 1 :]
    for step in rest[index:]:
        for node in _nodes(step.expr, ast.Name):
            if node.id == skipped.name:
                _replace(step, node, copy_expr(first_leaf))
    return Corruption("skipped_step", rest, removed_line=skipped.line)


def _arithmetic_slip(solution, steps, index, rng) -> Corruption | None:
    true_value = evaluate(steps[index].expr, solution.values())
    slipped = nearby_wrong_number(true_value, rng)
    shown = {steps[index].name: steps[index].expr}
    steps[index] = dataclasses.replace(steps[index], expr=ast.Constant(value=slipped))
    return Corruption("arithmetic_slip", steps, shown=shown)


def nearby_wrong_number(value: float, rng: random.Random) -> float:
    """A plausible wrong number: off by one or ten, ten times off, or two digits swapped."""
    digits = format_number(value)
    swap = re.fullmatch(r"\d*(\d)(\d)\d*", digits)
    candidates = [value + 1, value - 1, value + 10, value * 10]
    if swap and swap.group(1) != swap.group(2):
        i = swap.start(1)
        candidates.append(parse_number(digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]))
    new = rng.choice([c for c in candidates if c > 0] or [value + 1])
    return parse_number(format_number(new))


def _replace(step: Step, old: ast.AST, new: ast.expr) -> None:
    """Replace the node `old` (by identity) inside the step's expression."""
    if step.expr is old:
        step.expr = new
        return
    for parent in ast.walk(step.expr):
        for field, child in ast.iter_fields(parent):
            if child is old:
                setattr(parent, field, new)
                return


_CORRUPTORS = {
    "wrong_operation": _wrong_operation,
    "wrong_quantity": _wrong_quantity,
    "dropped_quantity": _dropped_quantity,
    "skipped_step": _skipped_step,
    "arithmetic_slip": _arithmetic_slip,
}
