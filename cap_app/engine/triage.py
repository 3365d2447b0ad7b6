"""Which refinements a person should look at first: the refiner's verdict as a flag on the draft.

A CaP refiner already knows something about each draft before anyone judges it: its program may
show the draft's mistake (disagrees), reach another answer without locating one (unconfirmed),
give no answer, or agree. The triage order puts the drafts most likely wrong first, and inside
a verdict the programs the model was least sure of (lowest mean token log-prob). `flag_quality`
measures how well that order separates wrong drafts from right ones (per verdict, and as the
AUROC of the order), which is what `python -m cap_app eval` reports and annotators rely on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cap_app.engine.results import RefinementResult

TRIAGE_ORDER = ("disagrees", "unconfirmed", "no_answer", "agrees")
TRIAGE_EXPLANATION = (
    "Triage order: drafts the program contradicts first, then those it could not confirm, those it "
    "could not answer, and those it agrees with; within each, the least confident program first."
)


def confidence(result: RefinementResult) -> float | None:
    """The mean token log-prob of the program that decided the verdict: the chosen one, else
    the mean over the candidates that have one (None when no backend reported any)."""
    if result.chosen is not None and result.candidates[result.chosen].logprob is not None:
        return result.candidates[result.chosen].logprob
    known = [c.logprob for c in result.candidates if c.logprob is not None]
    return sum(known) / len(known) if known else None


def triage_key(verdict: str, logprob: float | None) -> tuple[int, float]:
    """Sort key, first = most in need of a person: the verdict's place, then the log-prob
    (lowest first; unknown after known)."""
    place = TRIAGE_ORDER.index(verdict) if verdict in TRIAGE_ORDER else len(TRIAGE_ORDER)
    return place, logprob if logprob is not None else float("inf")


def auroc(keys: Sequence[Any], positives: Sequence[bool]) -> float | None:
    """The chance that a random positive sorts before a random negative by `keys` (ascending;
    ties count half): the Mann-Whitney statistic over both counts. None without both kinds."""
    n_pos = sum(positives)
    n_neg = len(positives) - n_pos
    if not n_pos or not n_neg:
        return None
    order = sorted(range(len(keys)), key=lambda index: keys[index])
    before, wins, start = 0, 0.0, 0  # negatives sorted strictly after, summed over positives
    while start < len(order):
        end = start
        while end < len(order) and keys[order[end]] == keys[order[start]]:
            end += 1
        group = [positives[index] for index in order[start:end]]
        pos, neg = sum(group), len(group) - sum(group)
        wins += pos * (n_neg - before - neg) + 0.5 * pos * neg
        before += neg
        start = end
    return wins / (n_pos * n_neg)


def flag_quality(results: Iterable[RefinementResult]) -> dict[str, Any]:
    """For results with gold answers: per verdict the items and wrong drafts among them, and the
    AUROC of the triage order (and of the log-prob alone) for telling wrong drafts from right."""
    scored = [r for r in results if r.draft_correct is not None]
    wrong = [not r.draft_correct for r in scored]
    verdicts = {
        verdict: {
            "items": sum(r.verdict == verdict for r in scored),
            "wrong_drafts": sum(r.verdict == verdict and not r.draft_correct for r in scored),
        }
        for verdict in TRIAGE_ORDER
    }
    logprobs = [confidence(r) for r in scored]
    with_logprob = [index for index, value in enumerate(logprobs) if value is not None]
    return {
        "verdicts": verdicts,
        "triage_auroc": auroc([triage_key(r.verdict, lp) for r, lp in zip(scored, logprobs, strict=True)], wrong),
        "logprob_auroc": auroc([logprobs[i] for i in with_logprob], [wrong[i] for i in with_logprob]),
    }


def format_flag_quality(label: str, quality: dict[str, Any]) -> str:
    """One line: 'greedy [6b]: disagrees 1 (100% wrong) · ... · AUROC triage 0.62, log-prob 0.58'."""
    parts = []
    for verdict, counts in quality["verdicts"].items():
        share = f"{counts['wrong_drafts'] / counts['items']:.0%} wrong" if counts["items"] else "-"
        parts.append(f"{verdict.replace('_', ' ')} {counts['items']} ({share})")
    figures = [
        f"{name} {value:.2f}" if value is not None else f"{name} -"
        for name, value in (("triage", quality["triage_auroc"]), ("log-prob", quality["logprob_auroc"]))
    ]
    return f"{label}: {' · '.join(parts)} · AUROC {', '.join(figures)}"
