"""The result of refining one (question, draft): shared by the CLI, the app, the annotator view
and the exports. Plain dataclasses that round-trip through JSON (one JSON object per line in
batch output), so precomputed refinements can be loaded back without a model."""

from __future__ import annotations

import dataclasses
from typing import Literal

from cap_app.sandbox.result import ExecResult

# agrees: the program confirms the draft's answer; disagrees: its answer replaces the draft's;
# unconfirmed: it reached another answer without finding a wrong step in the draft, so the draft's
# answer stands (RefineConfig.override); no_answer: no program printed an answer.
Verdict = Literal["agrees", "disagrees", "unconfirmed", "no_answer"]


@dataclasses.dataclass
class Candidate:
    """One generated program and what running it gave."""

    text: str  # the raw model text
    program: str  # the program pulled out of it
    execution: ExecResult
    answer: str | None  # normalised answer from the execution (None when it failed)
    logprob: float | None = None  # mean token log-prob, breaks vote ties
    tokens: int = 0  # generated tokens
    round: int = 0  # repair round that produced it (0 = first attempt)
    # why generation stopped (generate.FinishReason): "length" and "repetition" cut the program off
    # before it was finished; "" in results saved before this was recorded
    finish: str = ""

    @property
    def cut_off(self) -> str | None:
        """How generation cut the program off, e.g. "cut off at the token limit of 320 tokens", or
        None. Such a program fails on whatever line it was cut at, an error that blames code the
        model never finished writing, so every view names the cut instead."""
        cut = CUT_OFFS.get(self.finish)
        return cut.what.format(tokens=self.tokens) if cut else None


@dataclasses.dataclass(frozen=True)
class CutOff:
    """A way generation cuts a program off, in words: each reader of a cut-off program says it from here."""

    what: str  # what happened ({tokens}: the tokens written), for the reader
    repair: str  # what the repair turn tells the model
    advice: str  # what the reader may change


# Candidate.finish -> its CutOff; the other finish reasons let a program end as it meant to
CUT_OFFS = {
    "length": CutOff(
        what="cut off at the token limit of {tokens} tokens before it was finished",
        repair="it was cut off at the token limit before it was finished; write a shorter program",
        advice="Raise “Max new tokens” and refine again.",
    ),
    "repetition": CutOff(
        what="cut off by the repetition stop after {tokens} tokens: it kept writing the same lines",
        repair="it kept repeating the same lines and was stopped; write each step once",
        advice="More tokens will not help; try the vote or repair strategy, or another model.",
    ),
}


@dataclasses.dataclass
class RefinementResult:
    question: str
    draft: str
    draft_answer: str | None
    strategy: str
    candidates: list[Candidate]
    chosen: int | None  # index into candidates of the program whose answer won (None: none ran)
    refined_answer: str | None  # the answer to believe: the program's, or the draft's where it stands
    votes: dict[str, int]  # answer -> votes (the draft's vote included for cot+cap)
    verdict: Verdict  # refined vs draft
    gold: str | None = None
    draft_correct: bool | None = None  # vs gold, when gold is given
    refined_correct: bool | None = None
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> ms
    prompt_tokens: int | None = 0  # None: a backend did not say for some sample (see backends/openai.py)
    generated_tokens: int = 0
    model: str = ""
    # where the program shows the draft wrong (align.located_mistake), e.g. "3/5*700 = 400, but it is 420"
    draft_mistake: str | None = None
    # what the reader should know about how it was refined, e.g. "Max new tokens" lowered to fit the
    # model's context for a long draft (refine.py)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def program_answer(self) -> str | None:
        """What the winning program printed (the refined answer unless the draft's stands)."""
        return self.candidates[self.chosen].answer if self.chosen is not None else None

    @property
    def program(self) -> str | None:
        return self.candidates[self.chosen].program if self.chosen is not None else None

    @property
    def execution(self) -> ExecResult | None:
        return self.candidates[self.chosen].execution if self.chosen is not None else None

    @property
    def shown_candidate(self) -> Candidate | None:
        """The program every view shows and annotators judge: the winner, else the last attempt."""
        if self.chosen is not None:
            return self.candidates[self.chosen]
        return self.candidates[-1] if self.candidates else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"program_answer": self.program_answer}

    @classmethod
    def from_dict(cls, data: dict) -> RefinementResult:
        data = dict(data)
        data.pop("program_answer", None)  # derived from the candidates
        data["candidates"] = [
            Candidate(**{**c, "execution": ExecResult.from_dict(c["execution"])}) for c in data["candidates"]
        ]
        return cls(**data)


_RESULT_TEXT_FIELDS = ("gold", "draft_answer", "refined_answer", "draft_mistake")
_CANDIDATE_TEXT_FIELDS = ("answer",)


def _as_text(value: object, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"'{field}' must be text or a number")


def result_from_json(data: dict) -> RefinementResult:
    """A RefinementResult from JSON that someone else wrote (a stored row, an uploaded item file):
    answer fields given as numbers are read as text (so a row loads and shows, and a CSV export
    guards it like any text); `from_dict` reads only what this app wrote. ValueError/TypeError/KeyError when it is
    not a result at all."""
    data = dict(data)
    for field in _RESULT_TEXT_FIELDS:
        if field in data:
            data[field] = _as_text(data[field], field)
    candidates = []
    for candidate in data.get("candidates") or []:
        if not isinstance(candidate, dict) or not isinstance(candidate.get("execution"), dict):
            raise TypeError("a candidate is not an object with an execution")
        candidate = {**candidate, "execution": dict(candidate["execution"])}
        for field in _CANDIDATE_TEXT_FIELDS:
            if field in candidate:
                candidate[field] = _as_text(candidate[field], field)
            if field in candidate["execution"]:
                candidate["execution"][field] = _as_text(candidate["execution"][field], field)
        candidates.append(candidate)
    data["candidates"] = candidates
    data["votes"] = {str(k): v for k, v in (data.get("votes") or {}).items()}
    return RefinementResult.from_dict(data)
