"""Turn a result into what the page shows: verdict, draft vs program, trace rows, run output.

Pure functions (no gradio import), so the annotator tab and tests reuse them. What needs a
judgement (right or wrong, which step matches which line) is read from the result's Reading
(cap_app.engine.reading), made once per result; the rest is the RefinementResult's own facts.
All model and user text is escaped before it goes into HTML.
"""

from __future__ import annotations

import html

from cap_app.engine.align import AlignedRow, ArithmeticCheck, DroppedQuantity, line_diff
from cap_app.engine.reading import Reading
from cap_app.engine.results import CUT_OFFS, Candidate, RefinementResult

TRACE_HEADERS = ["line", "code", "variables changed"]
_E = html.escape


def _answer(text: str | None) -> str:
    return text if text is not None else "none"


def verdict_sentence(reading: Reading) -> str:
    """One plain sentence, e.g. "The program corrects the draft: 18, not 26 (…)"."""
    result = reading.result
    refined, draft = result.refined_answer, result.draft_answer
    program = result.program_answer
    if result.verdict == "no_answer":
        reason, advice = _no_answer_reason(result.shown_candidate, lowered=bool(result.notes))
        draft_part = (
            f"so the draft's answer {draft} stands, unverified"
            if draft is not None
            else "and the draft states no final answer"
        )
        sentence = f"No program produced an answer{reason}, {draft_part}.{advice}"
    elif draft is None:
        sentence = f"The draft states no final answer; the refinement gives {refined}."
    elif result.verdict == "agrees":
        sentence = f"The refinement agrees with the draft: {refined}."
    elif result.verdict == "unconfirmed":
        sentence = (
            f"The program got {_answer(program)} but found no wrong calculation or left-out quantity in the draft, "
            f"so the draft's answer {draft} stands, unconfirmed: check the steps where they part."
        )
    elif result.draft_mistake:
        sentence = f"The refinement corrects the draft: {refined}, not {draft}. Its mistake: {result.draft_mistake}."
    else:
        sentence = f"The refinement disagrees with the draft: {refined} vs {draft}."
    if result.gold is not None:
        sentence += " " + _gold_sentence(reading)
    return sentence


# a budget already lowered to what the model's context leaves (result.notes) cannot be raised
_CONTEXT_FULL_ADVICE = "The model's context has no more room: shorten the draft for a longer program."


def _cut_off_advice(candidate: Candidate, lowered: bool) -> str:
    return _CONTEXT_FULL_ADVICE if lowered and candidate.finish == "length" else CUT_OFFS[candidate.finish].advice


def _no_answer_reason(candidate: Candidate | None, lowered: bool = False) -> tuple[str, str]:
    """Why the shown program gave no answer (in parentheses) and, for a program cut off, what to change."""
    if candidate is None:
        return "", ""
    if candidate.cut_off:
        return f" (it was {candidate.cut_off})", " " + _cut_off_advice(candidate, lowered)
    execution = candidate.execution
    return (f" ({execution.error or execution.status})" if not execution.ok else " (it printed no answer)"), ""


def _gold_sentence(reading: Reading) -> str:
    def mark(ok: bool | None) -> str:
        return "right" if ok else "wrong"

    result = reading.result
    parts = []
    if result.program_answer is not None:
        parts.append(f"the program is {mark(reading.program_right)}")
    if result.draft_answer is not None:
        parts.append(f"the draft is {mark(result.draft_correct)}")
    return f"Gold answer {result.gold}" + (": " + " and ".join(parts) if parts else "") + "."


def _badge(label: str, value: str | None, correct: bool | None) -> str:
    mark = {True: ("✓", "#2ca02c"), False: ("✗", "#d62728"), None: ("", "#888")}[correct]
    return (
        f'<div class="cap-badge" style="display:inline-block;margin:0 12px 6px 0;padding:6px 10px;'
        f'border-radius:6px;border:1px solid {mark[1]};">'
        f'<div style="font-size:12px;color:#888">{_E(label)}</div>'
        f'<div style="font-size:20px;font-weight:600">{_E(_answer(value))} '
        f'<span style="color:{mark[1]}">{mark[0]}</span></div></div>'
    )


def verdict_html(reading: Reading) -> str:
    """Draft vs refined (vs gold) answers with right/wrong marks, and the plain sentence."""
    result = reading.result
    has_gold = result.gold is not None
    draft_mark = result.draft_correct if has_gold else None
    program_mark = reading.program_right
    draft_label = "draft"
    if not has_gold and result.draft_answer is not None:  # the badge says what the sentence says
        if result.verdict in ("no_answer", "unconfirmed"):
            draft_label = f"draft ({'unverified' if result.verdict == 'no_answer' else 'unconfirmed'})"
        else:
            draft_label = "draft (checked by the program)"
            draft_mark = reading.draft_matches_refined
    badges = _badge(draft_label, result.draft_answer, draft_mark)
    badges += _badge(f"program ({result.strategy})", result.program_answer, program_mark)
    if has_gold:
        badges += _badge("gold", result.gold, None)
    notes = "".join(f'<p class="cap-note" style="margin:4px 0;color:#888">{_E(note)}</p>' for note in result.notes)
    return (
        f'<div class="cap-verdict" data-verdict="{_E(result.verdict)}">{badges}'
        f'<p class="cap-verdict-sentence" style="font-size:16px;margin:4px 0">'
        f"{_E(verdict_sentence(reading))}</p>{notes}</div>"
    )


def message_html(text: str, kind: str = "info") -> str:
    """A short notice (busy, bad input, stopped) for the verdict area."""
    colour = {"info": "#1f77b4", "warning": "#ff7f0e", "error": "#d62728"}[kind]
    return f'<div class="cap-message cap-{kind}" style="padding:8px;border-left:4px solid {colour}">{_E(text)}</div>'


def trace_table(result: RefinementResult) -> list[list]:
    """Rows [line, code, variables changed] of the chosen program's trace (for a gr.Dataframe)."""
    shown = result.shown_candidate
    if shown is None:
        return []
    execution = shown.execution
    rows: list[list] = [
        [step.line, step.source.strip(), ", ".join(f"{k} = {v}" for k, v in step.changed.items())]
        for step in execution.trace
    ]
    if execution.trace_truncated:
        rows.append(["…", "(trace truncated)", ""])
    return rows


def execution_text(result: RefinementResult) -> str:
    """What the chosen program printed, then its error, with truncation made visible. A program cut
    off by generation fails on the line it was cut at: the cut is named instead of that error,
    which would blame code the model never finished writing."""
    shown = result.shown_candidate
    if shown is None:
        return "No program was run."
    execution = shown.execution
    parts = [execution.stdout.rstrip("\n") or "(nothing printed)"]
    if execution.stdout_truncated:
        parts.append("[output truncated]")
    if shown.cut_off:
        parts.append(f"The program was {shown.cut_off}. {_cut_off_advice(shown, bool(result.notes))}")
        parts.append(f"[cut off, ran {execution.duration_ms:.0f} ms]")
        return "\n".join(parts)
    if execution.error:
        parts.append(f"error: {execution.error}")
    parts.append(f"[{execution.status}, {execution.duration_ms:.0f} ms]")
    return "\n".join(parts)


# --- Draft vs program, side by side ----------------------------------------------------------

SIDE_BY_SIDE_STYLE = """<style>
.cap-sbs{font-size:14px;line-height:1.45}
.cap-sbs table{width:100%;border-collapse:collapse;table-layout:fixed}
.cap-sbs th{text-align:left;padding:6px;border-bottom:2px solid #8884}
.cap-sbs td{vertical-align:top;padding:6px;border-bottom:1px solid #8883;overflow-wrap:anywhere}
.cap-sbs tr.cap-unmatched td{opacity:.8}
.cap-sbs code,.cap-sbs pre{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;margin:0}
.cap-sbs .cap-lineno{color:#888;margin-right:6px}
.cap-sbs .cap-check{display:inline-block;margin:2px 6px 0 0;padding:0 5px;border-radius:4px;
  font-family:ui-monospace,monospace;font-size:12px}
.cap-sbs .cap-ok{background:#2ca02c22;color:#1a7f1a}
.cap-sbs .cap-bad{background:#d6272822;color:#b00}
.cap-sbs .cap-unknown{background:#8882}
.cap-sbs .cap-value{display:inline-block;margin-top:2px;padding:0 5px;border-radius:4px;background:#1f77b422;
  font-family:ui-monospace,monospace;font-size:12px}
.cap-sbs .cap-diff{margin-top:3px;font-family:ui-monospace,monospace;font-size:12px}
.cap-sbs ins{background:#2ca02c33;text-decoration:none}
.cap-sbs del{background:#d6272833}
.cap-sbs .cap-match{font-size:11px;color:#888}
.cap-sbs .cap-dropped{margin-top:10px;padding:8px;border-left:4px solid #ff7f0e;background:#ff7f0e14}
.cap-sbs .cap-note{margin-top:10px;color:#888}
.cap-sbs details{margin-top:10px}
</style>"""

MATCH_REASONS = {"value": "the same value", "quantities": "shared quantities", "answer": "the final answer"}


def _format_number(value: float) -> str:
    """A re-computed value as the reader checks it: whole numbers plain, others to 6 digits."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _check_html(check: ArithmeticCheck) -> str:
    text = f"{_E(check.expression)} = {_E(check.claimed)}"
    if check.ok is None:
        return f'<span class="cap-check cap-unknown" title="could not re-compute">{text} ?</span>'
    if check.ok:
        return f'<span class="cap-check cap-ok">{text} ✓</span>'
    return f'<span class="cap-check cap-bad">{text} ✗ (is {_E(_format_number(check.actual))})</span>'


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
        + (f"; question: “…{_E(d.context)}…”" if d.context else "")
        + ")</li>"
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
        answer = (
            _E(cand.answer) if cand.answer is not None else ("cut off" if cand.cut_off else _E(cand.execution.status))
        )
        blocks.append(
            f"<p>Program {i + 1} (answer: {answer}) against the chosen program {result.chosen + 1}:</p>"
            f"<pre>{lines}</pre>"
        )
    if not blocks:
        return ""
    return (
        f"<details><summary>Other programs ({len(blocks)}), line diff against the chosen one</summary>"
        f"{''.join(blocks)}</details>"
    )


def render_side_by_side(reading: Reading) -> str:
    """The draft's steps beside the program's lines, as self-contained HTML (all text escaped)."""
    result, alignment = reading.result, reading.alignment
    candidate = result.shown_candidate
    execution = candidate.execution if candidate else None
    body = "".join(
        f'<tr class="{"cap-matched" if r.match else "cap-unmatched"}">'
        f"<td>{_step_cell(r)}</td><td>{_line_cell(r)}</td></tr>"
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
        f'<div class="cap-sbs">{SIDE_BY_SIDE_STYLE}<table><thead><tr><th>Draft step (arithmetic re-checked)</th>'
        f"<th>Program line → value from the trace</th></tr></thead><tbody>{body}</tbody></table>"
        f"{note}{_dropped_html(alignment.dropped)}{_other_programs_html(result)}</div>"
    )
