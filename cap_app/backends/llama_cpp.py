"""The `llama.cpp` backend: a GGUF model run in-process by llama-cpp-python, 5-7x faster than
transformers on a CPU (benchmarks/README.md).

llama.cpp evaluates the tokens; the choice of each next token is made here, in numpy, from the
logits of the last one, because the engine needs what llama.cpp's own sampler does not give: the
chosen token's log-prob under the model's untempered distribution (vote tie-breaks, as
transformers' `_LogprobRecorder` records it) and a seeded generator per sample, so a rerun draws
the same programs, whichever context decodes them.

Samples decode in a small pool of contexts (each a `Llama` on the same file, with `THREADS`
threads), one sample per context at a time: the N samples of a vote, or the items of a batch,
run `contexts` at once (llama.cpp releases the GIL while it decodes) where transformers batches
them. One context decoding one sequence left the second CPU of a 2-CPU machine idle (`THREADS`
is 1 there) and the vote N=8 only 1.8x faster than transformers; the default pool fills the
CPUs (`default_contexts`). The prompt is rendered with the chat template stored in the GGUF and
each context keeps its evaluated tokens: a sample takes the free context whose last prompt shares
most with its own, so the N samples of one prompt, and a repair turn that extends it, only
evaluate what differs.
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

from cap_app.backends.base import BackendError, RowSampler, Token, follow

CONTEXT_TOKENS = 4096  # a CaP prompt (~400 tokens) plus a program and two repair rounds
# Threads for decoding and for the prompt: llama-cpp-python's default for decoding (half the
# logical CPUs, about the physical cores), for the prompt too. Its default there, every logical CPU,
# makes the prompt 5x slower on a 2-CPU machine where another process holds one (measured:
# 400 tokens in 1.1 s vs 5-7 s), and a free Space or a laptop is rarely idle.
THREADS = max(1, (os.cpu_count() or 2) // 2)
TOP_CANDIDATES = 64  # top-p looks here first; a full sort of the vocabulary only when they are not enough


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
        # Free the models with this backend, or at exit while llama.cpp's library is still loaded
        # (Llama.__del__ during interpreter shutdown fails with a traceback).
        self._finalizer = weakref.finalize(self, _close, self.contexts, self.closing)

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

    def sample(self, conversation, config, seed, cancel, emit):
        prompt = self.formatter(messages=conversation).prompt
        context = self._take(prompt)
        try:
            with self._holding(context) as llm:
                tokens = _tokenize(llm, prompt)
                if len(tokens) + config.max_new_tokens > CONTEXT_TOKENS:
                    raise BackendError(
                        f"the prompt ({len(tokens)} tokens) and --max-new-tokens {config.max_new_tokens} "
                        f"exceed the llama.cpp context of {CONTEXT_TOKENS} tokens"
                    )
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
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).astype(np.float64)
            logprobs = logits - logits.max()
            logprobs -= np.log(np.exp(logprobs).sum())
            token = int(np.argmax(logits)) if config.temperature == 0 else _draw(logits, config, rng)
            if self.is_eog(vocab, token):
                yield Token("", float(logprobs[token]), id=token, eos=True)
                return
            piece = text.decode(llm.detokenize([token]))
            yield Token(piece, float(logprobs[token]), id=token)
            llm.eval([token])
        raise BackendError("the llama.cpp backend was closed")  # not a program cut off at a made-up limit


def _token_text(llm, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


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


def _close(contexts: list[_Context], closing: threading.Event) -> None:
    """Free each context only once no thread decodes in it. A stream abandoned mid-program (a
    visitor gone, Ctrl-C, a script that read one chunk) leaves its sampling thread running; freeing
    the context under it at exit crashed the process (SIGSEGV)."""
    closing.set()  # a decoding thread stops at its next token, a waiting sample does not start...
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
