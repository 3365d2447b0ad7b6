"""Refine a (question, draft) pair: generate program(s), run them in the sandbox, pick an answer.

The strategies (`RefineConfig.strategy`: greedy, vote, cot+cap, repair) and the override rule
are listed with their meaning in cap_app.engine.strategies; inputs are checked by
cap_app.engine.inputs.

`refine_stream` yields events while it works (the app streams the program as it is written),
`refine_batch` batches generation across items (the CLI), and `refine` is one batched item. The
model is only touched through a generation backend (`cap_app.backends`: transformers, llama.cpp
or an OpenAI-compatible server), which gets chat conversations and returns generations; the
sandbox runs outside it, so a Space can wrap the generate functions with `spaces.GPU` alone.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Literal

from cap_app.backends import Backend, as_backend
from cap_app.backends.base import Generation, GenerationConfig, PromptSize, budget_note, fit_to_context
from cap_app.engine.align import located_mistake
from cap_app.engine.answers import answers_equal, extract_draft_answer, normalize_answer
from cap_app.engine.inputs import RefineItem
from cap_app.engine.program import extract_program
from cap_app.engine.prompts import build_messages, build_repair_messages
from cap_app.engine.results import CUT_OFFS, Candidate, RefinementResult, Verdict
from cap_app.engine.strategies import OVERRIDE_HELP, OVERRIDES, STRATEGIES, STRATEGY_HELP
from cap_app.models.loading import LoadedModel, get_model
from cap_app.sandbox.config import SandboxConfig
from cap_app.sandbox.result import ExecResult


@dataclasses.dataclass
class RefineConfig:
    # What to generate
    strategy: str = dataclasses.field(
        default="greedy",
        metadata={
            "help": STRATEGY_HELP,
            "choices": tuple(STRATEGIES),
        },
    )
    n: int = dataclasses.field(default=4, metadata={"help": "programs sampled by vote and cot+cap"})
    repair_rounds: int = dataclasses.field(
        default=2, metadata={"help": "most extra tries the repair strategy gives a failing program"}
    )
    override: str = dataclasses.field(
        default="located",
        metadata={
            "help": OVERRIDE_HELP,
            "choices": tuple(OVERRIDES),
        },
    )
    # How to sample (greedy and repair always decode greedily)
    temperature: float = dataclasses.field(default=0.7, metadata={"help": "sampling temperature for vote and cot+cap"})
    top_p: float = dataclasses.field(default=0.95, metadata={"help": "nucleus sampling mass for vote and cot+cap"})
    max_new_tokens: int = dataclasses.field(default=400, metadata={"help": "longest program, in tokens"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed for sampling"})
    batch_size: int = dataclasses.field(
        default=8, metadata={"help": "most sequences generated together (batch refinement groups items up to this)"}
    )
    # How to run the programs
    timeout_s: float = dataclasses.field(default=5.0, metadata={"help": "sandbox time limit per program, seconds"})
    memory_mb: int = dataclasses.field(default=512, metadata={"help": "sandbox memory limit per program, MiB"})
    trace: bool = dataclasses.field(
        default=True, metadata={"help": "record each program's line-by-line trace (the app shows it)"}
    )

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{self.strategy}'; choose one of {', '.join(STRATEGIES)}")
        if self.override not in OVERRIDES:
            raise ValueError(f"unknown override '{self.override}'; choose one of {', '.join(OVERRIDES)}")
        if self.n < 1 or self.repair_rounds < 0:
            raise ValueError("n must be >= 1 and repair_rounds >= 0")
        self.generation_config()  # validates the sampling settings
        self.sandbox_config()  # validates the limits with the sandbox's own bounds

    def sandbox_config(self) -> SandboxConfig:
        # the located override reads the trace to find the draft's mistake; _result drops it if unwanted
        trace = self.trace or self.override == "located"
        return SandboxConfig(timeout_s=self.timeout_s, memory_mb=self.memory_mb, trace=trace)

    @property
    def is_sampling(self) -> bool:
        """Whether N programs are sampled and voted on (else one greedy program per try)."""
        return STRATEGIES[self.strategy].samples

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            temperature=self.temperature if self.is_sampling else 0.0,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            n=self.n if self.is_sampling else 1,
            batch_size=self.batch_size,
        )


@dataclasses.dataclass
class RefineEvent:
    """Progress of `refine_stream`: `prompt` (the model starts reading a prompt of `tokens` tokens,
    0 when the backend cannot count them, for the programs from candidate N on; `text` says when
    their token budget was lowered to fit the model's context), `token` (new program text of
    candidate N, and its `tokens` so far), `program` (the program pulled out of it), `executed`
    (its sandbox result, and the `outcome` as a Candidate), then one `done` with the result."""

    kind: Literal["prompt", "token", "program", "executed", "done"]
    candidate: int
    text: str = ""
    result: RefinementResult | None = None
    execution: ExecResult | None = None
    tokens: int = 0
    outcome: Candidate | None = None
    limit: int = 0  # `prompt`: the token budget of its programs ("Max new tokens", or less to fit the context)


class _ItemState:
    """One item while it is being refined: its candidates so far and its bookkeeping."""

    def __init__(self, item: RefineItem):
        self.item = item
        self.candidates: list[Candidate] = []
        self.timings = {"generate": 0.0, "execute": 0.0}
        self.prompt_tokens: int | None = 0
        self.notes: list[str] = []  # said once each: a token budget lowered to fit the context

    def fitted(self, backend: Backend, config: GenerationConfig) -> tuple[GenerationConfig, int | None, str | None]:
        """The generation settings for this item's next conversation within the model's context
        (ContextError when it leaves no room), its prompt's tokens when the backend can count them,
        and the sentence saying that the budget was lowered (None when it was not)."""
        size = backend.prompt_size(self.conversation())
        fitted, note = fit_to_context(config, size)
        self.note(note)
        return fitted, size.tokens, note

    def note(self, note: str | None) -> None:
        if note and note not in self.notes:
            self.notes.append(note)

    def generated(self, generations: list[Generation], config: GenerationConfig) -> None:
        """Book a round's generations: their prompt tokens, and the budget a backend lowered itself."""
        self.count_prompt_tokens(generations)
        self.check_limits(generations, config)

    def check_limits(self, generations: list[Generation], config: GenerationConfig) -> None:
        """A backend that learns the context only from its server (openai: a refusal, or a program
        stopped short) lowered the budget itself; say so as `fitted` does."""
        for generation in generations:
            limit, context = generation.token_limit, generation.context
            if limit is not None and limit < config.max_new_tokens:
                size = PromptSize(context - limit if context else None, context)
                self.note(budget_note(config.max_new_tokens, limit, size))

    def count_prompt_tokens(self, generations) -> None:
        """Add the generations' prompt tokens; unknown (None) once any is unknown."""
        counts = [g.prompt_tokens for g in generations]
        known = self.prompt_tokens is not None and None not in counts
        self.prompt_tokens = self.prompt_tokens + sum(counts) if known else None

    def conversation(self) -> list[dict[str, str]]:
        failed = [(c.program, _failure(c)) for c in self.candidates]
        if failed:
            return build_repair_messages(self.item.question, self.item.draft, failed)
        return build_messages(self.item.question, self.item.draft)

    def needs_repair(self, config: RefineConfig) -> bool:
        rounds_done = len(self.candidates) - 1
        repairs = STRATEGIES[config.strategy].repairs
        return repairs and self.candidates[-1].answer is None and rounds_done < config.repair_rounds

    def run(self, generation: Generation, program: str, config: RefineConfig, round_: int) -> int:
        """Run `program` (pulled out of `generation`) in the sandbox, timed, and keep it; its index."""
        began = time.perf_counter()
        execution = _run(program, config)
        self.timings["execute"] += _ms_since(began)
        self.candidates.append(
            Candidate(
                text=generation.text,
                program=program,
                execution=execution,
                answer=normalize_answer(execution.answer) if execution.ok else None,
                logprob=generation.mean_logprob,
                tokens=generation.new_tokens,
                round=round_,
                finish=generation.finish,
            )
        )
        return len(self.candidates) - 1


def _failure(candidate: Candidate) -> str:
    """What the repair turn tells the model. A program cut off mid-line fails on the line it was
    cut at; that error would send the model fixing code it never finished, so the cut is named."""
    if candidate.cut_off:
        return CUT_OFFS[candidate.finish].repair
    execution = candidate.execution
    if execution.ok:
        return "it ran but printed no answer; print the final answer on the last line"
    return execution.error or f"it stopped with status '{execution.status}'"


def _run(program: str, config: RefineConfig) -> ExecResult:
    from cap_app.sandbox import run_program

    return run_program(program, **dataclasses.asdict(config.sandbox_config()))


def _count_votes(state: _ItemState, draft_answer: str | None, strategy: str):
    """Group equivalent answers; return (votes, chosen candidate, refined answer)."""
    groups: list[dict] = []  # {"answer", "members": [candidate index], "draft": bool}

    def group_for(answer: str) -> dict:
        for group in groups:
            if answers_equal(group["answer"], answer):
                return group
        groups.append({"answer": answer, "members": [], "draft": False})
        return groups[-1]

    for index, candidate in enumerate(state.candidates):
        if candidate.answer is not None:
            group_for(candidate.answer)["members"].append(index)
    if STRATEGIES[strategy].draft_votes and draft_answer is not None:
        group_for(draft_answer)["draft"] = True
    if not groups:
        return {}, None, None

    def logprob(index: int) -> float:
        value = state.candidates[index].logprob
        return float("-inf") if value is None else value

    votes = {g["answer"]: len(g["members"]) + g["draft"] for g in groups}
    winner = max(
        groups,
        key=lambda g: (
            len(g["members"]) + g["draft"],
            bool(g["members"]),
            max(map(logprob, g["members"]), default=float("-inf")),
        ),
    )
    chosen = max(winner["members"], key=logprob, default=None)
    return votes, chosen, winner["answer"]


def _decide(
    item: RefineItem, draft_answer: str | None, answer: str | None, chosen: Candidate | None, override: str
) -> tuple[str | None, Verdict, str | None]:
    """The answer to believe, the verdict and the draft's located mistake, given the winning answer."""
    if answer is None:
        return (draft_answer if override == "located" else None), "no_answer", None
    if draft_answer is not None and answers_equal(answer, draft_answer):
        return answer, "agrees", None
    if draft_answer is None or override == "always":
        return answer, "disagrees", None
    mistake = located_mistake(item.draft, chosen.program, chosen.execution, item.question) if chosen else None
    if mistake is None:
        return draft_answer, "unconfirmed", None
    return answer, "disagrees", mistake


def _without_traces(candidates: list[Candidate]) -> list[Candidate]:
    return [dataclasses.replace(c, execution=dataclasses.replace(c.execution, trace=[])) for c in candidates]


def _result(state: _ItemState, config: RefineConfig, model_name: str) -> RefinementResult:
    item = state.item
    draft_answer = extract_draft_answer(item.draft)
    if config.is_sampling:
        votes, chosen, answer = _count_votes(state, draft_answer, config.strategy)
    else:
        answered = [i for i, c in enumerate(state.candidates) if c.answer is not None]
        chosen = answered[-1] if answered else None
        answer = state.candidates[chosen].answer if chosen is not None else None
        votes = {answer: 1} if answer is not None else {}
    winner = state.candidates[chosen] if chosen is not None else None
    refined, verdict, draft_mistake = _decide(item, draft_answer, answer, winner, config.override)
    gold = extract_draft_answer(item.gold) if item.gold else None
    return RefinementResult(
        question=item.question,
        draft=item.draft,
        draft_answer=draft_answer,
        strategy=config.strategy,
        candidates=state.candidates if config.trace else _without_traces(state.candidates),
        chosen=chosen,
        refined_answer=refined,
        votes=votes,
        verdict=verdict,
        gold=gold,
        draft_correct=answers_equal(draft_answer, gold) if gold is not None else None,
        refined_correct=answers_equal(refined, gold) if gold is not None else None,
        timings_ms={**state.timings, "total": sum(state.timings.values())},
        prompt_tokens=state.prompt_tokens,
        generated_tokens=sum(c.tokens for c in state.candidates),
        model=model_name,
        draft_mistake=draft_mistake,
        notes=list(state.notes),
    )


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _backend(backend: Backend | LoadedModel | None) -> Backend:
    """The backend to generate with: the one given (a loaded model is wrapped), else the default model's."""
    return as_backend(backend or get_model())


def refine_batch(
    items: Iterable[RefineItem], config: RefineConfig | None = None, backend: Backend | LoadedModel | None = None
) -> Iterator[RefinementResult]:
    """Refine many items, yielding results in input order as each group finishes.

    Items are generated together, `config.batch_size` sequences at a time; a group's generation
    time is shared equally among its items in `timings_ms`. Items are checked when made (RefineItem).
    """
    config = config or RefineConfig()
    backend = _backend(backend)
    generation_config = config.generation_config()
    per_group = max(1, config.batch_size // generation_config.n)
    items = list(items)
    for start in range(0, len(items), per_group):
        states = [_ItemState(item) for item in items[start : start + per_group]]
        pending, round_ = states, 0
        while pending:
            # items whose prompt leaves less than max_new_tokens of the context generate apart, with less
            budgets: dict[int, tuple[GenerationConfig, list[_ItemState]]] = {}
            for state in pending:
                fitted, _, _ = state.fitted(backend, generation_config)
                budgets.setdefault(fitted.max_new_tokens, (fitted, []))[1].append(state)
            for fitted, members in budgets.values():
                began = time.perf_counter()
                groups = backend.generate_batch([s.conversation() for s in members], fitted)
                share = _ms_since(began) / len(members)
                for state, generations in zip(members, groups, strict=True):
                    state.timings["generate"] += share
                    state.generated(generations, fitted)
                    for generation in generations:
                        state.run(generation, extract_program(generation.text), config, round_)
            pending = [s for s in pending if s.needs_repair(config)]
            round_ += 1
        yield from (_result(state, config, backend.description) for state in states)


def refine(
    question: str,
    draft: str,
    *,
    gold: str | None = None,
    config: RefineConfig | None = None,
    backend: Backend | LoadedModel | None = None,
) -> RefinementResult:
    """Refine one draft (raises InputError for unusable input)."""
    return next(refine_batch([RefineItem(question, draft, gold)], config, backend))


def refine_stream(
    item: RefineItem,
    *,
    config: RefineConfig | None = None,
    backend: Backend | LoadedModel | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[RefineEvent]:
    """Refine one draft, yielding RefineEvents as programs are written and run.

    When `cancel` is set, generation stops at the next token and the stream ends without `done`.
    """
    config = config or RefineConfig()
    backend = _backend(backend)
    generation_config = config.generation_config()
    state, round_ = _ItemState(item), 0
    state.timings = {"prompt": 0.0, **state.timings}
    while True:
        first = len(state.candidates)
        fitted, prompt_tokens, lowered = state.fitted(backend, generation_config)
        yield RefineEvent("prompt", first, lowered or "", tokens=prompt_tokens or 0, limit=fitted.max_new_tokens)
        began, generations, reading = time.perf_counter(), [], True
        for chunk in backend.generate_stream([state.conversation()], fitted, cancel=cancel):
            if reading:  # the time to the first token is the prompt's (its evaluation, a server's queue)
                state.timings["prompt"] += _ms_since(began)
                began, reading = time.perf_counter(), False
            if chunk.generations is None:
                yield RefineEvent("token", first + chunk.row, chunk.text, tokens=chunk.tokens)
            else:
                generations = chunk.generations[0]
        state.timings["generate"] += _ms_since(began)
        if cancel is not None and cancel.is_set():
            return
        state.generated(generations, fitted)
        for generation in generations:
            program = extract_program(generation.text)
            yield RefineEvent("program", len(state.candidates), program)
            index = state.run(generation, program, config, round_)
            outcome = state.candidates[index]
            yield RefineEvent("executed", index, outcome.execution.stdout, execution=outcome.execution, outcome=outcome)
        if not state.needs_repair(config):
            break
        round_ += 1
    yield RefineEvent("done", -1, result=_result(state, config, backend.description))
