"""The `llama.cpp` backend: a GGUF model run in-process by llama-cpp-python, 5-7x faster than
transformers on a CPU (benchmarks/README.md).

llama.cpp evaluates the tokens; the choice of each next token is made here, in numpy, from the
logits of the last one, because the engine needs what llama.cpp's own sampler does not give: the
chosen token's log-prob under the model's untempered distribution (vote tie-breaks, as
transformers' `_LogprobRecorder` records it) and a seeded generator per sample, so a rerun draws
the same programs.

Several rows in one call (the N samples of a vote or cot+cap, the items of a batch) decode
together, as the sequences of one shared context (`_Shared`, made on first use on the first
context's model: no extra copy of the weights): its prompts are evaluated once (the N samples of
one prompt share its cells), then each step decodes one token of every row still writing in one
`llama_decode`, with every CPU (`_shared_threads`), and each row chooses its token with its own
seeded generator and stops by the same rules (`base.Follower`). A batched step reads the weights
once for all its rows, so a vote N=8 costs a few single-stream steps per token, not eight. The
numbers of a row decoded in a batch differ from those of the same row decoded alone in the last
digits, so a sample may differ from the one a single-row call with its seed draws (after a few
dozen tokens, when two candidates are close); a rerun with the same rows, seed and settings draws
the same samples. The rows that do not fit the shared context together (prompts plus
`max_new_tokens` each) decode in successive groups.

A single row decodes in a small pool of contexts (each a `Llama` on the same file, with
`THREADS` threads), one row per context at a time (`concurrency` of them at once: llama.cpp
releases the GIL while it decodes, and the app may sample for two visitors). The prompt is
rendered with the chat template stored in the GGUF and each context keeps its evaluated tokens
(the shared context its first row's prompt): a row takes the free context whose last prompt
shares most with its own, so a repair turn that extends a conversation only evaluates what
differs.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cap_app.backends.base import BackendError, Follower, RowSampler, Token, follow, sample_seeds
from cap_app.generate import Generation

CONTEXT_TOKENS = 4096  # a CaP prompt (~400 tokens) plus a program and two repair rounds
# Threads for decoding and for the prompt: llama-cpp-python's default for decoding (half the
# logical CPUs, about the physical cores), for the prompt too. Its default there, every logical CPU,
# makes the prompt 5x slower on a 2-CPU machine where another process holds one (measured:
# 400 tokens in 1.1 s vs 5-7 s), and a free Space or a laptop is rarely idle.
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
    """The context that decodes several rows together, one sequence per row, all in one cache of
    `CONTEXT_TOKENS` cells (`kv_unified`: a prompt copied to N sequences is stored once). Between
    calls it keeps the tokens of sequence 0 (its last call's first prompt) and nothing else."""

    ctx: Any  # llama_cpp._internals.LlamaContext
    batch: Any  # llama_cpp._internals.LlamaBatch: token, pos, seq_id, logits per entry
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    kept: list[int] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        self.ctx.close()
        self.batch.close()


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

        def load():
            with _weight_repacking(not _cpu_has_amx()):
                return llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=CONTEXT_TOKENS,
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
        self.available = threading.Condition()  # guards `free`
        self.closing = threading.Event()
        self.shared: list[_Shared] = []  # the shared context, once a call has several rows
        self.making = threading.Lock()  # held while the shared context is made
        # Free the models with this backend, or at exit while llama.cpp's library is still loaded
        # (Llama.__del__ during interpreter shutdown fails with a traceback).
        self._finalizer = weakref.finalize(self, _close, self.contexts, self.closing, self.shared, self.making)

    @property
    def description(self) -> str:
        return self.display_name

    def close(self) -> None:
        """Free every context now, each once no sample decodes in it (also done at exit)."""
        self._finalizer()

    def prompt_tokens(self, conversation) -> list[int]:
        """The tokens a sample of `conversation` evaluates."""
        with self._holding(self.contexts[0]) as llm:
            return _tokenize(llm, self.formatter(messages=conversation).prompt)

    def _run(self, conversations, config, cancel, emit) -> list[Generation]:
        """Several rows decode together in the shared context; one row in a context of the pool."""
        rows = sample_seeds(conversations, config)
        if len(rows) == 1:
            return super()._run(conversations, config, cancel, emit)
        shared = self._shared_context()
        with shared.lock:
            if self.closing.is_set():
                raise BackendError("the llama.cpp backend was closed")
            llm = self.contexts[0].llm  # its model, freed only after this lock (`_close`)
            prompts: dict[int, list[int]] = {}  # per conversation (the rows of one share its list)
            for conversation, _ in rows:
                if id(conversation) not in prompts:
                    tokens = _tokenize(llm, self.formatter(messages=conversation).prompt)
                    _check_fits(len(tokens), config)
                    prompts[id(conversation)] = tokens
            tokens = [prompts[id(conversation)] for conversation, _ in rows]
            generations: list[Generation] = []
            for group in _groups(tokens, config):
                if cancel is not None and cancel.is_set():  # the groups after a cancel do not start
                    generations += [
                        Generation(text="", prompt_tokens=len(tokens[row]), new_tokens=0, finish="cancelled")
                        for row in group
                    ]
                    continue
                generations += self._decode_together(
                    shared, llm, [(row, tokens[row], rows[row][1]) for row in group], config, cancel, emit
                )
            return generations

    def _shared_context(self) -> _Shared:
        """The shared context, made on first use on the first context's model (`making` held, which
        `_close` takes before it frees the models, so it cannot free that one meanwhile)."""
        with self.making:
            if self.closing.is_set():
                raise BackendError("the llama.cpp backend was closed")
            if not self.shared:
                from llama_cpp import _internals
                from llama_cpp import llama_cpp as library

                llm = self.contexts[0].llm
                params = type(llm.context_params).from_buffer_copy(llm.context_params)
                params.n_seq_max = SEQUENCES
                params.kv_unified = True
                # Flash attention reads a row's own cells in order, skipping the others': its numbers
                # do not depend on where its cells lie among the other rows' (the default attention's
                # sums do, in the last digits), so N greedy rows of one prompt are the same to the bit.
                params.flash_attn_type = library.LLAMA_FLASH_ATTN_TYPE_ENABLED
                params.n_batch = params.n_ubatch = PROMPT_BATCH
                params.n_threads = params.n_threads_batch = _shared_threads(self.concurrency)
                try:
                    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
                except ValueError as error:
                    raise BackendError(f"llama.cpp could not make a context for several rows: {error}") from None
                batch = _internals.LlamaBatch(n_tokens=max(PROMPT_BATCH, SEQUENCES), embd=0, n_seq_max=1, verbose=False)
                self.shared.append(_Shared(ctx, batch))
            return self.shared[0]

    def _decode_together(self, shared: _Shared, llm, rows, config, cancel, emit) -> list[Generation]:
        """`rows` ((row, prompt tokens, seed); row i in sequence i) decoded in step until each stops."""
        from llama_cpp import llama_cpp as library

        ctx, memory = shared.ctx.ctx, shared.ctx.memory
        n_vocab, vocab = llm.n_vocab(), llm._model.vocab
        kept, shared.kept = shared.kept, []  # unknown until this call ends well
        owners: dict[int, int] = {}  # prompt (its list's id) -> the sequence that evaluates it
        for seq, (_, tokens, _) in enumerate(rows):
            owners.setdefault(id(tokens), seq)
        try:
            # Each prompt reuses what it shares with the kept one (copied from sequence 0 before
            # sequence 0 lets go of what its own prompt does not share), the last token redone.
            pending = []
            for seq in sorted(owners.values(), reverse=True):  # sequence 0 last
                tokens = rows[seq][1]
                same = _common_prefix(kept, tokens, len(tokens) - 1)
                if seq == 0:
                    library.llama_memory_seq_rm(memory, 0, same, -1)
                elif same:
                    library.llama_memory_seq_cp(memory, 0, seq, 0, same)
                pending += [(token, same + i, seq) for i, token in enumerate(tokens[same:-1])]
            for start in range(0, len(pending), PROMPT_BATCH):
                self._step(shared, pending[start : start + PROMPT_BATCH], outputs=False)
            # The last token of each prompt: alone when there is one prompt, as a single row's is
            # (evaluated in a batch its logits differ in the last digits).
            self._step(shared, [(rows[seq][1][-1], len(rows[seq][1]) - 1, seq) for seq in sorted(owners.values())])
            first = {seq: _logits(library, ctx, i, n_vocab) for i, seq in enumerate(sorted(owners.values()))}
            for seq, (_, tokens, _) in enumerate(rows):
                if owners[id(tokens)] != seq:
                    library.llama_memory_seq_cp(memory, owners[id(tokens)], seq, -1, -1)

            followers = [
                Follower(
                    config,
                    prompt_tokens=len(tokens),
                    cancel=cancel,
                    emit=None if emit is None else (lambda text, count, row=row: emit(row, text, count)),
                )
                for row, tokens, _ in rows
            ]
            rngs = [np.random.default_rng(seed) for _, _, seed in rows]
            texts = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in rows]
            logits = {seq: first[owners[id(tokens)]] for seq, (_, tokens, _) in enumerate(rows)}
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
                        step.append((token, len(rows[seq][1]) + followers[seq].count - 1, seq))
                if step:
                    self._step(shared, step)
                    logits = {seq: _logits(library, ctx, i, n_vocab) for i, (_, _, seq) in enumerate(step)}
                live = [seq for _, _, seq in step]
        except BaseException:
            library.llama_memory_clear(memory, True)
            raise
        # keep the first prompt in sequence 0, for the next call's prompts to start from
        for seq in range(1, len(rows)):
            library.llama_memory_seq_rm(memory, seq, -1, -1)
        library.llama_memory_seq_rm(memory, 0, len(rows[0][1]), -1)
        shared.kept = rows[0][1]
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
        try:
            with self._holding(context) as llm:
                tokens = _tokenize(llm, prompt)
                _check_fits(len(tokens), config)
                context.prompt = prompt
                return follow(
                    self._decode(llm, tokens, config, seed),
                    config,
                    prompt_tokens=len(tokens),
                    cancel=cancel,
                    emit=emit,
                )
        finally:
            with self.available:
                self.free.append(context)
                self.available.notify()

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

    def _decode(self, llm, prompt: list[int], config, seed: int | None) -> Iterator[Token]:
        """Tokens after `prompt`, one per step, until the caller stops reading (follow decides)."""
        # tokens of the context already holding this prompt's prefix (at least the last is redone for its logits)
        kept = 0
        while kept < min(llm.n_tokens, len(prompt) - 1) and llm.input_ids[kept] == prompt[kept]:
            kept += 1
        llm.n_tokens = kept
        # The last token on its own, always: evaluated in a batch its logits differ in the last digits,
        # and a sample's tokens and log-probs would depend on whether its context had the prompt already.
        llm.eval(prompt[kept:-1])
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


def _token_text(llm, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _check_fits(prompt_tokens: int, config) -> None:
    if prompt_tokens + config.max_new_tokens > CONTEXT_TOKENS:
        raise BackendError(
            f"the prompt ({prompt_tokens} tokens) and --max-new-tokens {config.max_new_tokens} "
            f"exceed the llama.cpp context of {CONTEXT_TOKENS} tokens"
        )


def _groups(prompts: list[list[int]], config) -> Iterator[list[int]]:
    """The rows (indexes into `prompts`) in groups the shared context holds at once: at most
    `SEQUENCES`, and their prompts (each once) and `max_new_tokens` each within its cells."""
    group: list[int] = []
    cells = 0
    for row, tokens in enumerate(prompts):
        new = any(prompts[other] is tokens for other in group)
        need = config.max_new_tokens + (0 if new else len(tokens))
        if group and (len(group) == SEQUENCES or cells + need > CONTEXT_TOKENS):
            yield group
            group, cells, need = [], 0, config.max_new_tokens + len(tokens)
        group.append(row)
        cells += need
    if group:
        yield group


def _common_prefix(a: list[int], b: list[int], most: int) -> int:
    same = 0
    while same < min(len(a), len(b), most) and a[same] == b[same]:
        same += 1
    return same


def _shared_threads(contexts: int) -> int:
    """Threads of the shared context: those of the whole pool, within the CPUs."""
    return max(1, min(os.cpu_count() or 1, THREADS * contexts))


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


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _weight_repacking(enabled: bool):
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
    the context under it at exit crashed the process (SIGSEGV). The shared context goes first: it
    runs on the first context's model."""
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
