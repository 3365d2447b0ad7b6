"""What the engine asks of a generation backend, and the sampling loop the one-sequence-at-a-time
backends (llama.cpp, OpenAI-compatible servers) share.

A backend takes chat conversations (lists of {"role", "content"} messages, as
`cap_app.engine.prompts.build_messages` makes them), not prompt text: a remote server applies its own
model's chat template, a local one the template its weights ship with. It returns the same
`Generation` / `StreamChunk` values as `cap_app.backends.generation`, so refine.py does not care which one
runs: N samples per conversation (sample i of the whole call seeded with `seed + i`), text
streamed per row, the program-end and repetition stops (`generate.stop_reason`), EOS, the
token limit, cancel, and the mean log-prob of the chosen tokens for vote tie-breaks.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from cap_app.backends.generation import AnyEvent, Generation, GenerationConfig, StreamChunk, stop_reason

Conversation = list[dict[str, str]]
# (row, new text, tokens so far) -> None: how a sampler reports streamed text
Emit = Callable[[int, str, int], None]


class BackendError(RuntimeError):
    """A backend cannot do what was asked (or its server failed); the message is one line for the user."""


class ContextError(BackendError):
    """The prompt leaves the model's context no room for a program; the message says so in the
    settings' words (the page and the CLI share it)."""


# Fewer new tokens than this is no room for a program (a GSM8K program takes ~50-100): refused.
MIN_PROGRAM_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class PromptSize:
    """How much of the model's context a conversation's prompt takes, as far as a backend knows
    before it sends it: `tokens` (None: only a server counts them) of `context` (None: not known)."""

    tokens: int | None
    context: int | None


def fit_to_context(config: GenerationConfig, size: PromptSize) -> tuple[GenerationConfig, str | None]:
    """`config` with "Max new tokens" lowered to what the prompt leaves of the context, and a
    sentence saying so (None when it fits as asked): a long draft the page accepts is refined with a
    shorter budget instead of being refused. ContextError when the prompt leaves no room at all."""
    if size.tokens is None or size.context is None or size.tokens + config.max_new_tokens <= size.context:
        return config, None
    left = size.context - size.tokens
    if left < MIN_PROGRAM_TOKENS:
        raise ContextError(
            f"the question and draft take {size.tokens:,} tokens of the model's context of {size.context:,}, "
            f"which leaves less than {MIN_PROGRAM_TOKENS} for a program: shorten the draft"
        )
    return dataclasses.replace(config, max_new_tokens=left), budget_note(config.max_new_tokens, left, size)


def budget_note(asked: int, given: int, size: PromptSize) -> str:
    """The sentence that says a program's token budget was lowered to fit the model's context."""
    if size.context is None or size.tokens is None:  # a server that only stopped short
        return (
            f"“Max new tokens” was lowered from {asked} to {given} for this draft: "
            "the model's context has no more room after the question and draft."
        )
    taken = f"the question and draft take {size.tokens:,}"
    return (
        f"“Max new tokens” was lowered from {asked} to {given} for this draft: "
        f"the model reads at most {size.context:,} tokens and {taken}."
    )


class Backend(Protocol):
    name: str  # "transformers", "llama.cpp" or "openai"

    @property
    def description(self) -> str:
        """What produced a result (stored in RefinementResult.model)."""

    def generate_batch(
        self, conversations: Sequence[Conversation], config: GenerationConfig, *, cancel: threading.Event | None = None
    ) -> list[list[Generation]]:
        """`config.n` generations per conversation, grouped per conversation."""

    def generate_stream(
        self, conversations: Sequence[Conversation], config: GenerationConfig, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamChunk]:
        """As `cap_app.backends.generation.generate_stream`: text per row as written, then one chunk with all."""

    def prompt_size(self, conversation: Conversation) -> PromptSize:
        """How many tokens the conversation's prompt takes of how large a context (`fit_to_context`)."""


@dataclasses.dataclass
class Token:
    """One generated token as a sampler sees it."""

    text: str
    logprob: float | None  # under the model's own (untempered) distribution; None if unknown
    id: int | None = None
    eos: bool = False  # end of turn: not part of the text


class Follower:
    """The stop rules of one row, fed one token at a time: `add` says when the row is done (EOS,
    program end or repetition, cancel, the token limit), `generation` what it wrote. A sampler
    that decodes several rows in step keeps one per row; `follow` reads one row's tokens."""

    def __init__(
        self,
        config: GenerationConfig,
        *,
        prompt_tokens: int | None,
        cancel: threading.Event | None,
        emit: Callable[[str, int], None] | None,
    ):
        self.config, self.prompt_tokens, self.cancel, self.emit = config, prompt_tokens, cancel, emit
        self.text, self.ids, self.logprobs, self.count = "", [], [], 0
        self.finish = "length"

    def add(self, token: Token) -> bool:
        """Take the next token; True once a stop rule fired (the token, unless EOS, is kept)."""
        if token.eos:
            self.finish = "eos"
            return True
        self.count += 1
        self.text += token.text
        if token.id is not None:
            self.ids.append(token.id)
        if token.logprob is not None:
            self.logprobs.append(token.logprob)
        if self.emit is not None and token.text:
            self.emit(token.text, self.count)
        if ("`" in token.text or "\n" in token.text) and (reason := stop_reason(self.text, self.config)):
            self.finish = reason
            return True
        if self.cancel is not None and self.cancel.is_set():
            self.finish = "cancelled"
            return True
        return self.count >= self.config.max_new_tokens

    def generation(self) -> Generation:
        logprobs, count = self.logprobs, self.count
        mean = sum(logprobs) / len(logprobs) if logprobs and len(logprobs) == count else None
        return Generation(
            text=self.text,
            prompt_tokens=self.prompt_tokens,
            new_tokens=count,
            mean_logprob=mean,
            finish=self.finish,
            token_ids=self.ids,
        )


def follow(
    tokens: Iterable[Token],
    config: GenerationConfig,
    *,
    prompt_tokens: int | None,
    cancel: threading.Event | None,
    emit: Callable[[str, int], None] | None,
) -> Generation:
    """Read tokens until a stop rule fires; the caller's iterator is closed there, which is how a
    local sampler stops decoding and a remote stream drops its connection."""
    follower = Follower(config, prompt_tokens=prompt_tokens, cancel=cancel, emit=emit)
    iterator = iter(tokens)
    try:
        for token in iterator:
            if follower.add(token):
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    if follower.count == 0 and cancel is not None and cancel.is_set():
        follower.finish = "cancelled"  # stopped before its first token (a long prompt's evaluation)
    return follower.generation()


def sample_seeds(
    conversations: Sequence[Conversation], config: GenerationConfig
) -> list[tuple[Conversation, int | None]]:
    """One (conversation, seed) per row: `config.n` rows per conversation, row i seeded `seed + i`
    (as transformers seeds each batch with `seed +` its first row), so a rerun draws the same samples."""
    rows = [c for c in conversations for _ in range(config.n)]
    return [(c, None if config.seed is None else config.seed + i) for i, c in enumerate(rows)]


class RowSampler:
    """A backend built from `sample(conversation, config, seed, cancel, emit) -> Generation`, one
    row at a time; `concurrency` rows run at once (threads: the work is in C, which releases the
    GIL, or on a server): requests in flight for `openai`, contexts for `llama.cpp`. Each row's
    seed alone decides its sample, so the rows' order of completion does not change the results."""

    name = ""
    concurrency = 1

    def prompt_size(self, conversation: Conversation) -> PromptSize:
        return PromptSize(None, None)

    def sample(
        self,
        conversation: Conversation,
        config: GenerationConfig,
        seed: int | None,
        cancel: threading.Event | None,
        emit: Callable[[str, int], None] | None,
    ) -> Generation:
        raise NotImplementedError

    def generate_batch(self, conversations, config, *, cancel=None):
        return self._group(self._run(conversations, config, cancel, None), config)

    def generate_stream(self, conversations, config, *, cancel=None):
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        watched = AnyEvent(stop, cancel)
        done, results, failure = object(), [], []

        def work():
            try:
                results.extend(
                    self._run(conversations, config, watched, lambda row, text, tokens: out.put((row, text, tokens)))
                )
            except BaseException as error:  # re-raised in the consumer's thread
                failure.append(error)
            finally:
                out.put(done)

        thread = threading.Thread(target=work, name=f"cap-{self.name}", daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not done:
                yield StreamChunk(row=item[0], text=item[1], tokens=item[2])
        finally:
            stop.set()  # the consumer went away: stop sampling
        thread.join()
        if failure:
            raise failure[0]
        yield StreamChunk(row=-1, text="", generations=self._group(results, config))

    def _run(self, conversations, config: GenerationConfig, cancel, emit: Emit | None) -> list[Generation]:
        rows = sample_seeds(conversations, config)
        failed = threading.Event()
        watched = AnyEvent(failed, cancel)

        def one(row: int) -> Generation:
            conversation, seed = rows[row]
            row_emit = None if emit is None else (lambda text, tokens: emit(row, text, tokens))
            return self.sample(conversation, config, seed, watched, row_emit)

        if self.concurrency == 1 or len(rows) == 1:
            return [one(row) for row in range(len(rows))]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(rows)), thread_name_prefix=f"cap-{self.name}")
        try:
            return list(pool.map(one, range(len(rows))))
        except BaseException:
            # Ctrl-C or a failed row: the rows still running stop at their next token, the others
            # never start, instead of the whole call being sampled before the error shows.
            failed.set()
            raise
        finally:
            pool.shutdown(cancel_futures=True)

    @staticmethod
    def _group(generations: list[Generation], config: GenerationConfig) -> list[list[Generation]]:
        return [generations[i : i + config.n] for i in range(0, len(generations), config.n)]
