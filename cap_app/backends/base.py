"""What the engine asks of a generation backend: the contract every backend keeps, the stop rules
they all apply, and the loops the backends share.

A backend takes chat conversations (lists of {"role", "content"} messages, as
`cap_app.engine.prompts.build_messages` makes them), not prompt text: a remote server applies its own
model's chat template, a local one the template its weights ship with. It returns `Generation` /
`StreamChunk` values, so refine.py does not care which one runs: N samples per conversation (sample i
of the whole call seeded with `seed + i`), text streamed per row, the program-end and repetition
stops (`stop_reason`), EOS, the token limit, cancel, and the mean log-prob of the chosen tokens for
vote tie-breaks. A stream is sampled in a thread of its own (`stream_in_thread`); the
one-sequence-at-a-time backends (llama.cpp, OpenAI-compatible servers) share the row loop `RowSampler`.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Protocol

FinishReason = Literal["program_end", "eos", "repetition", "length", "cancelled"]
FENCE = "```"
REPEATS_TO_STOP = 3  # a block of lines written this many times in a row is a loop, not a program
LONGEST_REPEATED_BLOCK = 4  # lines
# `eggs_5 = eggs_4 + 4`, `eggs_6 = eggs_5 + 4`, ...: a line of one shape (numbers aside) written this
# many times in a row is a counting loop; a GSM8K program never needs that many.
COUNTING_LINES_TO_STOP = 6
_DIGITS = re.compile(r"\d+")


@dataclasses.dataclass
class GenerationConfig:
    temperature: float = dataclasses.field(default=0.0, metadata={"help": "sampling temperature; 0 = greedy decoding"})
    top_p: float = dataclasses.field(
        default=0.95, metadata={"help": "nucleus sampling: keep the smallest token set with this probability mass"}
    )
    max_new_tokens: int = dataclasses.field(
        default=400, metadata={"help": "stop a program after this many generated tokens"}
    )
    seed: int | None = dataclasses.field(
        default=0, metadata={"help": "random seed for sampling (same seed, same samples)"}
    )
    n: int = dataclasses.field(default=1, metadata={"help": "samples per prompt"})
    batch_size: int = dataclasses.field(
        default=8, metadata={"help": "most sequences generated together in one forward batch"}
    )
    stop_at_program_end: bool = dataclasses.field(
        default=True, metadata={"help": "stop as soon as the ```python block is closed"}
    )
    stop_on_repetition: bool = dataclasses.field(
        default=True,
        metadata={
            "help": f"stop a program whose last 1-{LONGEST_REPEATED_BLOCK} lines repeat "
            f"{REPEATS_TO_STOP} times in a row"
        },
    )

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if self.max_new_tokens < 1 or self.n < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens, n and batch_size must be at least 1")


@dataclasses.dataclass
class Generation:
    """One generated continuation."""

    text: str
    prompt_tokens: int | None  # None: not known (a server's stream cut at the program's end)
    new_tokens: int
    mean_logprob: float | None
    finish: FinishReason
    token_ids: list[int] = dataclasses.field(default_factory=list, repr=False)  # the generated tokens
    # set by a backend that lowered max_new_tokens itself to fit the model's `context` (tokens), which
    # its server told only by refusing the request (openai); None otherwise
    token_limit: int | None = None
    context: int | None = None


@dataclasses.dataclass
class StreamChunk:
    """New text of one row (`row` counts prompts x samples in order) and how many tokens that row
    has generated so far; the last chunk has `row == -1` and carries all `generations`, grouped
    per prompt like `generate_batch`."""

    row: int
    text: str
    generations: list[list[Generation]] | None = None
    tokens: int = 0


def repeats_in_tail(text: str) -> bool:
    """True when the text's last complete lines are one block of 1-4 non-blank lines written
    `REPEATS_TO_STOP` times in a row, or `COUNTING_LINES_TO_STOP` lines that differ only in their
    numbers: the model is looping and will until the token limit."""
    lines = text.split("\n")[:-1]  # complete lines only
    tail = lines[-COUNTING_LINES_TO_STOP:]
    if len(tail) == COUNTING_LINES_TO_STOP and tail[-1].strip() and len({_DIGITS.sub("#", line) for line in tail}) == 1:
        return True
    for size in range(1, LONGEST_REPEATED_BLOCK + 1):
        span = size * REPEATS_TO_STOP
        if len(lines) < span:
            break
        block = lines[-size:]
        if any(line.strip() for line in block) and all(
            lines[-(k + 1) * size : len(lines) - k * size] == block for k in range(1, REPEATS_TO_STOP)
        ):
            return True
    return False


def stop_reason(text: str, config: GenerationConfig) -> FinishReason | None:
    """Why a program whose generated text so far is `text` is finished before EOS or the token
    limit: its ```python block is closed, or it is looping. Every backend asks this one rule."""
    if config.stop_at_program_end and text.count(FENCE) >= 2:
        return "program_end"
    if config.stop_on_repetition and repeats_in_tail(text):
        return "repetition"
    return None


Conversation = list[dict[str, str]]
# (row, new text, tokens so far) -> None: how a sampler reports streamed text
Emit = Callable[[int, str, int], None]


class AnyEvent:
    """Set when either the consumer went away or the caller cancelled (is_set is all a stop rule needs)."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def stream_in_thread(
    sample: Callable[[AnyEvent, Emit], list[list[Generation]]], cancel: threading.Event | None, *, name: str
) -> Iterator[StreamChunk]:
    """The stream of every backend: `sample(cancel, emit)` runs in a thread of its own and reports each
    row's new text through `emit`; its text is yielded as written, then one chunk with what it returned.
    The thread's error is raised here, and a consumer that stops reading (closes the generator)
    sets the `cancel` it samples with, so the sampling stops too."""
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    done, results, failure = object(), [], []

    def work():
        try:
            results.append(sample(AnyEvent(stop, cancel), lambda row, text, tokens: out.put((row, text, tokens))))
        except BaseException as error:  # re-raised in the consumer's thread
            failure.append(error)
        finally:
            out.put(done)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not done:
            yield StreamChunk(row=item[0], text=item[1], tokens=item[2])
    finally:
        stop.set()  # the consumer went away: stop sampling
    thread.join()
    if failure:
        raise failure[0]
    yield StreamChunk(row=-1, text="", generations=results[0])


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
        """Text per row as written, then one chunk with all the generations (`stream_in_thread`)."""

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


def per_conversation(generations: list[Generation], n: int) -> list[list[Generation]]:
    """The generations of the rows (n per conversation, in order) grouped per conversation."""
    return [generations[i : i + n] for i in range(0, len(generations), n)]


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
        return per_conversation(self._run(conversations, config, cancel, None), config.n)

    def generate_stream(self, conversations, config, *, cancel=None):
        yield from stream_in_thread(
            lambda watched, emit: per_conversation(self._run(conversations, config, watched, emit), config.n),
            cancel,
            name=f"cap-{self.name}",
        )

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
