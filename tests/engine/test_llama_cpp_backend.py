"""The llama.cpp backend on the offline default (the bundled SmolLM2 GGUF with the shipped CaP
adapter merged in by `cap_app.models.gguf`), and the GGUF export itself: same prompt tokens and
same greedy tokens as transformers, seeded samples (the same with one context or two, the rows of
a call decoded together), the stops, cancel, closing, and the 8/4-bit files."""

import dataclasses
import threading

import pytest

from cap_app.backends import BackendConfig, BackendError, get_backend
from cap_app.backends.base import GenerationConfig
from cap_app.backends.llama_cpp import (
    SEQUENCES,
    THREADS,
    LlamaCppBackend,
    _groups,
    _PromptThreads,
    default_contexts,
)
from cap_app.backends.transformers import generate_batch
from cap_app.cli import main
from cap_app.engine.inputs import RefineItem
from cap_app.engine.prompts import build_messages, build_repair_messages
from cap_app.engine.refine import RefineConfig, refine, refine_stream
from cap_app.models.chat_template import render_messages
from cap_app.models.gguf import cached_export, export_gguf
from cap_app.models.loading import DEFAULT_ADAPTER_DIR, ModelConfig, default_gguf_path, get_model

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
DRAFT = "In May she sold 48 / 2 = 24 clips.\nAltogether she sold 48 + 24 = 72 clips.\nA: 72"
CONVERSATION = build_messages(QUESTION, DRAFT)


@pytest.fixture(scope="module")
def llama(cap_cache_dir):
    """The offline default through llama.cpp, as `--backend llama.cpp` builds it (exported once per session)."""
    return get_backend(ModelConfig(), BackendConfig(backend="llama.cpp"))


@pytest.fixture(scope="module")
def transformers_default(cap_cache_dir):
    return get_model(ModelConfig())


@pytest.fixture(scope="module")
def model_file(llama):
    """The GGUF file `llama` runs (exported by it)."""
    return cached_export(default_gguf_path(), str(DEFAULT_ADAPTER_DIR))


@pytest.fixture(scope="module")
def one_context(model_file):
    return LlamaCppBackend(model_file, name="one context", contexts=1)


@pytest.fixture(scope="module")
def two_contexts(model_file):
    return LlamaCppBackend(model_file, name="two contexts", contexts=2)


def test_the_offline_default_refines_through_llama_cpp(llama):
    result = refine(QUESTION, DRAFT, config=RefineConfig(max_new_tokens=200), backend=llama)
    assert result.model == "SmolLM2-135M-Instruct + smollm2-cap"
    [candidate] = result.candidates
    assert candidate.finish == "program_end" and candidate.program and candidate.logprob < 0
    assert result.execution.status == "ok" and result.refined_answer is not None


def test_prompts_render_and_tokenize_as_in_transformers(llama, transformers_default):
    tokenizer = transformers_default.tokenizer
    repair = build_repair_messages(QUESTION, DRAFT, [("print(x)", "NameError: name 'x' is not defined")])
    for conversation in (CONVERSATION, repair):
        expected = tokenizer(render_messages(tokenizer, conversation), add_special_tokens=False)["input_ids"]
        assert llama.prompt_tokens(conversation) == expected


def test_seeded_samples_repeat_and_differ_from_each_other(llama):
    config = GenerationConfig(temperature=1.0, top_p=0.95, max_new_tokens=24, n=3, seed=7)
    first = [g.token_ids for g in llama.generate_batch([CONVERSATION], config)[0]]
    again = [g.token_ids for g in llama.generate_batch([CONVERSATION], config)[0]]
    assert first == again and len({tuple(ids) for ids in first}) > 1


def test_stream_matches_the_generations_and_stops_at_the_limit(llama):
    chunks = list(llama.generate_stream([CONVERSATION], GenerationConfig(max_new_tokens=12)))
    [[generation]] = chunks[-1].generations
    assert "".join(c.text for c in chunks[:-1]) == generation.text
    assert (generation.finish, generation.new_tokens, chunks[-2].tokens) == ("length", 12, 12)


def test_cancel_stops_a_stream(llama):
    cancel = threading.Event()
    events = refine_stream(
        RefineItem(QUESTION, DRAFT), config=RefineConfig(max_new_tokens=300), backend=llama, cancel=cancel
    )
    next(events)
    cancel.set()
    rest = list(events)
    assert {e.kind for e in rest} <= {"token"} and len(rest) < 5


def test_two_contexts_vote_with_the_samples_of_one(one_context, two_contexts):
    """Each row's seed decides its tokens: a vote's rows decode together, in one shared context or
    split between two, and draw the same programs with one context as with two (their log-probs
    equal but for the last digits of batched numbers), and the very same again on a rerun."""
    config = RefineConfig(strategy="vote", n=4, seed=3, max_new_tokens=160)
    one, two, again = (
        refine(QUESTION, DRAFT, config=config, backend=backend) for backend in (one_context, two_contexts, two_contexts)
    )
    assert [c.text for c in two.candidates] == [c.text for c in one.candidates]
    assert [c.logprob for c in two.candidates] == pytest.approx([c.logprob for c in one.candidates], abs=1e-2)
    assert [(c.text, c.logprob) for c in again.candidates] == [(c.text, c.logprob) for c in two.candidates]
    # (the log-probs pick which of the alike programs is chosen)
    assert (two.votes, two.program, two.refined_answer) == (one.votes, one.program, one.refined_answer)
    prompt = two_contexts.prompt_tokens(CONVERSATION)
    assert [shared.kept for shared in two_contexts.shared] == [prompt, prompt]  # both decoded rows
    # The model is sure of this item's program; hotter, shorter samples differ from each other.
    hot = GenerationConfig(temperature=1.0, top_p=0.95, max_new_tokens=24, n=4, seed=7)
    one, two, again = (
        [(g.token_ids, g.mean_logprob) for g in b.generate_batch([CONVERSATION], hot)[0]]
        for b in (one_context, two_contexts, two_contexts)
    )
    assert [ids for ids, _ in two] == [ids for ids, _ in one] and len({tuple(ids) for ids, _ in one}) > 1
    assert [logprob for _, logprob in two] == pytest.approx([logprob for _, logprob in one], abs=1e-2)
    assert again == two


def test_the_rows_of_a_call_decode_together(two_contexts):
    """N samples of one prompt decode as N sequences of the shared contexts: each a well-formed
    generation of its own seed (the same on a rerun, also after other prompts took the contexts),
    greedy rows alike, every row streamed, a cancel stopping them all at their next token; single
    samples of several conversations decode each alone."""
    prompt = two_contexts.prompt_tokens(CONVERSATION)
    hot = GenerationConfig(temperature=1.0, top_p=0.95, max_new_tokens=30, n=5, seed=11)
    first = two_contexts.generate_batch([CONVERSATION], hot)[0]
    assert len(first) == 5 and len({tuple(g.token_ids) for g in first}) > 1
    for generation in first:
        assert generation.prompt_tokens == len(prompt) and generation.finish in {"length", "program_end", "eos"}
        assert 0 < generation.new_tokens <= 30 and len(generation.token_ids) == generation.new_tokens
        assert generation.mean_logprob < 0 and generation.text
    other = build_messages("What is 2 + 3?", "A: 5")
    two_contexts.generate_batch([other, CONVERSATION], GenerationConfig(max_new_tokens=8, n=2))
    again = two_contexts.generate_batch([CONVERSATION], hot)[0]
    assert [(g.text, g.token_ids, g.mean_logprob, g.finish) for g in again] == [
        (g.text, g.token_ids, g.mean_logprob, g.finish) for g in first
    ]

    greedy = GenerationConfig(max_new_tokens=40, n=3, stop_at_program_end=False)
    chunks = list(two_contexts.generate_stream([CONVERSATION, other], greedy))
    groups = chunks[-1].generations
    assert [len(group) for group in groups] == [3, 3]
    for group in groups:  # alike but for the last digits of the log-probs (the rows' cells differ)
        assert len({(g.text, tuple(g.token_ids)) for g in group}) == 1
        assert [g.mean_logprob for g in group] == pytest.approx([group[0].mean_logprob] * 3, abs=1e-2)
    for row, generation in enumerate(g for group in groups for g in group):
        streamed = [c for c in chunks[:-1] if c.row == row]
        assert "".join(c.text for c in streamed) == generation.text
        assert streamed[-1].tokens == generation.new_tokens

    # one sample per conversation: each decodes in a context of the pool, as it does alone
    single = GenerationConfig(max_new_tokens=20, stop_at_program_end=False)
    together = [group[0] for group in two_contexts.generate_batch([CONVERSATION, other], single)]
    alone = [two_contexts.generate_batch([conversation], single)[0][0] for conversation in (CONVERSATION, other)]
    assert together == alone

    cancel = threading.Event()
    stream = two_contexts.generate_stream(
        [CONVERSATION], GenerationConfig(temperature=1.0, n=4, seed=0, max_new_tokens=300), cancel=cancel
    )
    next(stream)
    cancel.set()
    *rest, last = stream
    assert len(rest) < 10 and {g.finish for g in last.generations[0]} == {"cancelled"}
    # cancelled before: no group starts
    [generations] = two_contexts.generate_batch([CONVERSATION], GenerationConfig(n=3), cancel=cancel)
    assert [(g.text, g.new_tokens, g.finish) for g in generations] == [("", 0, "cancelled")] * 3


def test_a_vote_over_two_contexts_evaluates_its_prompt_once(two_contexts, monkeypatch):
    """The context of a conversation's first group evaluates its prompt and the other gets a copy of
    its cells: one prompt batch for both, the same samples as when each evaluates the prompt itself.
    A lead that fails fails the call; its other groups do not wait for it forever."""
    question = "A box holds 12 pens. How many pens are in 7 boxes?"
    conversation = build_messages(question, "7 x 12 = 84 pens.\nA: 84")
    prompt = two_contexts.prompt_tokens(conversation)
    hot = GenerationConfig(temperature=1.0, top_p=0.95, max_new_tokens=24, n=4, seed=5)
    batches, step = [], LlamaCppBackend._step

    def counting(shared, entries, *, outputs=True):
        if not outputs:  # a batch of the prompt
            batches.append(len(entries))
        step(shared, entries, outputs=outputs)

    monkeypatch.setattr(LlamaCppBackend, "_step", staticmethod(counting))
    for shared in two_contexts.shared:
        shared.kept = []  # nothing of the prompt kept from earlier calls
    copied = [(g.token_ids, g.mean_logprob) for g in two_contexts.generate_batch([conversation], hot)[0]]
    assert sum(batches) == len(prompt) - 1  # the last token decodes alone, in each context
    assert [shared.kept for shared in two_contexts.shared] == [prompt, prompt]

    take = LlamaCppBackend._take_prompt

    def failing_lead(self, shared, llm, prompt, lead, threads, cancel):
        if lead:
            raise BackendError("the lead failed")
        return take(self, shared, llm, prompt, lead, threads, cancel)

    for shared in two_contexts.shared:
        shared.kept = []
    with pytest.raises(BackendError, match="the lead failed"), monkeypatch.context() as patch:
        patch.setattr(LlamaCppBackend, "_take_prompt", failing_lead)
        two_contexts.generate_batch([conversation], hot)
    batches.clear()
    for shared in two_contexts.shared:
        shared.kept = []
    with monkeypatch.context() as patch:  # each context evaluates the prompt itself
        patch.setattr(
            LlamaCppBackend, "_take_prompt", lambda self, s, llm, p, lead, t, c: take(self, s, llm, p, True, t, c)
        )
        alone = [(g.token_ids, g.mean_logprob) for g in two_contexts.generate_batch([conversation], hot)[0]]
    assert sum(batches) == 2 * (len(prompt) - 1)
    assert [ids for ids, _ in alone] == [ids for ids, _ in copied]
    assert [logprob for _, logprob in alone] == pytest.approx([logprob for _, logprob in copied], abs=1e-2)


def test_the_rows_of_a_prompt_are_split_in_groups_that_fit():
    assert _groups(400, GenerationConfig(max_new_tokens=256, n=8), 4096, most=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _groups(400, GenerationConfig(max_new_tokens=256, n=5), 4096, most=3) == [[0, 1, 2], [3, 4]]
    # 400 + 3 x 1000 fit 4,096 cells, not 4
    assert _groups(400, GenerationConfig(max_new_tokens=1000, n=4), 4096) == [[0, 1], [2, 3]]
    assert _groups(400, GenerationConfig(max_new_tokens=10, n=SEQUENCES + 1), 4096) == [
        list(range(SEQUENCES // 2 + 1)),
        list(range(SEQUENCES // 2 + 1, SEQUENCES + 1)),
    ]


def test_a_prompt_borrows_idle_threads_only_while_that_is_faster():
    """Its own threads first, then all it may borrow, then whichever evaluated prompts faster per
    token; the other is tried again after RETRY prompts, twice as late each time it is still
    slower, at the first interval again once it won; short prompts do not count; nothing to
    borrow, nothing to choose."""
    chooser, most, retry = _PromptThreads(), THREADS + 1, _PromptThreads.RETRY
    assert chooser.choose(THREADS) == THREADS
    assert chooser.choose(most) == THREADS
    chooser.record(THREADS, 400, 1.2)
    assert chooser.choose(most) == most
    chooser.record(most, 400, 0.6)  # idle: borrowing halves the time

    def picks(count):
        chosen = []
        for _ in range(count):
            chosen.append(chooser.choose(most))
            chooser.record(chosen[-1], 400, 1.2 if chosen[-1] == THREADS else 0.6)
        return chosen

    assert picks(retry) == [most] * (retry - 1) + [THREADS]  # tried again, still slower...
    assert picks(2 * retry) == [most] * (2 * retry - 1) + [THREADS]  # ...so tried twice as late
    chooser.record(most, 400, 3.4)  # another process took a CPU: (0.6 + 3.4) / 2 per 400 tokens > 1.2
    assert chooser.choose(most) == THREADS
    chooser.record(most, 10, 0.0)  # a short prompt tells nothing
    assert chooser.cost[most] == pytest.approx(2.0 / 400)
    # idle again: the next trial brings the mean down but not below, the one after wins
    assert chooser.retry == 4 * retry and picks(4 * retry - 1)[-1] == most
    assert chooser.retry == 8 * retry and picks(8 * retry)[-1] == most
    assert chooser.retry == retry and picks(3) == [most] * 3


def test_a_lone_sample_evaluates_its_prompt_with_the_idle_threads(two_contexts, monkeypatch):
    """The pool's other contexts are idle: a greedy sample's prompt may use their threads, and its
    program is the same whichever number of threads evaluated the prompt."""
    offered = []
    choose = _PromptThreads.choose

    def spying(self, most):
        offered.append(most)
        return choose(self, most)

    monkeypatch.setattr(_PromptThreads, "choose", spying)
    config = GenerationConfig(max_new_tokens=40)
    runs = []
    for _ in range(3):  # its own threads, all of them, then the faster
        for context in two_contexts.contexts:
            context.llm.n_tokens, context.prompt = 0, ""  # nothing kept: the whole prompt each time
        runs.append(two_contexts.generate_batch([CONVERSATION], config)[0][0])
    assert offered == [2 * THREADS] * 3 and two_contexts.holding == 0
    assert set(two_contexts.prompt_threads.cost) == {THREADS, 2 * THREADS}
    assert [(g.token_ids, g.mean_logprob) for g in runs[1:]] == [(runs[0].token_ids, runs[0].mean_logprob)] * 2


def test_cancel_stops_a_vote_on_two_contexts(two_contexts):
    cancel = threading.Event()
    config = RefineConfig(strategy="vote", n=4, max_new_tokens=300)
    events = refine_stream(RefineItem(QUESTION, DRAFT), config=config, backend=two_contexts, cancel=cancel)
    next(events)
    cancel.set()
    rest = list(events)  # the rows stop at their next token
    assert {e.kind for e in rest} <= {"token"} and len(rest) < 10


def test_close_waits_for_the_decoding_threads_then_refuses(model_file):
    backend = LlamaCppBackend(model_file, name="closing", contexts=2)
    config = GenerationConfig(  # this hot, no row ends before its 300 tokens
        temperature=2.0, top_p=1.0, seed=0, max_new_tokens=300, stop_at_program_end=False, stop_on_repetition=False
    )
    # two single rows, one in each context of the pool, and four rows together in the shared one
    streams = [backend.generate_stream([CONVERSATION], config) for _ in range(2)]
    streams.append(backend.generate_stream([CONVERSATION], dataclasses.replace(config, n=4)))
    for stream in streams:
        next(stream)
    backend.close()  # returns once every thread lets go; freeing a context under one crashed (SIGSEGV)
    assert all(context.llm._ctx.ctx is None for context in backend.contexts)
    assert backend.shared[0].ctx.ctx is None
    for stream in streams:
        with pytest.raises(BackendError, match="^the llama.cpp backend was closed$"):
            list(stream)
    for n in (1, 3):
        with pytest.raises(BackendError, match="^the llama.cpp backend was closed$"):
            backend.generate_batch([CONVERSATION], GenerationConfig(n=n))


def test_contexts_default_to_the_cpus_and_read_the_environment(monkeypatch):
    monkeypatch.delenv("CAP_LLAMA_CONTEXTS", raising=False)
    assert default_contexts() >= 1
    monkeypatch.setenv("CAP_LLAMA_CONTEXTS", "3")
    assert default_contexts() == 3
    monkeypatch.setenv("CAP_LLAMA_CONTEXTS", "0")
    with pytest.raises(BackendError, match=r"^CAP_LLAMA_CONTEXTS='0' is not a number of contexts \(1 or more\)$"):
        default_contexts()


def test_f16_export_writes_the_greedy_tokens_of_transformers(tmp_path, transformers_default):
    """f16 keeps the merged float32 weights up to rounding: the first greedy tokens agree exactly."""
    path = export_gguf(default_gguf_path(), str(DEFAULT_ADAPTER_DIR), tmp_path / "cap.f16.gguf", "f16")
    exported = LlamaCppBackend(path, name="f16")
    prompt = render_messages(transformers_default.tokenizer, CONVERSATION)
    config = GenerationConfig(max_new_tokens=24, stop_at_program_end=False)
    [[expected]] = generate_batch(transformers_default, [prompt], config)
    [[got]] = exported.generate_batch([CONVERSATION], config)
    assert got.token_ids == expected.token_ids
    assert got.mean_logprob == pytest.approx(expected.mean_logprob, abs=0.02)


def test_the_export_command_writes_a_4_bit_file_llama_cpp_runs(tmp_path, capsys):
    output = tmp_path / "cap.q4_0.gguf"
    assert main(["gguf", "--output", str(output), "--type", "q4_0"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {output} (SmolLM2-135M-Instruct + smollm2-cap, q4_0, ")
    result = refine(
        QUESTION, DRAFT, config=RefineConfig(max_new_tokens=200), backend=LlamaCppBackend(output, name="q4")
    )
    assert result.candidates[0].finish == "program_end" and "print" in result.program


def test_the_export_command_refuses_a_base_that_is_not_gguf(tiny_model_dir, capsys):
    assert main(["gguf", "--output", "x.gguf", "--model", tiny_model_dir]) == 2
    assert capsys.readouterr().err == f"error: the base model must be a .gguf file; '{tiny_model_dir}' is not one\n"


def test_a_process_that_abandons_a_stream_exits_cleanly(llama, cap_cache_dir):
    """Exit while sampling threads still decode (a script reading one chunk, Ctrl-C mid-program),
    one row or several on two contexts: each context is freed only after its thread lets go of it,
    instead of crashing with SIGSEGV."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from cap_app.backends import BackendConfig, get_backend\n"
        "from cap_app.backends.base import GenerationConfig\n"
        "from cap_app.models.loading import ModelConfig\n"
        "from cap_app.engine.prompts import build_messages\n"
        "backend = get_backend(ModelConfig(), BackendConfig(backend='llama.cpp'))\n"
        f"conversation = build_messages({QUESTION!r}, {DRAFT!r})\n"
        "stream = backend.generate_stream([conversation], GenerationConfig(n=int(sys.argv[1]), max_new_tokens=120))\n"
        "print(next(iter(stream)).tokens)\n"
    )
    for rows in (1, 1, 3):
        done = subprocess.run(
            [sys.executable, "-c", script, str(rows)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CAP_CACHE_DIR": str(cap_cache_dir), "CAP_LLAMA_CONTEXTS": "2"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "1"


def testweight_repacking_can_be_turned_off_for_one_load_only():
    """AMX CPUs load without llama.cpp's extra weight buffers (they crash on a prompt there); the
    default parameters are restored after the load, for other models in the process."""
    from llama_cpp import llama_cpp as library

    from cap_app.backends.llama_cpp import weight_repacking

    assert library.llama_model_default_params().use_extra_bufts
    with weight_repacking(False):
        assert not library.llama_model_default_params().use_extra_bufts
    with weight_repacking(True):
        assert library.llama_model_default_params().use_extra_bufts
    assert library.llama_model_default_params().use_extra_bufts


def test_stop_during_a_long_prompt_takes_effect_at_its_next_batch(one_context, two_contexts, monkeypatch):
    """Stop while llama.cpp evaluates a long prompt (seconds a batch on a CPU; issue 25 allows drafts
    of ~4,000 tokens): the rest of the prompt is not evaluated and nothing is written, greedy (a
    context of the pool, llama.cpp's batches) and vote (the shared context, PROMPT_BATCH) alike."""
    long = build_messages(QUESTION, DRAFT.replace("\nA: 72", "\n") * 60 + "A: 72")
    assert len(one_context.prompt_tokens(long)) > 3 * 512
    cancel = threading.Event()
    llm = one_context.contexts[0].llm
    evaluated, eval_batch = [], llm.eval

    def eval_then_stop(tokens):
        evaluated.append(len(tokens))
        eval_batch(tokens)
        cancel.set()  # Stop, pressed while the first batch was evaluated

    monkeypatch.setattr(llm, "eval", eval_then_stop)
    [[greedy]] = one_context.generate_batch([long], GenerationConfig(max_new_tokens=8), cancel=cancel)
    assert evaluated == [llm.n_batch] and (greedy.finish, greedy.new_tokens) == ("cancelled", 0)

    steps, step = [], LlamaCppBackend._step
    vote_cancel = threading.Event()

    def step_then_stop(shared, entries, *, outputs=True):
        steps.append(len(entries))
        step(shared, entries, outputs=outputs)
        vote_cancel.set()

    monkeypatch.setattr(LlamaCppBackend, "_step", staticmethod(step_then_stop))
    config = GenerationConfig(max_new_tokens=8, n=4, temperature=0.7)
    [votes] = two_contexts.generate_batch([long], config, cancel=vote_cancel)
    assert len(steps) == 1 and [(g.finish, g.new_tokens) for g in votes] == [("cancelled", 0)] * 4
    monkeypatch.undo()
    [[again]] = one_context.generate_batch([CONVERSATION], GenerationConfig(max_new_tokens=200))
    assert again.finish == "program_end"  # the contexts work on after a stopped prompt
