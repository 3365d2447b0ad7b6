"""Plotly figures of a refinement (where the N programs' answers went, where the time went) and of
the annotators' labels.

Every label that comes from a model or a user is escaped and shortened: plotly renders a small
HTML subset (links included) in text, and an answer is untrusted text.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from cap_app.annotate.store import CORRECT_CHOICES
from cap_app.engine.reading import Reading
from cap_app.engine.results import RefinementResult

if TYPE_CHECKING:
    from cap_app.annotate.export import ExportSummary

NO_ANSWER = "(no answer)"
CUT_OFF = "(cut off)"
MAX_LABEL = 24
# (agrees with the draft, agrees with the gold) -> legend name, colour; gold None = no gold given
CATEGORIES = {
    (True, True): ("same as draft, right", "#2ca02c"),
    (False, True): ("differs from draft, right", "#17becf"),
    (True, False): ("same as draft, wrong", "#ff7f0e"),
    (False, False): ("differs from draft, wrong", "#d62728"),
    (True, None): ("same as draft", "#1f77b4"),
    (False, None): ("differs from draft", "#9467bd"),
}
NO_ANSWER_COLOUR = "#7f7f7f"
CUT_OFF_COLOUR = "#bcbd22"
LAYOUT = dict(template="plotly_white", height=320, margin=dict(l=50, r=20, t=50, b=50))


def safe_label(text: str) -> str:
    """An untrusted string made inert for plotly text: shortened, then HTML-escaped."""
    text = " ".join(text.split())
    if len(text) > MAX_LABEL:
        text = text[: MAX_LABEL - 1] + "…"
    return html.escape(text)


def votes_figure(reading: Reading) -> go.Figure:
    """Bar per distinct answer of the N programs, coloured by agreement with the draft and gold."""
    result = reading.result
    unanswered = [c for c in result.candidates if c.answer is None]
    cut_off = sum(1 for c in unanswered if c.cut_off)  # generation stopped it: no fault of its code
    failed = len(unanswered) - cut_off
    fig = go.Figure()
    groups: dict[tuple, list[tuple[str, int, bool]]] = {}
    for voted in reading.voted:
        groups.setdefault((voted.same_as_draft, voted.right), []).append((voted.answer, voted.votes, voted.chosen))
    for key, bars in groups.items():
        name, colour = CATEGORIES[key]
        fig.add_bar(
            name=name,
            x=[safe_label(a) for a, _, _ in bars],
            y=[n for _, n, _ in bars],
            marker=dict(color=colour, line=dict(color="#000", width=[3 if chosen else 0 for *_, chosen in bars])),
            text=[f"{n} ★ chosen" if chosen else str(n) for _, n, chosen in bars],
            textposition="outside",
            hovertemplate="answer %{x}: %{y} vote(s)<extra>" + html.escape(name) + "</extra>",
        )
    for name, label, count, colour in (
        ("program failed", NO_ANSWER, failed, NO_ANSWER_COLOUR),
        ("cut off before it was finished", CUT_OFF, cut_off, CUT_OFF_COLOUR),
    ):
        if count:
            fig.add_bar(name=name, x=[label], y=[count], marker_color=colour, text=[str(count)], textposition="outside")
    total = sum(result.votes.values()) + len(unanswered)
    draft = safe_label(result.draft_answer) if result.draft_answer is not None else "none"
    title = f"Answers of {len(result.candidates)} program(s), {result.strategy}; draft said {draft}"
    if result.gold is not None:
        title += f", gold {safe_label(result.gold)}"
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)),
        barmode="group",
        bargap=0.3,
        xaxis=dict(title="answer", type="category"),
        yaxis=dict(title="votes", dtick=1, range=[0, max(total, 1) * 1.25]),
        showlegend=True,
        legend=dict(orientation="h", y=-0.3),
        **LAYOUT,
    )
    return fig


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


# the stages of RefinementResult.timings_ms in words; "prompt" is the time to the first token
STAGES = {"prompt": "read the prompt", "generate": "write", "execute": "run in the sandbox"}


def stage_times_figure(result: RefinementResult) -> go.Figure:
    """Horizontal bar per pipeline stage (prompt, generation, execution, ...) in seconds."""
    stages = [(STAGES.get(name, name), ms / 1000) for name, ms in result.timings_ms.items() if name != "total"]
    fig = go.Figure(
        go.Bar(
            x=[s for _, s in stages],
            y=[html.escape(name) for name, _ in stages],
            orientation="h",
            marker_color="#1f77b4",
            text=[_duration(s) for _, s in stages],
            textposition="auto",
            hovertemplate="%{y}: %{x:.3f} s<extra></extra>",
        )
    )
    timings = result.timings_ms
    total = timings["total"] / 1000 if "total" in timings else sum(s for _, s in stages)
    tokens = f", {result.generated_tokens} tokens generated" if result.generated_tokens else ""
    fig.update_layout(
        title=dict(text=f"Time per stage ({total:.2f} s in all{tokens})", font=dict(size=14)),
        xaxis=dict(title="seconds", rangemode="tozero"),
        yaxis=dict(autorange="reversed"),
        **LAYOUT,
    )
    return fig


# How a program's run ended, as the Programs chart names and colours it. A program cut off by
# generation is named as such whatever its run did: its error is the cut's, not its code's.
OUTCOMES = {
    "answered": "#2ca02c",
    "no answer": "#7f7f7f",
    "cut off": CUT_OFF_COLOUR,
    "error": "#d62728",
    "timeout": "#ff7f0e",
    "rejected": "#9467bd",
    "memory": "#8c564b",
}


def _outcome(candidate) -> str:
    if candidate.cut_off:
        return "cut off"
    if candidate.answer is not None:
        return "answered"
    return "no answer" if candidate.execution.status == "ok" else candidate.execution.status


def candidates_figure(result: RefinementResult) -> go.Figure:
    """One bar per program, its length in tokens, coloured by how its run ended and labelled with
    its answer and run time. One row each, so no label sits on another's, however alike the N
    programs are (a scatter of length vs run time piled 8 labels on one spot)."""
    fig = go.Figure()
    rows: dict[str, list[int]] = {}
    for i, cand in enumerate(result.candidates):
        rows.setdefault(_outcome(cand), []).append(i)
    names = [f"#{i + 1}" for i in range(len(result.candidates))]
    for outcome, indices in rows.items():
        cands = [result.candidates[i] for i in indices]
        answers = [safe_label(c.answer) if c.answer is not None else outcome for c in cands]
        chosen = [" ★" if i == result.chosen else "" for i in indices]
        fig.add_bar(
            name=outcome,
            orientation="h",
            y=[names[i] for i in indices],
            x=[c.tokens for c in cands],
            marker_color=OUTCOMES.get(outcome, NO_ANSWER_COLOUR),
            text=[
                f"{a}{star} · {c.execution.duration_ms:.0f} ms"
                for a, star, c in zip(answers, chosen, cands, strict=True)
            ],
            textposition="outside",
            cliponaxis=False,
            customdata=answers,
            hovertemplate="program %{y}: %{x} tokens, answer %{customdata}<extra></extra>",
        )
    most = max((c.tokens for c in result.candidates), default=0) or 1
    fig.update_layout(
        title=dict(text="Programs: tokens written, answer and run time (★ chosen)", font=dict(size=14)),
        xaxis=dict(title="tokens generated", range=[0, most * 1.6]),  # room for the labels right of the bars
        yaxis=dict(type="category", categoryorder="array", categoryarray=names, autorange="reversed"),
        barmode="overlay",
        showlegend=True,  # the colours' meaning, also when every program ended alike
        legend=dict(orientation="h", y=-0.25),
        **{**LAYOUT, "height": max(LAYOUT["height"], 120 + 28 * len(names))},
    )
    return fig


def label_counts_figure(summary: ExportSummary) -> go.Figure:
    """A grouped bar chart of each annotator's 'refinement correct' labels (names are untrusted text)."""
    figure = go.Figure()
    for name in summary.annotators:
        counts = summary.label_counts[name]
        figure.add_bar(name=safe_label(name), x=list(CORRECT_CHOICES), y=[counts[label] for label in CORRECT_CHOICES])
    figure.update_layout(
        barmode="group",
        title="Refinement correct? Labels per annotator",
        xaxis_title="label",
        yaxis_title="judgements",
        legend_title="annotator",
        height=320,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return figure
