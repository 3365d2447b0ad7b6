"""Draft variants that test (and teach) what refinement with a tool is for.

- A *slip* draft: one computation of a right draft states a wrong result (off by one or ten,
  ten times off, two digits swapped), and the draft goes on from that number as a real slip
  does: later text and computations use it, their results follow from it, and so does the final
  answer. A refiner that recomputes each step gets the gold answer back; one that copies gets
  the slip's answer.
- A *plain* draft: the same text without GSM8K's `<<16-3=13>>` calculator annotations, the way
  today's chat models write.

Both are built by code, seeded, never by hand, so that a figure measured on them can be rebuilt.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

from cap_app.data.corrupt import nearby_wrong_number
from cap_app.data.faithful import Computation, computations
from cap_app.engine.answers import answers_equal, extract_draft_answer
from cap_app.engine.arithmetic import ANNOTATION, NUMBER, evaluate_arithmetic, format_number, parse_number, same_number

_RESULT_BEFORE = re.compile(r"(?:=\s*\$?|>>)$")  # a number right after these is a stated result


def plain_draft(draft: str) -> str:
    """The draft without its calculator annotations ("= $<<9*2=18>>18" -> "= $18")."""
    return ANNOTATION.sub("", draft)


def slip_draft(
    draft: str, gold: str, rng: random.Random, *, min_steps: int = 2, step: int | None = None
) -> tuple[str, int] | None:
    """A slip of a right draft and the index of the slipped computation (`step`, else a random
    one that works); None when the draft is not right, has fewer than `min_steps` computations,
    or no slip changes its final answer without landing on a number the draft already uses."""
    steps = computations(draft)
    if len(steps) < min_steps or not answers_equal(extract_draft_answer(draft), gold):
        return None
    order = list(range(len(steps))) if step is None else [step]
    rng.shuffle(order)
    for index in order:
        stated = steps[index].stated_value
        if stated is None:
            continue
        propagated = _propagate(draft, steps, index, nearby_wrong_number(stated, rng))
        if propagated is None:
            continue
        slipped, changed = propagated
        new_values = [new for _, new in changed]
        used = _numbers(draft)
        if any(same_number(new, value) for new in new_values for value in used) or len(
            {format_number(v) for v in new_values}
        ) < len(new_values):
            continue  # a wrong number that equals another number of the draft would be ambiguous
        if not answers_equal(extract_draft_answer(slipped), gold):
            return slipped, index
    return None


def _propagate(
    draft: str, steps: list[Computation], index: int, new_value: float
) -> tuple[str, list[tuple[float, float]]] | None:
    """The draft with computation `index` stating `new_value` and every later mention of a changed
    number, every later computation's result and the final answer following from it; and the
    (old, new) values that changed. None when a later result turns negative or incomputable."""
    changed: list[tuple[float, float]] = []
    lines = draft.split("\n")
    for line_no in range(steps[index].line, len(lines)):
        line, pieces, cursor = lines[line_no], [], 0
        for position, step in enumerate(steps):
            if step.line != line_no or position < index:
                continue
            gap = line[cursor : step.start]
            if position == index:  # the slip itself: its operands stay, its stated result changes
                pieces += [gap, _rewrite_span(line[step.start : step.end], [], format_number(new_value))]
                changed.append((step.stated_value, new_value))
            else:
                result = _recomputed(step, changed)
                if result is None or result < 0:
                    return None
                pieces += [
                    _substitute(gap, changed),
                    _rewrite_span(line[step.start : step.end], changed, format_number(result)),
                ]
                if not same_number(result, step.stated_value):
                    changed.append((step.stated_value, result))
            cursor = step.end
        pieces.append(_substitute(line[cursor:], changed))
        lines[line_no] = "".join(pieces)
    return "\n".join(lines), changed


def _numbers(text: str) -> list[float]:
    values = [parse_number(match.group()) for match in NUMBER.finditer(text)]
    return [value for value in values if value is not None]


def _recomputed(step: Computation, changed: list[tuple[float, float]]) -> float | None:
    """The step's value with earlier changed numbers put into its expression."""

    class Put(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.expr:
            new = _lookup(float(node.value), changed) if isinstance(node.value, (int, float)) else None
            return ast.Constant(value=parse_number(format_number(new))) if new is not None else node

    tree = Put().visit(ast.parse(step.expression, mode="eval"))
    return evaluate_arithmetic(ast.unparse(tree))


def _lookup(value: float, changed: list[tuple[float, float]]) -> float | None:
    for old, new in reversed(changed):
        if same_number(value, old):
            return new
    return None


def _substitute(text: str, changed: list[tuple[float, float]]) -> str:
    """Every number in `text` that was changed, written as its new value."""

    def put(match: re.Match) -> str:
        value = parse_number(match.group())
        new = _lookup(value, changed) if value is not None else None
        return format_number(new) if new is not None else match.group()

    return NUMBER.sub(put, text)


def _rewrite_span(span: str, changed: list[tuple[float, float]], result: str) -> str:
    """A computation's text: stated results (after `=`, `= $` or `>>`) become `result`, other
    numbers follow `changed`."""

    def put(match: re.Match) -> str:
        if _RESULT_BEFORE.search(span[: match.start()].rstrip(" ")):
            return result
        value = parse_number(match.group())
        new = _lookup(value, changed) if value is not None else None
        return format_number(new) if new is not None else match.group()

    return NUMBER.sub(put, span)


def write_variants(source: Path, target: Path, *, kind: str, seed: int = 0, min_steps: int = 2) -> dict:
    """Rewrite a drafts file (question, ground_truth, one {solution, is_correct} per draft source)
    into its slip or plain variant in the same format; returns counts per draft source.

    Each slip draws from its own generator seeded by (seed, line, source), so one item's slip
    does not depend on the others. A row keeps only the sources that got a slip, and rows without
    any are left out; `original` holds the draft each slip was made from."""
    from cap_app.engine.answers import normalize_answer

    counts: dict[str, int] = {}
    rows_out = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        gold = normalize_answer(row["ground_truth"].rsplit("\n", 1)[-1])
        out = {key: value for key, value in row.items() if not isinstance(value, dict)}
        varied = False
        for key, value in row.items():
            if not (isinstance(value, dict) and isinstance(value.get("solution"), str)):
                continue
            if kind == "plain":
                out[key] = {**value, "solution": plain_draft(value["solution"])}
            else:
                slipped = slip_draft(
                    value["solution"], gold, random.Random(f"{seed}:{number}:{key}"), min_steps=min_steps
                )
                if slipped is None:
                    continue
                out[key] = {
                    "solution": slipped[0],
                    "is_correct": False,
                    "slipped_step": slipped[1],
                    "original": value["solution"],
                }
            counts[key] = counts.get(key, 0) + 1
            varied = True
        if varied:
            rows_out.append(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_out), encoding="utf-8")
    return {"rows": len(rows_out), **counts}
