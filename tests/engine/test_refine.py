"""Refinement strategies. A random tiny model writes no programs, so these tests script the
generator (the real one is tested in test_generate.py and test_bundled_model.py); the programs
run in the real sandbox."""

import threading

import pytest

import cap_app.backends.transformers
from cap_app.backends.base import ContextError, Generation, StreamChunk
from cap_app.engine.inputs import (
    MAX_DRAFT_CHARS,
    MAX_QUESTION_CHARS,
    InputError,
    RefineItem,
    gold_answer,
    item_from_record,
    validate_inputs,
)
from cap_app.engine.refine import RefineConfig, refine, refine_batch, refine_stream
from cap_app.models.loading import LoadedModel
from tests.helpers.tiny_model import make_tiny_tokenizer

QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. She sells the rest at $2. How much does she make?"
)
WRONG_DRAFT = "She has 16 - 3 = 13 eggs left.\nShe makes 13 * 2 = $26.\nA: 26"
RIGHT = "```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```"
WRONG = "```python\nprint((16 - 3) * 2)\n```"
TWENTY = "```python\nprint(20)\n```"
CRASHES = "```python\neggs = 16 - 3 - 4\nprint(eggs / 0)\n```"
PRINTS_NOTHING = "```python\neggs = 9\n```"


class ScriptedGenerator:
    """Stands in for cap_app.backends.transformers: returns scripted texts (with log-probs) in order and
    records the prompts and settings it was called with."""

    def __init__(self, *script: tuple):  # (text, mean log-prob[, finish])
        self.script = list(script)
        self.calls: list[tuple[list[str], object]] = []

    def _next(self, prompt: str) -> Generation:
        text, logprob, *finish = self.script.pop(0)
        return Generation(
            text=text,
            prompt_tokens=len(prompt),
            new_tokens=len(text),
            mean_logprob=logprob,
            finish=finish[0] if finish else "program_end",
        )

    def generate_batch(self, loaded, prompts, config, *, cancel=None):
        self.calls.append((list(prompts), config))
        return [[self._next(p) for _ in range(config.n)] for p in prompts]

    def generate_stream(self, loaded, prompts, config, *, cancel=None):
        groups = self.generate_batch(loaded, prompts, config)
        rows = [g for group in groups for g in group]
        for row, generation in enumerate(rows):
            for start in range(0, len(generation.text), 7):
                if cancel is not None and cancel.is_set():
                    return
                yield StreamChunk(row, generation.text[start : start + 7])
        yield StreamChunk(-1, "", generations=groups)


@pytest.fixture
def scripted_model():
    return LoadedModel(model=None, tokenizer=make_tiny_tokenizer(), name="scripted", device="cpu")


def script(monkeypatch, *texts: tuple[str, float]) -> ScriptedGenerator:
    generator = ScriptedGenerator(*texts)
    monkeypatch.setattr(cap_app.backends.transformers, "generate_batch", generator.generate_batch)
    monkeypatch.setattr(cap_app.backends.transformers, "generate_stream", generator.generate_stream)
    return generator


def test_greedy_corrects_a_wrong_draft(monkeypatch, scripted_model):
    generator = script(monkeypatch, (RIGHT, -0.1))
    result = refine(QUESTION, WRONG_DRAFT, gold="#### 18", backend=scripted_model)
    assert (result.draft_answer, result.refined_answer, result.verdict) == ("26", "18", "disagrees")
    assert (result.gold, result.draft_correct, result.refined_correct) == ("18", False, True)
    assert result.chosen == 0 and result.program == "eggs = 16 - 3 - 4\nprint(eggs * 2)"
    assert result.execution.status == "ok" and result.execution.trace  # traced by the real sandbox
    [(prompts, config)] = generator.calls
    assert config.temperature == 0 and config.n == 1
    assert WRONG_DRAFT in prompts[0] and QUESTION in prompts[0]
    assert result.model == "scripted" and result.generated_tokens == len(RIGHT)
    assert result.candidates[0].finish == "program_end"  # kept, so a view can tell a program cut off mid-way
    assert set(result.timings_ms) == {"generate", "execute", "total"}


def test_greedy_agrees_with_a_right_draft_and_reports_a_failed_program(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -0.1), (CRASHES, -0.1))
    assert refine(QUESTION, "A: 18", backend=scripted_model).verdict == "agrees"
    failed = refine(QUESTION, "A: 18", backend=scripted_model)
    # no program answered: the draft's answer stands, unverified
    assert (failed.verdict, failed.refined_answer, failed.program_answer, failed.chosen) == (
        "no_answer",
        "18",
        None,
        None,
    )
    assert (
        failed.candidates[0].execution.status == "error" and "division by zero" in failed.candidates[0].execution.error
    )


RIGHT_DRAFT = "She has 16 - 3 - 4 = 9 eggs left.\nShe makes 9 * 2 = $18.\nA: 18"
SLIP_DRAFT = "She has 16 - 3 - 4 = 10 eggs left.\nShe makes 10 * 2 = $20.\nA: 20"
MISREADS = "```python\neggs = 16 - 3 - 4\nprint(eggs * 3)\n```"


def test_a_program_that_misreads_a_right_draft_leaves_its_answer_standing(monkeypatch, scripted_model):
    script(monkeypatch, (MISREADS, -0.1), (MISREADS, -0.1), (CRASHES, -0.1))
    kept = refine(QUESTION, RIGHT_DRAFT, gold="18", backend=scripted_model)
    assert (kept.program_answer, kept.refined_answer, kept.verdict) == ("27", "18", "unconfirmed")
    assert kept.refined_correct and kept.draft_mistake is None
    # the paper's rule: the program's answer wins whenever one runs, and none when none does
    always = RefineConfig(override="always")
    replaced = refine(QUESTION, RIGHT_DRAFT, gold="18", config=always, backend=scripted_model)
    assert (replaced.refined_answer, replaced.verdict, replaced.refined_correct) == ("27", "disagrees", False)
    failed = refine(QUESTION, RIGHT_DRAFT, config=always, backend=scripted_model)
    assert (failed.verdict, failed.refined_answer) == ("no_answer", None)


def test_a_program_that_recomputes_the_wrong_step_corrects_the_draft(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -0.1), (RIGHT, -0.1))
    fixed = refine(QUESTION, SLIP_DRAFT, gold="18", backend=scripted_model)
    assert (fixed.refined_answer, fixed.verdict, fixed.refined_correct) == ("18", "disagrees", True)
    assert fixed.draft_mistake == "16 - 3 - 4 = 10, but it is 9"
    # the draft that forgot the 4 muffins: its arithmetic is right, but the program uses what it left out
    forgot = refine(QUESTION, WRONG_DRAFT, gold="18", config=RefineConfig(trace=False), backend=scripted_model)
    assert (forgot.refined_answer, forgot.verdict) == ("18", "disagrees")
    assert forgot.draft_mistake.startswith("it never uses the question's 4")
    assert forgot.candidates[0].execution.trace == []  # read for the decision, not kept when not asked for


def test_a_draft_whose_answer_does_not_follow_from_its_work_is_corrected_and_told_so(monkeypatch, scripted_model):
    """Issue 25: the draft computes 18 and states 42 (an injected line); the program agrees with its
    work, which locates the draft's mistake: the program's answer replaces it, and the verdict says why."""
    from cap_app.engine.reading import read_result
    from cap_app.ui.views import verdict_sentence

    script(monkeypatch, (RIGHT, -0.1))
    contradicts = RIGHT_DRAFT.replace("A: 18", "A: 42")
    result = refine(QUESTION, contradicts, gold="18", backend=scripted_model)
    assert (result.draft_answer, result.refined_answer, result.verdict) == ("42", "18", "disagrees")
    assert result.draft_mistake == "its answer does not follow from its work (it computes 18, then states 42)"
    assert "Its mistake: its answer does not follow from its work (it computes 18, then states 42)." in (
        verdict_sentence(read_result(result))
    )


def test_vote_takes_the_majority_answer(monkeypatch, scripted_model):
    generator = script(
        monkeypatch, (WRONG, -0.1), (RIGHT, -0.9), (RIGHT.replace("eggs", "left"), -0.5), (CRASHES, -0.01)
    )
    result = refine(
        QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="vote", n=4, temperature=0.8), backend=scripted_model
    )
    assert result.votes == {"26": 1, "18": 2} and result.refined_answer == "18"
    assert result.chosen == 2  # the more likely of the two programs that printed 18
    [(_, config)] = generator.calls
    assert (config.n, config.temperature) == (4, 0.8)


def test_vote_counts_equivalent_answers_together(monkeypatch, scripted_model):
    script(monkeypatch, ("```python\nprint(18.0)\n```", -0.5), (RIGHT, -0.4), (TWENTY, -0.1))
    result = refine(QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="vote", n=3), backend=scripted_model)
    assert result.votes == {"18": 2, "20": 1} and result.refined_answer == "18"


def test_vote_tie_goes_to_the_higher_log_prob(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -0.9), (TWENTY, -0.2))
    result = refine(QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="vote", n=2), backend=scripted_model)
    assert (result.program_answer, result.chosen) == ("20", 1)
    # print(20) shows nothing wrong in the draft, so the draft's answer stands
    assert (result.refined_answer, result.verdict) == ("26", "unconfirmed")


def test_cot_cap_counts_the_draft_as_a_vote(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -0.1), (WRONG, -0.5), (TWENTY, -0.3))
    result = refine(QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="cot+cap", n=3), backend=scripted_model)
    assert result.votes == {"18": 1, "26": 2, "20": 1}
    assert (result.refined_answer, result.chosen, result.verdict) == ("26", 1, "agrees")


def test_cot_cap_tie_between_draft_alone_and_a_program_goes_to_the_program(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -2.0))
    result = refine(QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="cot+cap", n=1), backend=scripted_model)
    assert result.votes == {"18": 1, "26": 1} and result.refined_answer == "18"


def test_cot_cap_falls_back_to_the_draft_when_no_program_runs(monkeypatch, scripted_model):
    script(monkeypatch, (CRASHES, -0.1), (CRASHES, -0.1))
    result = refine(QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="cot+cap", n=2), backend=scripted_model)
    assert (result.refined_answer, result.chosen, result.votes) == ("26", None, {"26": 1})


def test_repair_feeds_the_error_back_until_a_program_runs(monkeypatch, scripted_model):
    generator = script(monkeypatch, (CRASHES, -0.1), (PRINTS_NOTHING, -0.1), (RIGHT, -0.1))
    result = refine(
        QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="repair", repair_rounds=3), backend=scripted_model
    )
    assert [c.round for c in result.candidates] == [0, 1, 2]
    assert (result.chosen, result.refined_answer) == (2, "18")
    first_repair, second_repair = generator.calls[1][0][0], generator.calls[2][0][0]
    assert "division by zero" in first_repair and "eggs / 0" in first_repair
    assert "printed no answer" in second_repair and "division by zero" in second_repair  # the whole history


def test_repair_names_the_cut_not_the_broken_line_of_a_cut_off_program(monkeypatch, scripted_model):
    cut = "```python\neggs = 16 - 3 - 4\nprint(eg"
    generator = script(monkeypatch, (cut, -0.1, "length"), (cut, -0.1, "repetition"), (RIGHT, -0.1))
    result = refine(
        QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="repair", repair_rounds=3), backend=scripted_model
    )
    assert result.refined_answer == "18"
    first_repair, second_repair = generator.calls[1][0][0], generator.calls[2][0][0]
    assert "cut off at the token limit" in first_repair and "SyntaxError" not in first_repair
    assert "kept repeating the same lines" in second_repair


def test_repair_gives_up_after_its_rounds(monkeypatch, scripted_model):
    generator = script(monkeypatch, *[(CRASHES, -0.1)] * 3)
    result = refine(
        QUESTION, WRONG_DRAFT, config=RefineConfig(strategy="repair", repair_rounds=2), backend=scripted_model
    )
    assert len(result.candidates) == 3 and result.verdict == "no_answer" and not generator.script


def test_batch_groups_items_and_keeps_their_order(monkeypatch, scripted_model):
    generator = script(monkeypatch, (RIGHT, -0.1), (TWENTY, -0.1), (WRONG, -0.1))
    items = [RefineItem(QUESTION, WRONG_DRAFT, "18"), RefineItem("What is 4 * 5?", "A: 20"), RefineItem("q3", "")]
    results = list(refine_batch(items, RefineConfig(batch_size=2), scripted_model))
    assert [r.refined_answer for r in results] == ["18", "20", "26"]
    assert [len(prompts) for prompts, _ in generator.calls] == [2, 1]
    assert results[0].refined_correct is True and results[1].gold is None


def test_batch_repairs_only_the_items_that_failed(monkeypatch, scripted_model):
    generator = script(monkeypatch, (CRASHES, -0.1), (TWENTY, -0.1), (RIGHT, -0.1))
    items = [RefineItem(QUESTION, WRONG_DRAFT), RefineItem("What is 4 * 5?", "A: 20")]
    results = list(refine_batch(items, RefineConfig(strategy="repair", batch_size=2), scripted_model))
    assert [len(prompts) for prompts, _ in generator.calls] == [2, 1]
    assert [r.refined_answer for r in results] == ["18", "20"]


def test_stream_reports_tokens_program_execution_then_the_result(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -0.1), (TWENTY, -0.2))
    events = list(
        refine_stream(
            RefineItem(QUESTION, WRONG_DRAFT), config=RefineConfig(strategy="vote", n=2), backend=scripted_model
        )
    )
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert kinds.index("program") > max(i for i, k in enumerate(kinds) if k == "token")
    for candidate, text in enumerate((RIGHT, TWENTY)):
        assert "".join(e.text for e in events if e.kind == "token" and e.candidate == candidate) == text
    executed = [e for e in events if e.kind == "executed"]
    assert [(e.candidate, e.execution.answer) for e in executed] == [(0, "18"), (1, "20")]
    result = events[-1].result
    assert result.candidates[1].execution == executed[1].execution and result.votes == {"18": 1, "20": 1}


def test_stream_repair_numbers_candidates_across_rounds(monkeypatch, scripted_model):
    script(monkeypatch, (CRASHES, -0.1), (RIGHT, -0.1))
    events = list(
        refine_stream(RefineItem(QUESTION, WRONG_DRAFT), config=RefineConfig(strategy="repair"), backend=scripted_model)
    )
    assert [e.candidate for e in events if e.kind == "program"] == [0, 1]
    assert {e.candidate for e in events if e.kind == "token"} == {0, 1}
    assert events[-1].result.refined_answer == "18"


def test_cancelled_stream_ends_without_a_result(monkeypatch, scripted_model):
    script(monkeypatch, (RIGHT, -0.1))
    cancel = threading.Event()
    events = []
    for event in refine_stream(RefineItem(QUESTION, WRONG_DRAFT), backend=scripted_model, cancel=cancel):
        events.append(event)
        if event.kind == "token":
            cancel.set()
    assert [e.kind for e in events] == ["prompt", "token"]


@pytest.mark.parametrize(
    "question, draft, message",
    [
        ("", "A: 1", "the question is empty"),
        ("   \n", "A: 1", "the question is empty"),
        ("q", "x" * 8001, "the draft is too long (8,001 characters; the limit is 8,000)"),
        ("q\x00", "A: 1", "the question contains control characters; paste plain text"),
        ("q", "\x1b[31mred", "the draft contains control characters; paste plain text"),
        ("q", None, "the draft must be text"),
        (b"q", "", "the question must be text"),
    ],
)
def test_unusable_input_is_refused_with_a_clear_message(question, draft, message):
    with pytest.raises(InputError) as raised:
        validate_inputs(question, draft)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "question, draft",
    [
        ("Café costs €3.50 — how much?\tok", "Line one\r\nline two\n"),  # accents, symbols, a tab, CRLF
        ("What is 2 + 2?", ""),  # no draft: refined from the question alone
        ("q" * MAX_QUESTION_CHARS, "d" * MAX_DRAFT_CHARS),  # the limits themselves
    ],
)
def test_ordinary_input_is_refined_as_given(monkeypatch, scripted_model, question, draft):
    generator = script(monkeypatch, (TWENTY, -0.1))
    result = refine(question, draft, backend=scripted_model)
    assert (result.question, result.draft, result.refined_answer) == (question, draft, "20")
    (prompt,) = generator.calls[0][0]
    assert question.strip() in prompt and draft.strip() in prompt


def test_items_from_the_drafts_file_format():
    record = {
        "question": "Q?",
        "ground_truth": "so\nA: 18",
        "6b_finetuning": {"is_correct": False, "solution": "A: 26"},
        "175b_verification": {"solution": "A: 18"},
    }
    assert item_from_record(record, draft_key="6b_finetuning") == RefineItem("Q?", "A: 26", "18")
    assert item_from_record(record, draft_key="none") == RefineItem("Q?", "", "18")
    with pytest.raises(
        InputError,
        match=r"missing 'draft' \(drafts in this record: 175b_verification, 6b_finetuning; "
        r"choose one as the draft key\)",
    ):
        item_from_record(record)
    with pytest.raises(InputError, match="expected a JSON object"):
        item_from_record(["Q?"])


def test_the_one_record_reader_rules_where_the_cli_and_the_annotator_disagreed():
    """refine.item_from_record reads the CLI's and the annotator's files (issue 17)."""
    # a draft may be empty (refined from the question alone; the annotator refuses a blank one as its
    # extra), but it must be there
    assert item_from_record({"question": "Q?", "draft": ""}) == RefineItem("Q?", "")
    with pytest.raises(InputError, match="missing 'draft'"):
        item_from_record({"question": "Q?"})
    # the engine's limits (the annotator allowed 20,000 characters, then its items failed to refine)
    with pytest.raises(InputError, match="the draft is too long"):
        item_from_record({"question": "Q?", "draft": "x" * (MAX_DRAFT_CHARS + 1)})
    # gold: the first key holding a number or non-blank text (not a boolean), its final answer extracted
    assert gold_answer({"gold": "", "answer": "3 + 4 = 7\n#### 7"}) == "7"
    assert gold_answer({"gold": True, "ground_truth": 12}) == "12"
    assert gold_answer({"answer": "  see the key  "}) == "see the key"
    assert gold_answer({"gold": None}) is None


def test_unknown_strategy_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        RefineConfig(strategy="best")
    with pytest.raises(ValueError, match="top_p"):
        RefineConfig(top_p=0)


def test_stream_says_when_the_model_starts_reading_the_prompt_and_times_it(monkeypatch, scripted_model):
    """Issue 25: the seconds before the first token are the prompt's; the stream says a prompt is being
    read (and of how many tokens, for the page's status), and the result times that stage apart."""
    script(monkeypatch, (RIGHT, -0.1))
    events = list(refine_stream(RefineItem(QUESTION, WRONG_DRAFT), backend=scripted_model))
    assert events[0].kind == "prompt" and events[0].limit == RefineConfig().max_new_tokens
    assert events[0].tokens > len(WRONG_DRAFT)  # the tiny tokenizer: a token per byte of the chat prompt
    assert events[1].kind == "token"
    assert set(events[-1].result.timings_ms) == {"prompt", "generate", "execute", "total"}


def test_a_long_draft_gets_the_token_budget_its_context_leaves_and_is_told_so(tiny_loaded):
    """Issue 25: a prompt that leaves less than "Max new tokens" of the model's context (2,048
    positions for the tiny model, a token per byte) is refined with what is left, said in the
    settings' words; one that leaves no room is refused with the reason."""
    config = RefineConfig(max_new_tokens=400)
    long_draft = "She has 16 - 3 = 13 eggs left. " * 48 + "\nA: 26"  # ~1,500 characters
    result = refine(QUESTION, long_draft, config=config, backend=tiny_loaded)
    [candidate] = result.candidates
    left = 2048 - result.prompt_tokens
    assert 32 <= left < 400 and candidate.tokens == left and candidate.finish == "length"
    assert result.notes == [
        f"“Max new tokens” was lowered from 400 to {left} for this draft: the model reads at most 2,048 tokens "
        f"and the question and draft take {result.prompt_tokens:,}."
    ]
    with pytest.raises(ContextError, match=r"leaves less than 32 for a program: shorten the draft"):
        refine(QUESTION, "x" * 2040, config=config, backend=tiny_loaded)
