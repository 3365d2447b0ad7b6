"""Line up a prose draft with the program that re-solved it, so a reader sees *where* they part.

The draft is split into steps; every equation in a step (GSM8K calculator annotations
`<<16-3=13>>` and plain `16 - 3 = 13`) is re-computed; each step is matched to the program line
that produced the same value (or, failing that, used the same quantities); numbers the program
takes from the question but the draft never mentions are reported as dropped. The arithmetic of
a step is diffed token by token against the program line with its variables replaced by their
values, and other candidate programs are diffed line by line against the chosen one.
`cap_app.ui.views.render_side_by_side` shows all of it as HTML.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import re

from cap_app.engine.answers import extract_draft_answer
from cap_app.engine.arithmetic import ANNOTATION, NUMBER, evaluate_arithmetic, format_number, parse_number, same_number
from cap_app.sandbox.result import ExecResult

# an equation written in prose: operands (numbers, maybe $, %, parentheses) joined by operators, "=", a result
_OPERAND = r"\(*\s*\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?\s*\)*"
EQUATION_RE = re.compile(
    rf"(?P<expr>{_OPERAND}(?:\s*[-+*/x×÷]\s*{_OPERAND})+)\s*=\s*\$?(?P<result>-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?)"
    r"(?!\d|[.,]\d|\s*[*/×÷]\s*\$?\d)"  # "= $100/5": a calculation on the right-hand side, not a result
)
_OPERATOR_BEFORE_RE = re.compile(r"[-+*/x×÷]\s*$")  # "3 years * (1/3) = 9": only part of it was caught
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z$])|(?<=[。！？])(?=.)")  # CJK full stops need no space
ANSWER_LINE_RE = re.compile(r"^\s*(?:A:|####|The answer is|Answer:|答案|答[:：])", re.IGNORECASE)
# a sentence that states the final answer rather than working towards it
STATES_ANSWER_RE = re.compile(r"\b(?:final answer|the answer is|answer\s*:)", re.IGNORECASE)
TOKEN_RE = re.compile(r"\d[\d,]*(?:\.\d+)?|\w+|[^\w\s]")
WORD_NUMBERS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "dozen": 12,
    "half": 0.5,
    "twice": 2,
    "double": 2,
    "triple": 3,
    "quarter": 0.25,
}
WORD_NUMBER_RE = re.compile(r"\b(" + "|".join(WORD_NUMBERS) + r")\b", re.IGNORECASE)


@dataclasses.dataclass
class ArithmeticCheck:
    """One equation of a draft step, re-computed."""

    expression: str  # as written, e.g. "16 - 3"
    claimed: str  # the result the draft wrote, e.g. "13"
    actual: float | None  # what the expression really is (None: could not evaluate)

    @property
    def ok(self) -> bool | None:
        claimed = parse_number(self.claimed)
        if self.actual is None or claimed is None:
            return None
        decimals = _decimals(self.claimed.rstrip("%"))
        if self.claimed.endswith("%"):  # "3/4 = 75%", and "25/100 x 100 = 25%" where % is only a unit
            return any(same_number(self.actual, c, decimals=decimals) for c in (claimed / 100, claimed))
        return same_number(self.actual, claimed, decimals=decimals)


@dataclasses.dataclass
class DraftStep:
    index: int
    text: str  # the step with calculator annotations removed
    numbers: list[float]  # every quantity it mentions (digits and number words)
    checks: list[ArithmeticCheck]
    is_answer: bool = False  # the "A: 18" line

    @property
    def results(self) -> list[float]:
        """The values this step computes (right-hand sides of its equations)."""
        values = [parse_number(c.claimed) for c in self.checks]
        return [v for v in values if v is not None]


@dataclasses.dataclass
class ProgramLine:
    number: int  # 1-based, the program's own numbering (as in the trace)
    source: str
    values: dict[str, str]  # variables it changed on its last execution (short reprs)
    hits: int  # how many times it ran
    literals: list[float]  # numeric constants written on the line
    evaluated: str | None = None  # its right-hand side with variables replaced by their values
    printed: str | None = None  # the program's answer, on the line that printed it

    @property
    def produced(self) -> list[float]:
        values = [parse_number(v) for v in self.values.values()]
        if self.printed is not None:
            values.append(parse_number(self.printed))
        return [v for v in values if v is not None]


@dataclasses.dataclass
class AlignedRow:
    step: DraftStep | None
    line: ProgramLine | None
    match: str | None = None  # "value" (same result), "quantities" (same inputs), "answer" or None

    def diff(self) -> list[tuple[str, str]]:
        """Token diff of the step's last equation against the line's evaluated expression."""
        if not (self.step and self.line and self.step.checks and self.line.evaluated):
            return []
        return token_diff(self.step.checks[-1].expression, self.line.evaluated)


@dataclasses.dataclass
class DroppedQuantity:
    """A number the program takes from the question that the draft never uses."""

    value: float
    lines: list[int]
    context: str  # the words around it in the question


@dataclasses.dataclass
class Alignment:
    rows: list[AlignedRow]
    dropped: list[DroppedQuantity]


# --- numbers -------------------------------------------------------------------------------


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def numbers_in(text: str) -> list[float]:
    """Every quantity a piece of prose mentions, in digits or in words."""
    values = [parse_number(m.group()) for m in NUMBER.finditer(text)]
    values += [float(WORD_NUMBERS[m.group().lower()]) for m in WORD_NUMBER_RE.finditer(text)]
    return [v for v in values if v is not None]


def _contains(values: list[float], value: float) -> bool:
    return any(same_number(value, v) for v in values)


# --- draft -------------------------------------------------------------------------------


def split_draft(draft: str) -> list[DraftStep]:
    """The draft as steps (lines, then sentences), each with its equations re-computed."""
    steps: list[DraftStep] = []
    for raw_line in draft.splitlines():
        annotations = [(expr, claimed.strip()) for expr, claimed in ANNOTATION.findall(raw_line)]
        line = ANNOTATION.sub("", raw_line).strip()
        if not line:
            continue
        pieces = [line] if ANSWER_LINE_RE.match(line) else SENTENCE_SPLIT_RE.split(line)
        for piece in pieces:
            checks = [
                ArithmeticCheck(m.group("expr").strip(), m.group("result"), evaluate_arithmetic(m.group("expr")))
                for m in EQUATION_RE.finditer(piece)
                if not _OPERATOR_BEFORE_RE.search(piece[: m.start()])
            ]
            # a calculator annotation whose equation the prose does not spell out is still checked
            for expr, claimed in annotations:
                if not any(c.claimed == claimed for c in checks) and expr.strip() and piece is pieces[-1]:
                    checks.append(ArithmeticCheck(expr.strip(), claimed, evaluate_arithmetic(expr)))
            steps.append(DraftStep(len(steps), piece, numbers_in(piece), checks, bool(ANSWER_LINE_RE.match(piece))))
    return steps


# --- program -------------------------------------------------------------------------------


def _line_literals(program: str) -> dict[int, list[float]]:
    """Numeric constants per program line (empty when the program does not parse)."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return {}
    literals: dict[int, list[float]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            literals.setdefault(node.lineno, []).append(float(node.value))
    return literals


def _right_hand_side(source: str) -> str | None:
    match = re.match(r"^\s*[A-Za-z_]\w*\s*(?:[-+*/]{1,2})?=(?!=)\s*(.+)$", source)
    return match.group(1).strip() if match else None


def program_lines(program: str, execution: ExecResult | None) -> list[ProgramLine]:
    """The program's lines with what the trace says each produced."""
    literals = _line_literals(program)
    trace = execution.trace if execution else []
    values: dict[int, dict[str, str]] = {}
    hits: dict[int, int] = {}
    evaluated: dict[int, str] = {}
    env: dict[str, str] = {}
    sources = program.splitlines()
    for step in trace:
        hits[step.line] = hits.get(step.line, 0) + 1
        values[step.line] = dict(step.changed)
        source = sources[step.line - 1] if 0 < step.line <= len(sources) else step.source
        rhs = _right_hand_side(source)
        if rhs is not None and step.line not in evaluated:
            evaluated[step.line] = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: env.get(m.group(), m.group()), rhs)
        env.update(step.changed)
    print_lines = [i for i, src in enumerate(sources, 1) if re.search(r"\bprint\s*\(", src)]
    answer_line = print_lines[-1] if print_lines and execution and execution.answer is not None else None
    lines = []
    for number, source in enumerate(sources, 1):
        if not source.strip():
            continue
        lines.append(
            ProgramLine(
                number,
                source,
                values.get(number, {}),
                hits.get(number, 0),
                literals.get(number, []),
                evaluated.get(number),
                execution.answer if number == answer_line else None,
            )
        )
    return lines


# --- alignment -----------------------------------------------------------------------------


def _best_line(step: DraftStep, lines: list[ProgramLine], start: int) -> tuple[int, str] | None:
    """Index of the program line this step corresponds to, searching from `start` on."""
    targets = step.results or ([step.numbers[-1]] if step.is_answer and step.numbers else [])
    for i in range(start, len(lines)):
        if any(_contains(lines[i].produced, t) for t in targets):
            return i, "value"
    if step.is_answer:
        printing = [i for i in range(start, len(lines)) if lines[i].printed is not None]
        if printing:
            return printing[0], "answer"
    best, best_overlap = None, 0
    inputs = [n for n in step.numbers if not _contains(step.results, n)]
    for i in range(start, len(lines)):
        used = lines[i].literals + numbers_in(lines[i].evaluated or "")
        overlap = sum(1 for n in set(inputs) if _contains(used, n))
        if overlap > best_overlap:
            best, best_overlap = i, overlap
    return (best, "quantities") if best is not None else None


def align_draft_to_program(draft: str, program: str | None, trace: ExecResult | None, question: str = "") -> Alignment:
    """Rows pairing each draft step with the program line computing the same thing (order kept).

    `trace` is the execution of `program` (its line trace gives each line's values); `question`,
    when given, limits "dropped" quantities to numbers the question states.
    """
    steps = split_draft(draft)
    lines = program_lines(program or "", trace)
    rows: list[AlignedRow] = []
    position = 0
    for step in steps:
        found = _best_line(step, lines, position)
        if found is None:
            rows.append(AlignedRow(step, None))
            continue
        index, how = found
        rows.extend(AlignedRow(None, line) for line in lines[position:index])
        rows.append(AlignedRow(step, lines[index], how))
        position = index + 1
    rows.extend(AlignedRow(None, line) for line in lines[position:])
    return Alignment(rows, dropped_quantities(draft, lines, question))


def dropped_quantities(draft: str, lines: list[ProgramLine], question: str = "") -> list[DroppedQuantity]:
    """Numbers the program writes down (and the question states) that the draft never mentions."""
    draft_numbers = numbers_in(ANNOTATION.sub(" ", draft))
    question_numbers = numbers_in(question) if question else None
    dropped: dict[float, DroppedQuantity] = {}
    for line in lines:
        for value in line.literals:
            if _contains(draft_numbers, value):
                continue
            if question_numbers is not None and not _contains(question_numbers, value):
                continue
            if value in dropped:
                dropped[value].lines.append(line.number)
            else:
                dropped[value] = DroppedQuantity(value, [line.number], _context(question, value))
    return list(dropped.values())


def _context(question: str, value: float) -> str:
    """The few words of the question around the first mention of `value`."""
    words = question.split()
    for i, word in enumerate(words):
        if _contains(numbers_in(word), value):
            return " ".join(words[max(0, i - 5) : i + 4])
    return ""


def located_mistake(draft: str, program: str | None, execution: ExecResult | None, question: str = "") -> str | None:
    """Where the program shows the draft wrong, in words, or None: a calculation of the draft that is
    wrong and whose right value the program computed, else a quantity of the question that the
    program uses and the draft never mentions. This is what lets a program overrule a draft: one that
    merely reaches another answer may have misread the draft (a small model often does); one that
    recomputes a step the draft got wrong, or uses what the draft left out, has found its mistake;
    so has one that prints the draft's own last result where the draft then states another answer
    (`unfollowed_answer`). Needs the execution's trace."""
    if not program or execution is None:
        return None
    lines = program_lines(program, execution)
    produced = [value for line in lines for value in line.produced]
    for step in split_draft(draft):
        for check in step.checks:
            if check.ok is False and check.actual is not None and _contains(produced, check.actual):
                return f"{check.expression} = {check.claimed}, but it is {format_number(check.actual)}"
    unfollowed = unfollowed_answer(draft, execution.answer)
    if unfollowed is not None:
        return unfollowed
    if question:
        for dropped in dropped_quantities(draft, lines, question):
            return f"it never uses the question's {format_number(dropped.value)} (“{dropped.context}”)"
    return None


def unfollowed_answer(draft: str, program_answer: str | None) -> str | None:
    """The draft's answer does not follow from its work, in words, or None: its stated answer is
    neither the result of its last calculation (nor that result rounded) nor any number its steps
    mention (so no step of prose derives it either), and the program printed that last result. A draft that computes 18
    and states 42 contradicts itself; a program agreeing with its work locates the mistake."""
    stated = parse_number(extract_draft_answer(draft))
    printed = parse_number(program_answer)
    if stated is None or printed is None:
        return None
    steps = split_draft(draft)
    work = [step for step in steps if not (step.is_answer or STATES_ANSWER_RE.search(step.text))]
    results = [value for step in work for value in step.results]
    # within 1 of the last result, the answer is that result rounded ("2.5 years" -> "A: 2"): it follows
    if not results or not same_number(printed, results[-1]) or abs(stated - results[-1]) < 1:
        return None
    if any(_contains(step.numbers, stated) for step in work):
        return None
    last, answer = format_number(results[-1]), format_number(stated)
    return f"its answer does not follow from its work (it computes {last}, then states {answer})"


# --- diffs ---------------------------------------------------------------------------------


def token_diff(old: str, new: str) -> list[tuple[str, str]]:
    """Word/number/operator-level diff: [(op, text)] with op in equal, delete, insert."""
    a, b = TOKEN_RE.findall(old), TOKEN_RE.findall(new)
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op in ("equal", "delete", "replace") and i2 > i1:
            out.append(("equal" if op == "equal" else "delete", " ".join(a[i1:i2])))
        if op in ("insert", "replace") and j2 > j1:
            out.append(("insert", " ".join(b[j1:j2])))
    return out


def line_diff(old: str, new: str) -> list[tuple[str, str]]:
    """Line-level diff of two programs: [(op, line)] with op in equal, delete, insert."""
    out: list[tuple[str, str]] = []
    a, b = old.splitlines(), new.splitlines()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += [("equal", line) for line in a[i1:i2]]
            continue
        out += [("delete", line) for line in a[i1:i2]]
        out += [("insert", line) for line in b[j1:j2]]
    return out
