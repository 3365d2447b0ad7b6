"""The `llama.cpp` backend: a GGUF model run in-process by llama-cpp-python, 5-7x faster than
transformers on a CPU (benchmarks/README.md).

llama.cpp evaluates the tokens; the choice of each next token is made here, in numpy, from the
logits of the last one, because the engine needs what llama.cpp's own sampler does not give: the
chosen token's log-prob under the model's untempered distribution (vote tie-breaks, as
transformers' `_LogprobRecorder` records it) and a seeded generator per sample, so a rerun draws
the same programs. The prompt is rendered with the chat template stored in the GGUF and its
evaluated tokens are kept: the N samples of one prompt, and a repair turn that extends it, only
evaluate what differs.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cap_app.backends.base import BackendError, RowSampler, Token, follow

CONTEXT_TOKENS = 4096  # a CaP prompt (~400 tokens) plus a program and two repair rounds
# Threads for decoding and for the prompt: llama-cpp-python's default for decoding (half the
# logical CPUs, about the physical cores), for the prompt too. Its default there, every logical CPU,
# makes the prompt 5x slower on a 2-CPU machine where another process holds one (measured:
# 400 tokens in 1.1 s vs 5-7 s), and a free Space or a laptop is rarely idle.
THREADS = max(1, (os.cpu_count() or 2) // 2)
TOP_CANDIDATES = 64  # top-p looks here first; a full sort of the vocabulary only when they are not enough


class LlamaCppBackend(RowSampler):
    name = "llama.cpp"

    def __init__(self, path: str | Path, *, name: str):
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise BackendError(
                "the llama.cpp backend needs llama-cpp-python: "
                "pip install -r requirements.txt (it builds from source, ~7 min)"
            ) from None
        self.display_name = name
        try:
            with _weight_repacking(not _cpu_has_amx()):
                self.llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=CONTEXT_TOKENS,
                    n_threads=THREADS,
                    n_threads_batch=THREADS,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as error:
            raise BackendError(f"llama.cpp could not load '{path}': {str(error).splitlines()[0]}") from None
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"'{path}' has no chat template in its metadata; the llama.cpp backend needs one")
        self.formatter = Jinja2ChatFormatter(
            template, eos_token=self._token_text(self.llm.token_eos()), bos_token=self._token_text(self.llm.token_bos())
        )
        vocab = self.llm._model.vocab
        self.is_end = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))  # end of turn or text
        self.lock = threading.Lock()  # one context: one sequence at a time
        self.closing = threading.Event()
        # Free the model with this backend, or at exit while llama.cpp's library is still loaded
        # (Llama.__del__ during interpreter shutdown fails with a traceback).
        weakref.finalize(self, _close, self.llm, self.lock, self.closing)

    @property
    def description(self) -> str:
        return self.display_name

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt_tokens(self, conversation) -> list[int]:
        text = self.formatter(messages=conversation).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def sample(self, conversation, config, seed, cancel, emit):
        tokens = self.prompt_tokens(conversation)
        if len(tokens) + config.max_new_tokens > CONTEXT_TOKENS:
            raise BackendError(
                f"the prompt ({len(tokens)} tokens) and --max-new-tokens {config.max_new_tokens} "
                f"exceed the llama.cpp context of {CONTEXT_TOKENS} tokens"
            )
        with self.lock:
            return follow(
                self._decode(tokens, config, seed), config, prompt_tokens=len(tokens), cancel=cancel, emit=emit
            )

    def _decode(self, prompt: list[int], config, seed: int | None) -> Iterator[Token]:
        """Tokens after `prompt`, one per step, until the caller stops reading (follow decides)."""
        llm = self.llm
        kept = (
            0  # tokens of the context already holding this prompt's prefix (at least the last is redone for its logits)
        )
        while kept < min(llm.n_tokens, len(prompt) - 1) and llm.input_ids[kept] == prompt[kept]:
            kept += 1
        llm.n_tokens = kept
        llm.eval(prompt[kept:])
        rng = np.random.default_rng(seed)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n_vocab = llm.n_vocab()
        while not self.closing.is_set():
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).astype(np.float64)
            logprobs = logits - logits.max()
            logprobs -= np.log(np.exp(logprobs).sum())
            token = int(np.argmax(logits)) if config.temperature == 0 else _draw(logits, config, rng)
            if self.is_end(token):
                yield Token("", float(logprobs[token]), id=token, eos=True)
                return
            piece = text.decode(llm.detokenize([token]))
            yield Token(piece, float(logprobs[token]), id=token)
            llm.eval([token])


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _weight_repacking(enabled: bool):
    """Load with or without llama.cpp's extra weight buffers (repacked for AMX / AVX kernels).

    On CPUs with AMX (Intel Sapphire Rapids and later, common in clouds) llama.cpp's AMX path
    crashes the process (SIGSEGV) on the first prompt of more than one token, in every model type
    (measured here: Q4_1 and q8_0; llama.cpp#20824). llama-cpp-python has no constructor option
    for `use_extra_bufts`, so its default model parameters are wrapped while the model loads."""
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


def _close(llm, lock, closing: threading.Event) -> None:
    """Free the model only once no thread decodes with it. A stream abandoned mid-program (a
    visitor gone, Ctrl-C, a script that read one chunk) leaves its sampling thread running; freeing
    the context under it at exit crashed the process (SIGSEGV)."""
    closing.set()  # the decoding thread stops at its next token...
    with lock:  # ...and lets go of the context
        llm.close()


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
