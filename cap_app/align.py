"""Line up a prose draft with the program that re-solved it, so a reader sees *where* they part.

The draft is split into steps; every equation in a step (GSM8K calculator annotations
`<<16-3=13>>` and plain `16 - 3 = 13`) is re-computed; each step is matched to the program line
that produced the same value (or, failing that, used the same quantities); numbers the program
takes from the question but the draft never mentions are reported as dropped. The arithmetic of
a step is diffed token by token against the program line with its variables replaced by their
values, and other candidate programs are diffed line by line against the chosen one.
`render_side_by_side` turns all of it into self-contained HTML with every piece of model or user
text escaped.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import html
import math
import re

from cap_app.results import RefinementResult
from cap_app.sandbox.result import ExecResult

ANNOTATION_RE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# ASCII: a digit after a letter is part of a name ("x2"), but Chinese or Japanese prose puts
# numbers straight after word characters ("有8个")
NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?|(?<![\w.\d])\.\d+", re.ASCII)
# an equation written in prose: operands (numbers, maybe $, %, parentheses) joined by operators, "=", a result
_OPERAND = r"\(*\s*\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?\s*\)*"
EQUATION_RE = re.compile(
    rf"(?P<expr>{_OPERAND}(?:\s*[-+*/x×÷]\s*{_OPERAND})+)\s*=\s*\$?(?P<result>-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?)"
)
_OPERATOR_BEFORE_RE = re.compile(r"[-+*/x×÷]\s*$")  # "3 years * (1/3) = 9": only part of it was caught
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z$])|(?<=[。！？])(?=.)")  # CJK full stops need no space
ANSWER_LINE_RE = re.compile(r"^\s*(?:A:|####|The answer is|Answer:|答案|答[:：])", re.IGNORECASE)
TOKEN_RE = re.compile(r"\d[\d,]*(?:\.\d+)?|\w+|[^\w\s]")
WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "dozen": 12, "half": 0.5, "twice": 2, "double": 2,
    "triple": 3, "quarter": 0.25,
}
WORD_NUMBER_RE = re.compile(r"\b(" + "|".join(WORD_NUMBERS) + r")\b", re.IGNORECASE)
MAX_EXPONENT = 64  # `2 ** 10**9` in a draft must not hang the page


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
        if self.claimed.endswith("%"):
            claimed /= 100
        return same_number(self.actual, claimed, decimals=_decimals(self.claimed.rstrip("%")))


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


def parse_number(text: str | None) -> float | None:
    """A number out of a short answer or repr ("$1,200", "13.50", "18.0"); None when there is none."""
    if text is None:
        return None
    cleaned = text.strip().strip("'\"").replace(",", "").replace("$", "").rstrip("%")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def same_number(actual: float, claimed: float, *, decimals: int | None = None) -> bool:
    """Equal up to float noise, or up to the rounding the writer used ("3.33" for 10/3)."""
    if math.isclose(actual, claimed, rel_tol=1e-9, abs_tol=1e-9):
        return True
    return bool(decimals) and abs(actual - claimed) <= 0.5 * 10 ** -decimals + 1e-9


def numbers_in(text: str) -> list[float]:
    """Every quantity a piece of prose mentions, in digits or in words."""
    values = [parse_number(m.group()) for m in NUMBER_RE.finditer(text)]
    values += [float(WORD_NUMBERS[m.group().lower()]) for m in WORD_NUMBER_RE.finditer(text)]
    return [v for v in values if v is not None]


def _contains(values: list[float], value: float) -> bool:
    return any(same_number(value, v) for v in values)


def evaluate_arithmetic(expression: str) -> float | None:
    """Value of a written-out calculation (+ - * / ** and parentheses only), None if it is not one."""
    text = expression.replace(",", "").replace("$", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    text = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return float(_eval_node(tree.body))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None


_BINARY = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
}


def _eval_node(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _eval_node(node.left), _eval_node(node.right)
        if abs(exponent) > MAX_EXPONENT:
            raise ValueError("exponent too large")
        return base**exponent
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_eval_node(node.left), _eval_node(node.right))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


# --- draft -------------------------------------------------------------------------------


def split_draft(draft: str) -> list[DraftStep]:
    """The draft as steps (lines, then sentences), each with its equations re-computed."""
    steps: list[DraftStep] = []
    for raw_line in draft.splitlines():
        annotations = [(expr, claimed.strip()) for expr, claimed in ANNOTATION_RE.findall(raw_line)]
        line = ANNOTATION_RE.sub("", raw_line).strip()
        if not line:
            continue
        pieces = [line] if ANSWER_LINE_RE.match(line) else SENTENCE_SPLIT_RE.split(line)
        for piece in pieces:
            checks = [
                ArithmeticCheck(m.group("expr").strip(), m.group("result"), evaluate_arithmetic(m.group("expr")))
                for m in EQUATION_RE.finditer(piece) if not _OPERATOR_BEFORE_RE.search(piece[:m.start()])
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
        lines.append(ProgramLine(
            number, source, values.get(number, {}), hits.get(number, 0), literals.get(number, []),
            evaluated.get(number), execution.answer if number == answer_line else None,
        ))
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


def align_draft_to_program(draft: str, program: str | None, trace: ExecResult | None,
                           question: str = "") -> Alignment:
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
    draft_numbers = numbers_in(ANNOTATION_RE.sub(" ", draft))
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
            return " ".join(words[max(0, i - 5): i + 4])
    return ""


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


# --- HTML ----------------------------------------------------------------------------------

STYLE = """<style>
.cap-sbs{font-size:14px;line-height:1.45}
.cap-sbs table{width:100%;border-collapse:collapse;table-layout:fixed}
.cap-sbs th{text-align:left;padding:6px;border-bottom:2px solid #8884}
.cap-sbs td{vertical-align:top;padding:6px;border-bottom:1px solid #8883;overflow-wrap:anywhere}
.cap-sbs tr.cap-unmatched td{opacity:.8}
.cap-sbs code,.cap-sbs pre{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;margin:0}
.cap-sbs .cap-lineno{color:#888;margin-right:6px}
.cap-sbs .cap-check{display:inline-block;margin:2px 6px 0 0;padding:0 5px;border-radius:4px;font-family:ui-monospace,monospace;font-size:12px}
.cap-sbs .cap-ok{background:#2ca02c22;color:#1a7f1a}
.cap-sbs .cap-bad{background:#d6272822;color:#b00}
.cap-sbs .cap-unknown{background:#8882}
.cap-sbs .cap-value{display:inline-block;margin-top:2px;padding:0 5px;border-radius:4px;background:#1f77b422;font-family:ui-monospace,monospace;font-size:12px}
.cap-sbs .cap-diff{margin-top:3px;font-family:ui-monospace,monospace;font-size:12px}
.cap-sbs ins{background:#2ca02c33;text-decoration:none}
.cap-sbs del{background:#d6272833}
.cap-sbs .cap-match{font-size:11px;color:#888}
.cap-sbs .cap-dropped{margin-top:10px;padding:8px;border-left:4px solid #ff7f0e;background:#ff7f0e14}
.cap-sbs .cap-note{margin-top:10px;color:#888}
.cap-sbs details{margin-top:10px}
</style>"""

_E = html.escape
MATCH_REASONS = {"value": "the same value", "quantities": "shared quantities", "answer": "the final answer"}


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _check_html(check: ArithmeticCheck) -> str:
    text = f"{_E(check.expression)} = {_E(check.claimed)}"
    if check.ok is None:
        return f'<span class="cap-check cap-unknown" title="could not re-compute">{text} ?</span>'
    if check.ok:
        return f'<span class="cap-check cap-ok">{text} ✓</span>'
    return (f'<span class="cap-check cap-bad">{text} ✗ '
            f'(is {_E(_format_number(check.actual))})</span>')


def _diff_html(diff: list[tuple[str, str]]) -> str:
    parts = []
    for op, text in diff:
        parts.append({"equal": _E(text), "delete": f"<del>{_E(text)}</del>", "insert": f"<ins>{_E(text)}</ins>"}[op])
    return " ".join(parts)


def _step_cell(row: AlignedRow) -> str:
    if row.step is None:
        return ""
    checks = "".join(_check_html(c) for c in row.step.checks)
    return f'<div class="cap-step">{_E(row.step.text)}</div>{checks}'


def _line_cell(row: AlignedRow) -> str:
    line = row.line
    if line is None:
        return '<span class="cap-match">no program line computes this</span>' if row.step else ""
    parts = [f'<pre><span class="cap-lineno">{line.number}</span>{_E(line.source)}</pre>']
    # a `def` line "changes" a name to a function object: not a quantity worth showing
    shown = ", ".join(f"{_E(k)} = {_E(v)}" for k, v in line.values.items() if not v.startswith("<function"))
    if line.printed is not None:
        shown = (shown + ", " if shown else "") + f"prints {_E(line.printed)}"
    if shown:
        runs = f" (ran {line.hits}×, last values)" if line.hits > 1 else ""
        parts.append(f'<span class="cap-value">→ {shown}{runs}</span>')
    diff = row.diff()
    if diff and any(op != "equal" for op, _ in diff):
        parts.append(f'<div class="cap-diff">draft vs program: {_diff_html(diff)}</div>')
    if row.match:
        parts.append(f'<div class="cap-match">matched by {MATCH_REASONS[row.match]}</div>')
    return "".join(parts)


def _dropped_html(dropped: list[DroppedQuantity]) -> str:
    if not dropped:
        return ""
    items = "".join(
        f"<li><b>{_E(_format_number(d.value))}</b> (program line {', '.join(map(str, d.lines))}"
        + (f"; question: “…{_E(d.context)}…”" if d.context else "") + ")</li>"
        for d in dropped
    )
    return f'<div class="cap-dropped">Quantities the program uses that the draft dropped:<ul>{items}</ul></div>'


def _other_programs_html(result: RefinementResult) -> str:
    if result.chosen is None:
        return ""
    chosen = result.candidates[result.chosen]
    blocks = []
    for i, cand in enumerate(result.candidates):
        if i == result.chosen or cand.program == chosen.program:
            continue
        lines = "\n".join(
            {"equal": f"  {_E(t)}", "delete": f"<del>- {_E(t)}</del>", "insert": f"<ins>+ {_E(t)}</ins>"}[op]
            for op, t in line_diff(chosen.program, cand.program)
        )
        answer = _E(cand.answer) if cand.answer is not None else _E(cand.execution.status)
        blocks.append(f"<p>Program {i + 1} (answer: {answer}) against the chosen program {result.chosen + 1}:</p><pre>{lines}</pre>")
    if not blocks:
        return ""
    return f"<details><summary>Other programs ({len(blocks)}), line diff against the chosen one</summary>{''.join(blocks)}</details>"


def render_side_by_side(result: RefinementResult) -> str:
    """The draft's steps beside the program's lines, as self-contained HTML (all text escaped)."""
    candidate = result.shown_candidate
    program = candidate.program if candidate else ""
    execution = candidate.execution if candidate else None
    alignment = align_draft_to_program(result.draft, program, execution, result.question)
    body = "".join(
        f'<tr class="{"cap-matched" if r.match else "cap-unmatched"}"><td>{_step_cell(r)}</td><td>{_line_cell(r)}</td></tr>'
        for r in alignment.rows
    )
    note = ""
    if candidate is None:
        note = '<div class="cap-note">No program was generated.</div>'
    elif candidate.cut_off:
        note = f'<div class="cap-note">The program was {_E(candidate.cut_off)}.</div>'
    elif execution is not None and not execution.ok:
        note = f'<div class="cap-note">The program did not finish: {_E(execution.error or execution.status)}</div>'
    return (
        f'<div class="cap-sbs">{STYLE}<table><thead><tr><th>Draft step (arithmetic re-checked)</th>'
        f'<th>Program line → value from the trace</th></tr></thead><tbody>{body}</tbody></table>'
        f"{note}{_dropped_html(alignment.dropped)}{_other_programs_html(result)}</div>"
    )
