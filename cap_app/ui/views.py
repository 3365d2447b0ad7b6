"""Turn a RefinementResult into what the page shows: verdict, trace rows, run output.

Pure functions of the result (no gradio import), so the annotator tab and tests reuse them.
All model and user text is escaped before it goes into HTML.
"""

from __future__ import annotations

import html

from cap_app.answers import answers_equal
from cap_app.results import Candidate, RefinementResult

TRACE_HEADERS = ["line", "code", "variables changed"]
_E = html.escape


def _answer(text: str | None) -> str:
    return text if text is not None else "none"


def verdict_sentence(result: RefinementResult) -> str:
    """One plain sentence, e.g. "The refinement disagrees with the draft: 18 vs 26"."""
    refined, draft = result.refined_answer, result.draft_answer
    if refined is None:
        reason, advice = _no_answer_reason(result.shown_candidate)
        draft_part = (f"so the draft's answer {draft} stands, unverified" if draft is not None
                      else "and the draft states no final answer")
        sentence = f"No program produced an answer{reason}, {draft_part}.{advice}"
    elif draft is None:
        sentence = f"The draft states no final answer; the refinement gives {refined}."
    elif result.verdict == "agrees":
        sentence = f"The refinement agrees with the draft: {refined}."
    else:
        sentence = f"The refinement disagrees with the draft: {refined} vs {draft}."
    if result.gold is not None:
        sentence += " " + _gold_sentence(result)
    return sentence


_CUT_OFF_ADVICE = {
    "length": "Raise “Max new tokens” and refine again.",
    "repetition": "More tokens will not help; try the vote or repair strategy, or another model.",
}


def _no_answer_reason(candidate: Candidate | None) -> tuple[str, str]:
    """Why the shown program gave no answer (in parentheses) and, for a program cut off, what to change."""
    if candidate is None:
        return "", ""
    if candidate.cut_off:
        return f" (it was {candidate.cut_off})", " " + _CUT_OFF_ADVICE[candidate.finish]
    execution = candidate.execution
    return (f" ({execution.error or execution.status})" if not execution.ok else " (it printed no answer)"), ""


def _gold_sentence(result: RefinementResult) -> str:
    def mark(ok: bool | None) -> str:
        return "right" if ok else "wrong"

    parts = []
    if result.refined_answer is not None:
        parts.append(f"the refinement is {mark(result.refined_correct)}")
    if result.draft_answer is not None:
        parts.append(f"the draft is {mark(result.draft_correct)}")
    return f"Gold answer {result.gold}" + (": " + " and ".join(parts) if parts else "") + "."


def _badge(label: str, value: str | None, correct: bool | None) -> str:
    mark = {True: ("✓", "#2ca02c"), False: ("✗", "#d62728"), None: ("", "#888")}[correct]
    return (f'<div class="cap-badge" style="display:inline-block;margin:0 12px 6px 0;padding:6px 10px;'
            f'border-radius:6px;border:1px solid {mark[1]};">'
            f'<div style="font-size:12px;color:#888">{_E(label)}</div>'
            f'<div style="font-size:20px;font-weight:600">{_E(_answer(value))} '
            f'<span style="color:{mark[1]}">{mark[0]}</span></div></div>')


def verdict_html(result: RefinementResult) -> str:
    """Draft vs refined (vs gold) answers with right/wrong marks, and the plain sentence."""
    has_gold = result.gold is not None
    draft_mark = result.draft_correct if has_gold else None
    refined_mark = result.refined_correct if has_gold else None
    draft_label = "draft"
    if not has_gold and result.draft_answer is not None:  # the badge says what the sentence says
        if result.refined_answer is None:
            draft_label = "draft (unverified)"
        else:
            draft_label = "draft (checked by the program)"
            draft_mark = answers_equal(result.draft_answer, result.refined_answer)
    badges = _badge(draft_label, result.draft_answer, draft_mark)
    badges += _badge(f"refined ({result.strategy})", result.refined_answer, refined_mark)
    if has_gold:
        badges += _badge("gold", result.gold, None)
    return (f'<div class="cap-verdict" data-verdict="{_E(result.verdict)}">{badges}'
            f'<p class="cap-verdict-sentence" style="font-size:16px;margin:4px 0">{_E(verdict_sentence(result))}</p></div>')


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
    """What the chosen program printed, then its error, with truncation made visible."""
    shown = result.shown_candidate
    if shown is None:
        return "No program was run."
    execution = shown.execution
    parts = [execution.stdout.rstrip("\n") or "(nothing printed)"]
    if execution.stdout_truncated:
        parts.append("[output truncated]")
    if execution.error:
        parts.append(f"error: {execution.error}")
    parts.append(f"[{execution.status}, {execution.duration_ms:.0f} ms]")
    return "\n".join(parts)
