"""The `llama.cpp` backend: a GGUF model run in-process by llama-cpp-python, 5-7x faster than
transformers on a CPU (benchmarks/README.md).

llama.cpp evaluates the tokens; the choice of each next token is made here, in numpy, from the
logits of the last one, because the engine needs what llama.cpp's own sampler does not give: the
chosen token's log-prob under the model's untempered distribution (vote tie-breaks, as
transformers' `_LogprobRecorder` records it) and a seeded generator per sample, so a rerun draws
the same programs.

The N samples of one conversation (vote, cot+cap: `config.n` > 1) decode together, as the
sequences of a shared context (`_Shared`: one per context of the pool, made on first use on that
context's model, so no extra copy of the weights, with its `THREADS` threads). The prompt is
evaluated once and its cells shared by the N sequences (`kv_unified`); then each step decodes one
token of every sample still writing in one `llama_decode`, and each sample chooses its token with
its own seeded generator and stops by the same rules (`base.Follower`). A step reads the weights
once for all its rows: on one thread a step of 8 rows took 2.3x a step of one, not 8x. The samples
are split in as many groups as contexts, decoded at once in a thread each (one context with two
threads for all 8 was 2.7x slower than with one on a 2-CPU machine busy with other processes:
each step waits for the slower thread), and a conversation's groups never hold another's samples.
The prompt of a conversation split in several groups is evaluated once, by the context of its
first group, which may borrow the threads of the others while they wait for it (`_PromptThreads`;
the prompt is most of a vote's work that is not decoding: 0.7-0.9 s of ~400 tokens on one
thread), and its cells are copied to the contexts of its other groups (`_Prompt`; a few
milliseconds). A sample's numbers in a batch differ from those of the same sample decoded alone in the last digits
(batched matrix products, attention sums over cells shared with other rows; flash attention would
avoid the latter but made a step of 8 rows 2x slower), so a sample may differ from the one a
single-sample call with its seed draws (late in a program, when two tokens are close), N greedy
samples of one prompt may differ in their log-probs, and the samples depend on the number of
contexts; a rerun with the same settings and contexts draws the same samples.

One sample per conversation (greedy; a batch of items) decodes as it does alone, in a small pool of
contexts (each a `Llama` on the same file, with `THREADS` threads), one sample per context at a
time, `contexts` of them at once (llama.cpp releases the GIL while it decodes), so an item's
program does not depend on the batch it is in. The prompt is rendered with the chat template
stored in the GGUF and each context keeps its evaluated tokens (a shared one its last prompt): a
sample takes the free context whose last prompt shares most with its own, so a repair turn that
extends a conversation only evaluates what differs. A lone sample's prompt may borrow the threads
of the idle contexts (`_PromptThreads`: a greedy item 2.0 s instead of 2.4 s on an idle 2-CPU VM).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cap_app.backends.base import (
    AnyEvent,
    BackendError,
    Follower,
    Generation,
    PromptSize,
    RowSampler,
    Token,
    follow,
    sample_seeds,
)

# The most tokens a context holds (prompt and program): the model's trained context up to this. Every
# context's cells are allocated when it is made (23 KB a token for the offline default, 190 MB at
# 8,192), and 8,192 holds the page's longest question and draft (12,000 characters: ~6,000 tokens
# of prose with numbers) with a program; a longer prompt gets a smaller budget (`fit_to_context`).
MOST_CONTEXT_TOKENS = 8192
FALLBACK_CONTEXT_TOKENS = 4096  # a GGUF file that does not say its context length
# Threads of each context, for decoding and for the prompt: llama-cpp-python's default for decoding
# (half the logical CPUs, about the physical cores). Its default for the prompt, every logical CPU,
# made the prompt 5x slower on a 2-CPU machine where another process held one (measured: 400
# tokens in 1.1 s vs 5-7 s); a prompt borrows the pool's idle threads only while that is measured
# to be faster (`_PromptThreads`).
THREADS = max(1, (os.cpu_count() or 2) // 2)
TOP_CANDIDATES = 64  # top-p looks here first; a full sort of the vocabulary only when they are not enough
SEQUENCES = 16  # most rows the shared context decodes together (fewer when their tokens do not fit)
PROMPT_BATCH = 512  # most prompt tokens in one llama_decode of the shared context


def default_contexts() -> int:
    """$CAP_LLAMA_CONTEXTS, else as many contexts as `THREADS` fit in the CPUs (2 on a 2-CPU machine)."""
    value = os.environ.get("CAP_LLAMA_CONTEXTS")
    if value is None:
        return max(1, (os.cpu_count() or 2) // THREADS)
    if not value.isdigit() or int(value) < 1:
        raise BackendError(f"CAP_LLAMA_CONTEXTS='{value}' is not a number of contexts (1 or more)")
    return int(value)


@dataclasses.dataclass(eq=False)
class _Context:
    """One llama.cpp context; its lock is held while a sample decodes in it (and by `_close`)."""

    llm: Any
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    prompt: str = ""  # the prompt text its kept tokens start with


@dataclasses.dataclass(eq=False)
class _Shared:
    """A context that decodes several rows together, one sequence per row, all in one cache of
    `context_tokens` cells (`kv_unified`: a prompt copied to N sequences is stored once). Between
    calls it keeps the tokens of sequence 0 (its last group's first prompt) and nothing else."""

    ctx: Any  # llama_cpp._internals.LlamaContext
    batch: Any  # llama_cpp._internals.LlamaBatch: token, pos, seq_id, logits per entry
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    kept: list[int] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        self.ctx.close()
        self.batch.close()


class _PromptThreads:
    """How many threads a prompt gets when other threads of the pool are idle: its own or all
    it may borrow, whichever evaluated prompts faster lately (seconds per token, a running mean).
    The other is tried again after `RETRY` prompts, and after twice as many each time it is still
    slower (up to `MOST_RETRY`), so a steady machine rarely pays for the trial. Borrowing pays on
    an idle machine (a greedy item 2.0 s instead of 2.4 s) and costs where another process holds
    a CPU (2.4 -> 3.5 s: every op waits for the thread sharing that CPU); only timing tells the
    two apart, in a container too. ggml's numbers are the same with any number of threads, so the
    choice changes no sample."""

    RETRY, MOST_RETRY = 8, 64
    MIN_TOKENS = 32  # shorter prompts (a repair turn's new part) time too noisily to count

    def __init__(self):
        self.lock = threading.Lock()
        self.cost: dict[int, float] = {}  # threads -> seconds per prompt token
        self.since_trial, self.retry = 0, self.RETRY
        self.trial: int | None = None  # the threads being tried again

    def choose(self, most: int) -> int:
        if most <= THREADS:
            return THREADS
        with self.lock:
            if THREADS not in self.cost:  # its own threads first: a context's first prompt is slower
                return THREADS
            if most not in self.cost:
                return most
            best, other = sorted((THREADS, most), key=self.cost.__getitem__)
            self.since_trial += 1
            if self.since_trial < self.retry:
                return best
            self.since_trial, self.trial = 0, other
            return other

    @contextlib.contextmanager
    def evaluating(self, ctx, threads: int, tokens: int):
        """`ctx` (a llama_context) evaluates `tokens` prompt tokens with `threads` threads in the
        block, timed for `choose`; its own threads again after."""
        from llama_cpp import llama_cpp as library

        library.llama_set_n_threads(ctx, THREADS, threads)
        started = time.perf_counter()
        try:
            yield
        finally:
            library.llama_set_n_threads(ctx, THREADS, THREADS)
        self.record(threads, tokens, time.perf_counter() - started)

    def record(self, threads: int, tokens: int, seconds: float) -> None:
        if tokens < self.MIN_TOKENS:
            return
        with self.lock:
            cost = seconds / tokens
            self.cost[threads] = cost if threads not in self.cost else (self.cost[threads] + cost) / 2
            if threads == self.trial:
                slower = any(c < self.cost[threads] for t, c in self.cost.items() if t != threads)
                self.retry = min(2 * self.retry, self.MOST_RETRY) if slower else self.RETRY
                self.trial = None


@dataclasses.dataclass(eq=False)
class _Prompt:
    """A conversation's prompt, evaluated by the context that decodes its first group (the lead)
    and copied from there into the contexts of its `copies` other groups."""

    tokens: list[int]
    copies: int = 0
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)  # set when the lead is done, or failed
    cells: bytes | None = None  # sequence 0 of the lead's context once the prompt is in it
    first: np.ndarray | None = None  # the logits after the prompt's last token

    def wait(self, cancel) -> bool:
        """Wait for the lead; False when `cancel` is set first."""
        while not self.ready.wait(0.05):
            if cancel.is_set():
                return False
        return True


def from_settings(model_cfg, backend_cfg) -> LlamaCppBackend:
    """The registry's factory: the settings' .gguf file, merged once with their adapter (if any)."""
    from cap_app.models.loading import resolve_source

    source = resolve_source(model_cfg)
    path = Path(source.path).expanduser()
    if path.suffix != ".gguf":
        raise BackendError(
            f"the llama.cpp backend needs a .gguf model file; '{source.name}' is not one "
            "(use --backend transformers, or write one with `python -m cap_app gguf`)"
        )
    if not path.is_file():
        raise BackendError(f"model '{source.name}' not found: no such file")
    name = source.name
    if source.adapter:
        from cap_app.models.gguf import ExportError, cached_export

        try:
            path = cached_export(path, source.adapter)
        except ExportError as error:
            raise BackendError(f"cannot merge adapter '{source.adapter}' for llama.cpp: {error}") from None
        name += f" + {Path(source.adapter).name}"
    return LlamaCppBackend(path, name=name, contexts=backend_cfg.contexts)


class LlamaCppBackend(RowSampler):
    name = "llama.cpp"

    def __init__(self, path: str | Path, *, name: str, contexts: int | None = None):
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise BackendError(
                "the llama.cpp backend needs llama-cpp-python: "
                "pip install -r requirements.txt (it builds from source, ~7 min)"
            ) from None
        self.display_name = name
        self.concurrency = contexts or default_contexts()  # RowSampler runs this many rows at once
        self.context_tokens = context_tokens(path)

        def load():
            with weight_repacking(not cpu_has_amx()):
                return llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self.context_tokens,
                    n_threads=THREADS,
                    n_threads_batch=THREADS,
                    verbose=False,
                )

        try:
            self.contexts = [_Context(load()) for _ in range(self.concurrency)]
        except (ValueError, RuntimeError) as error:
            raise BackendError(f"llama.cpp could not load '{path}': {str(error).splitlines()[0]}") from None
        llm = self.contexts[0].llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"'{path}' has no chat template in its metadata; the llama.cpp backend needs one")
        self.formatter = Jinja2ChatFormatter(
            template, eos_token=_token_text(llm, llm.token_eos()), bos_token=_token_text(llm, llm.token_bos())
        )
        self.is_eog = llama_cpp.llama_vocab_is_eog  # end of turn or text
        self.free = list(self.contexts)
        self.available = threading.Condition()  # guards `free` and `holding`
        self.holding = 0  # threads of the decodes running now (a pool sample, a vote's contexts)
        self.prompt_threads = _PromptThreads()
        self.closing = threading.Event()
        self.shared: list[_Shared] = []  # one per context, made when a call first has several rows
        self.making = threading.Lock()  # held while the shared contexts are made, and by `_close`
        # Free the models with this backend, or at exit while llama.cpp's library is still loaded
        # (Llama.__del__ during interpreter shutdown fails with a traceback).
        self._finalizer = weakref.finalize(self, _close, self.contexts, self.closing, self.shared, self.making)

    @property
    def description(self) -> str:
        return self.display_name

    def close(self) -> None:
        """Free every context now, each once no sample decodes in it (also done at exit)."""
        self._finalizer()

    def prompt_size(self, conversation) -> PromptSize:
        return PromptSize(len(self.prompt_tokens(conversation)), self.context_tokens)

    def prompt_tokens(self, conversation) -> list[int]:
        """The tokens a sample of `conversation` evaluates. Tokenizing reads the model's vocabulary
        only: `making` keeps the models from being freed meanwhile, and no context's lock is waited
        for (one may be decoding another visitor's program)."""
        with self.making:
            if self.closing.is_set():
                raise BackendError("the llama.cpp backend was closed")
            return _tokenize(self.contexts[0].llm, self.formatter(messages=conversation).prompt)

    def _check_fits(self, prompt_tokens: int, config) -> None:
        """The engine fits "Max new tokens" to the context first (`fit_to_context`); a caller that
        did not is refused here rather than cut off mid-program by llama.cpp."""
        if prompt_tokens + config.max_new_tokens > self.context_tokens:
            raise BackendError(
                f"the prompt ({prompt_tokens:,} tokens) and {config.max_new_tokens} new tokens "
                f"exceed the model's context of {self.context_tokens:,} tokens"
            )

    def _run(self, conversations, config, cancel, emit) -> list[Generation]:
        """The samples of one conversation decode together in the shared contexts; one sample per
        conversation (greedy, a batch of items) each in a context of the pool, as alone."""
        if config.n == 1:
            return super()._run(conversations, config, cancel, emit)
        shared = self._shared_contexts()
        prompts = [self.prompt_tokens(c) for c in conversations]
        for tokens in prompts:
            self._check_fits(len(tokens), config)
        rows = sample_seeds(conversations, config)
        # Each conversation's rows in as many groups as shared contexts (more where they do not fit
        # one), never with another conversation's: its samples do not depend on the others'. The
        # contexts decode their groups (g, g + workers, ...) at once, each in its own thread. A
        # conversation's first group evaluates its prompt (the lead), its others copy it; a lead
        # comes before its copies in every worker's order, so no worker waits for a later group.
        most = -(-config.n // len(shared))
        groups = []
        for index, tokens in enumerate(prompts):
            split = _groups(len(tokens), config, self.context_tokens, most)
            prompt = _Prompt(tokens, copies=len(split) - 1)
            groups += [(prompt, [index * config.n + row for row in group], i == 0) for i, group in enumerate(split)]
        workers = min(len(shared), len(groups))
        # the lead of a lone conversation evaluates its prompt with its copies' threads (they wait
        # for it) and any other idle ones
        spare = self._hold(THREADS * workers)
        prompt_threads = self.prompt_threads.choose(THREADS * workers + spare if len(prompts) == 1 else THREADS)
        failed = threading.Event()
        watched = AnyEvent(failed, cancel)

        def decode(worker: int) -> list[list[Generation]]:
            generations = []
            for prompt, group, lead in groups[worker::workers]:
                if watched.is_set() or not (lead or prompt.wait(watched)):  # the groups after a cancel do not start
                    if lead:
                        prompt.ready.set()
                    generations.append(_cancelled(prompt, group))
                    continue
                with shared[worker].lock:
                    if self.closing.is_set():
                        raise BackendError("the llama.cpp backend was closed")
                    llm = self.contexts[worker].llm  # the model of that shared context
                    seeded = [(row, rows[row][1]) for row in group]
                    try:
                        first = self._take_prompt(shared[worker], llm, prompt, lead, prompt_threads, watched)
                    except _Cancelled:
                        generations.append(_cancelled(prompt, group))
                        continue
                    finally:
                        if lead:
                            prompt.ready.set()  # also when it failed: the copies then evaluate it themselves
                    generations.append(
                        self._decode_together(shared[worker], llm, prompt.tokens, first, seeded, config, watched, emit)
                    )
            return generations

        try:
            if workers == 1:
                done = [decode(0)]
            else:
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"cap-{self.name}")
                try:
                    done = list(pool.map(decode, range(workers)))
                except BaseException:
                    failed.set()  # the other groups stop at their next token
                    raise
                finally:
                    pool.shutdown(cancel_futures=True)
        finally:
            self._hold(-THREADS * workers)
        # back in the rows' order: group g is the (g // workers)-th of worker g % workers
        return [g for index in range(len(groups)) for g in done[index % workers][index // workers]]

    def _shared_contexts(self) -> list[_Shared]:
        """The shared contexts, one per context of the pool on its model, made on first use (`making`
        held, which `_close` takes before it frees the models, so it cannot free one meanwhile)."""
        with self.making:
            if self.closing.is_set():
                raise BackendError("the llama.cpp backend was closed")
            if not self.shared:
                from llama_cpp import _internals

                for context in self.contexts:
                    llm = context.llm
                    params = type(llm.context_params).from_buffer_copy(llm.context_params)
                    params.n_seq_max = SEQUENCES
                    params.kv_unified = True
                    # (Flash attention would make a row's numbers independent of where its cells lie
                    # among the other rows', but made a step of 8 rows 2x slower on a CPU.)
                    params.n_batch = params.n_ubatch = PROMPT_BATCH
                    try:
                        ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
                    except ValueError as error:
                        raise BackendError(f"llama.cpp could not make a context for several rows: {error}") from None
                    batch = _internals.LlamaBatch(
                        n_tokens=max(PROMPT_BATCH, SEQUENCES), embd=0, n_seq_max=1, verbose=False
                    )
                    self.shared.append(_Shared(ctx, batch))
            return self.shared

    def _take_prompt(self, shared: _Shared, llm, prompt: _Prompt, lead: bool, threads: int, cancel) -> np.ndarray:
        """Sequence 0 of `shared` holding `prompt`, evaluated (the lead, or another group whose lead
        failed) or copied from the lead; the logits after its last token. _Cancelled when `cancel`
        is set between two of its batches (Stop during a long prompt)."""
        from llama_cpp import llama_cpp as library

        ctx, memory = shared.ctx.ctx, shared.ctx.memory
        tokens, kept, shared.kept = prompt.tokens, shared.kept, []  # unknown until the call ends well
        try:
            if not lead and prompt.cells is not None:
                library.llama_memory_clear(memory, True)
                cells = (ctypes.c_uint8 * len(prompt.cells)).from_buffer_copy(prompt.cells)
                if library.llama_state_seq_set_data(ctx, cells, len(prompt.cells), 0) == 0:
                    raise BackendError("llama.cpp could not copy the prompt's cells into another context")
                return prompt.first
            # From what it shares with the kept prompt; the last token on its own, as a single row's
            # (evaluated in a batch its logits differ in the last digits).
            same = _common_prefix(kept, tokens, len(tokens) - 1)
            library.llama_memory_seq_rm(memory, 0, same, -1)
            with self.prompt_threads.evaluating(ctx, threads, len(tokens) - 1 - same):
                for start in range(same, len(tokens) - 1, PROMPT_BATCH):
                    if cancel.is_set():
                        raise _Cancelled
                    chunk = tokens[start : min(start + PROMPT_BATCH, len(tokens) - 1)]
                    self._step(shared, [(token, start + i, 0) for i, token in enumerate(chunk)], outputs=False)
            self._step(shared, [(tokens[-1], len(tokens) - 1, 0)])
            first = _logits(library, ctx, 0, llm.n_vocab())
            if lead and prompt.copies:
                cells = (ctypes.c_uint8 * library.llama_state_seq_get_size(ctx, 0))()
                written = library.llama_state_seq_get_data(ctx, cells, len(cells), 0)
                prompt.cells, prompt.first = bytes(cells)[:written], first
            return first
        except BaseException:
            library.llama_memory_clear(memory, True)
            raise

    def _decode_together(self, shared: _Shared, llm, prompt, first, rows, config, cancel, emit) -> list[Generation]:
        """`rows` ((row, seed), row i in sequence i) of `prompt`, in sequence 0 of `shared` with
        `first` the logits after it, decoded in step until each stops."""
        from llama_cpp import llama_cpp as library

        ctx, memory = shared.ctx.ctx, shared.ctx.memory
        n_vocab, vocab = llm.n_vocab(), llm._model.vocab
        try:
            for seq in range(1, len(rows)):  # the other rows share its cells
                library.llama_memory_seq_cp(memory, 0, seq, -1, -1)

            followers = [
                Follower(
                    config,
                    prompt_tokens=len(prompt),
                    cancel=cancel,
                    emit=None if emit is None else (lambda text, count, row=row: emit(row, text, count)),
                )
                for row, _ in rows
            ]
            rngs = [np.random.default_rng(seed) for _, seed in rows]
            texts = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in rows]
            logits = dict.fromkeys(range(len(rows)), first)
            live = list(range(len(rows)))
            while live:
                if self.closing.is_set():
                    raise BackendError("the llama.cpp backend was closed")
                step = []
                for seq in live:
                    token, logprob = _choose(logits[seq], config, rngs[seq])
                    if library.llama_vocab_is_eog(vocab, token):
                        followers[seq].add(Token("", logprob, id=token, eos=True))
                        continue
                    piece = texts[seq].decode(llm.detokenize([token]))
                    if not followers[seq].add(Token(piece, logprob, id=token)):
                        step.append((token, len(prompt) + followers[seq].count - 1, seq))
                if step:
                    self._step(shared, step)
                    logits = {seq: _logits(library, ctx, i, n_vocab) for i, (_, _, seq) in enumerate(step)}
                live = [seq for _, _, seq in step]
        except BaseException:
            library.llama_memory_clear(memory, True)
            raise
        # keep the prompt in sequence 0, for the next call's to start from
        for seq in range(1, len(rows)):
            library.llama_memory_seq_rm(memory, seq, -1, -1)
        library.llama_memory_seq_rm(memory, 0, len(prompt), -1)
        shared.kept = prompt
        return [follower.generation() for follower in followers]

    @staticmethod
    def _step(shared: _Shared, entries: list[tuple[int, int, int]], *, outputs: bool = True) -> None:
        """One llama_decode of (token, position, sequence) entries; logits of each entry, or of the last only."""
        from llama_cpp import llama_cpp as library

        batch = shared.batch.batch
        batch.n_tokens = len(entries)
        for i, (token, position, seq) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = token, position, 1, seq
            batch.logits[i] = outputs
        batch.logits[len(entries) - 1] = True
        if (code := library.llama_decode(shared.ctx.ctx, batch)) != 0:
            raise BackendError(f"llama.cpp could not decode the rows together (llama_decode returned {code})")

    def sample(self, conversation, config, seed, cancel, emit):
        prompt = self.formatter(messages=conversation).prompt
        context = self._take(prompt)
        spare = self._hold(THREADS)
        try:
            with self._holding(context) as llm:
                tokens = _tokenize(llm, prompt)
                self._check_fits(len(tokens), config)
                context.prompt = prompt
                return follow(
                    self._decode(llm, tokens, config, seed, self.prompt_threads.choose(THREADS + spare), cancel),
                    config,
                    prompt_tokens=len(tokens),
                    cancel=cancel,
                    emit=emit,
                )
        finally:
            self._hold(-THREADS)
            with self.available:
                self.free.append(context)
                self.available.notify()

    def _hold(self, threads: int) -> int:
        """Count `threads` more (or fewer) as held by decodes; the pool's threads none holds now,
        which a prompt may borrow (ggml's numbers do not depend on the number of threads)."""
        with self.available:
            self.holding += threads
            return max(0, THREADS * len(self.contexts) - self.holding)

    @contextlib.contextmanager
    def _holding(self, context: _Context):
        """The context's model, its lock held; refused once the backend closes (the model may be freed)."""
        with context.lock:
            if self.closing.is_set():
                raise BackendError("the llama.cpp backend was closed")
            yield context.llm

    def _take(self, prompt: str) -> _Context:
        """A free context, waiting for one; of those free, the one whose kept prompt shares most with
        `prompt` (a repair turn extends its draft's conversation: only what differs is evaluated)."""
        with self.available:
            self.available.wait_for(lambda: self.free)
            context = max(self.free, key=lambda c: len(os.path.commonprefix([c.prompt, prompt])))
            self.free.remove(context)
            return context

    def _decode(
        self, llm, prompt: list[int], config, seed: int | None, prompt_threads: int, cancel=None
    ) -> Iterator[Token]:
        """Tokens after `prompt`, one per step, until the caller stops reading (follow decides); the
        prompt evaluated with `prompt_threads` threads, none when `cancel` is set before its end."""
        # tokens of the context already holding this prompt's prefix (at least the last is redone for its logits)
        kept = 0
        while kept < min(llm.n_tokens, len(prompt) - 1) and llm.input_ids[kept] == prompt[kept]:
            kept += 1
        llm.n_tokens = kept
        # The last token on its own, always: evaluated in a batch its logits differ in the last digits,
        # and a sample's tokens and log-probs would depend on whether its context had the prompt already.
        try:
            with self.prompt_threads.evaluating(llm._ctx.ctx, prompt_threads, len(prompt) - 1 - kept):
                # in llama.cpp's own batches (as one eval of it splits it: the same numbers), so that
                # Stop during a long prompt (seconds a batch on a CPU) takes effect at the next batch
                for start in range(kept, len(prompt) - 1, llm.n_batch):
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled
                    llm.eval(prompt[start : min(start + llm.n_batch, len(prompt) - 1)])
        except _Cancelled:
            return  # untimed: a prompt stopped half-way tells nothing of what a prompt costs
        llm.eval(prompt[-1:])
        rng = np.random.default_rng(seed)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n_vocab, vocab = llm.n_vocab(), llm._model.vocab
        while not self.closing.is_set():
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
            token, logprob = _choose(logits, config, rng)
            if self.is_eog(vocab, token):
                yield Token("", logprob, id=token, eos=True)
                return
            piece = text.decode(llm.detokenize([token]))
            yield Token(piece, logprob, id=token)
            llm.eval([token])
        raise BackendError("the llama.cpp backend was closed")  # not a program cut off at a made-up limit


class _Cancelled(Exception):
    """Stop while a prompt was being evaluated: raised between its batches (not timed, not kept)."""


def _cancelled(prompt: _Prompt, group: list[int]) -> list[Generation]:
    """The generations of a group that a cancel stopped before it wrote anything."""
    return [Generation("", len(prompt.tokens), new_tokens=0, mean_logprob=None, finish="cancelled") for _ in group]


def _token_text(llm, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def context_tokens(path: str | Path) -> int:
    """The context of each of the model's contexts: the length it was trained for (its GGUF
    metadata, read without loading the weights), at most MOST_CONTEXT_TOKENS."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
        architecture = fields["general.architecture"].contents()
        trained = int(fields[f"{architecture}.context_length"].contents())
    except (KeyError, ValueError, OSError):
        return FALLBACK_CONTEXT_TOKENS
    return max(1, min(trained, MOST_CONTEXT_TOKENS))


def _groups(prompt_tokens: int, config, context: int, most: int = SEQUENCES) -> list[list[int]]:
    """The `config.n` rows of one prompt in groups a shared context holds at once (at most `most`
    and `SEQUENCES` rows, the prompt and `max_new_tokens` per row within its `context` cells), as
    even as can be."""
    fit = max(1, min(most, SEQUENCES, (context - prompt_tokens) // config.max_new_tokens))
    count = -(-config.n // fit)
    size, extra = divmod(config.n, count)
    groups, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        groups.append(list(range(start, end)))
        start = end
    return groups


def _common_prefix(a: list[int], b: list[int], most: int) -> int:
    same = 0
    while same < min(len(a), len(b), most) and a[same] == b[same]:
        same += 1
    return same


def _logits(library, ctx, i: int, n_vocab: int) -> np.ndarray:
    """The logits of the i-th output of the last decode (a copy: the next decode overwrites them)."""
    return np.ctypeslib.as_array(library.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).astype(np.float64)


def _choose(logits: np.ndarray, config, rng: np.random.Generator) -> tuple[int, float]:
    """The next token (greedy, or drawn with `rng`) and its log-prob under the untempered distribution."""
    logits = logits.astype(np.float64, copy=False)
    logprobs = logits - logits.max()
    logprobs -= np.log(np.exp(logprobs).sum())
    token = int(np.argmax(logits)) if config.temperature == 0 else _draw(logits, config, rng)
    return token, float(logprobs[token])


def cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def weight_repacking(enabled: bool):
    """Load with or without llama.cpp's extra weight buffers (repacked for AMX / AVX kernels).

    On CPUs with AMX (Intel Sapphire Rapids and later, common in clouds) llama.cpp with its extra
    weight buffers crashes the process (SIGSEGV) on the first prompt of more than one token, for
    Q4_1, q8_0 and q4_0 (f16 is spared), also when built without AMX (`-DGGML_AMX_*=OFF`): the
    repacked weights themselves, not only the AMX kernels (cf. llama.cpp#20824). Decoding without
    them measured the same speed there (42-44 tokens/s on one thread). llama-cpp-python has no
    constructor option for `use_extra_bufts`, so its default model parameters are wrapped while
    the model loads."""
    if enabled:
        yield
        return
    from llama_cpp import llama_cpp as library

    default = library.llama_model_default_params

    def without_repacking():
        params = default()
        params.use_extra_bufts = False
        return params

    library.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        library.llama_model_default_params = default


def _close(contexts: list[_Context], closing: threading.Event, shared: list[_Shared], making: threading.Lock) -> None:
    """Free each context only once no thread decodes in it. A stream abandoned mid-program (a
    visitor gone, Ctrl-C, a script that read one chunk) leaves its sampling thread running; freeing
    the context under it at exit crashed the process (SIGSEGV). The shared contexts go first: each
    runs on the model of a context of the pool."""
    closing.set()  # a decoding thread stops at its next token, a waiting sample does not start...
    with making:  # none is being made; none will be
        for each in shared:
            with each.lock:
                each.close()
    for context in contexts:
        with context.lock:  # ...and lets go of its context
            context.llm.close()


def _draw(logits: np.ndarray, config, rng: np.random.Generator) -> int:
    """A token drawn with temperature and nucleus (top-p) sampling."""
    scaled = logits / config.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    top = (
        np.argpartition(probs, -TOP_CANDIDATES)[-TOP_CANDIDATES:]
        if len(probs) > TOP_CANDIDATES
        else np.arange(len(probs))
    )
    order = top[np.argsort(probs[top])[::-1]]
    if probs[order].sum() < config.top_p:  # a flat distribution: the nucleus is wider than the candidates
        order = np.argsort(probs)[::-1]
    mass = np.cumsum(probs[order])
    nucleus = order[: int(np.searchsorted(mass, config.top_p)) + 1]
    kept = probs[nucleus] / probs[nucleus].sum()
    return int(rng.choice(nucleus, p=kept))
