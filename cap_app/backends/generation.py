"""Generate CaP programs: batched (left padding, N samples per prompt) or streamed token by token.

Both paths run the same `model.generate` call with two small hooks:
- `_Watch` (a stopping criterion) ends each row once its ```python block is closed, at EOS, when
  its last lines repeat in a loop (small models do; `repeats_in_tail`), or when the caller
  cancels, and remembers how many tokens each row really generated;
- `_LogprobRecorder` (a logits processor placed *before* temperature/top-p) keeps the mean
  log-probability of the chosen tokens under the model's own distribution; votes use it to
  break ties. It holds one (batch, vocab) row at a time instead of all scores.
When a batch holds several samples of the same prompt, that prompt is prefilled once and its KV
cache copied to each sample's row (`_shared_prompt_cache`): on CPU the ~400-token CaP prompt
costs as much as dozens of decoding steps, and `generate` alone would pay it per sample.

`generate_batch` and `generate_stream` are the only functions that touch the model, so a Space
can wrap them (e.g. with `spaces.GPU`) and everything else stays on the CPU.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Literal

from cap_app.models.loading import LoadedModel

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


_backtick_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


_newline_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokens_with_newline(tokenizer) -> frozenset[int]:
    """Ids of tokens that end a line: only after them can a repetition be complete."""
    if tokenizer not in _newline_tokens:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        _newline_tokens[tokenizer] = frozenset(i for i, text in enumerate(texts) if "\n" in text)
    return _newline_tokens[tokenizer]


def _tokens_with_backtick(tokenizer) -> frozenset[int]:
    """Ids of tokens that contain a backtick: only they can complete a closing fence."""
    if tokenizer not in _backtick_tokens:
        _backtick_tokens[tokenizer] = frozenset(i for t, i in tokenizer.get_vocab().items() if "`" in t)
    return _backtick_tokens[tokenizer]


def _stopping_and_recording(
    tokenizer, batch: int, prompt_len: int, eos_ids: set[int], config: GenerationConfig, cancel: threading.Event | None
):
    """The two generate() hooks for one batch (classes built here so importing this module stays
    free of torch/transformers, which the CLI's --help must not pay for)."""
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    class _Watch(StoppingCriteria):
        def __init__(self):
            self.done = [False] * batch
            self.finish: list[FinishReason] = ["length"] * batch
            self.lengths = [0] * batch
            self.backticks = _tokens_with_backtick(tokenizer) if config.stop_at_program_end else frozenset()
            self.newlines = _tokens_with_newline(tokenizer) if config.stop_on_repetition else frozenset()

        def __call__(self, input_ids, scores, **kwargs):
            last = input_ids[:, -1].tolist()
            for row, token in enumerate(last):
                if self.done[row]:
                    continue
                self.lengths[row] += 1
                if token in eos_ids:
                    self._end(row, "eos")
                elif token in self.backticks or token in self.newlines:
                    text = tokenizer.decode(input_ids[row, prompt_len:], skip_special_tokens=True)
                    if reason := stop_reason(text, config):
                        self._end(row, reason)
            if cancel is not None and cancel.is_set():
                for row in range(batch):
                    if not self.done[row]:
                        self._end(row, "cancelled")
            return torch.tensor(self.done, device=input_ids.device)

        def _end(self, row: int, reason: FinishReason):
            self.done[row] = True
            self.finish[row] = reason

    class _LogprobRecorder(LogitsProcessor):
        def __init__(self):
            self.previous = None  # log-softmax of the step whose token is not yet known
            self.chosen: list = []

        def __call__(self, input_ids, scores):
            if self.previous is not None:
                self._take(input_ids[:, -1])
            self.previous = torch.log_softmax(scores.float(), dim=-1)
            return scores

        def _take(self, tokens):
            self.chosen.append(self.previous.gather(1, tokens.unsqueeze(1)).squeeze(1))

        def finish(self, sequences) -> None:
            """The last step's token is only known from the output sequences."""
            if self.previous is not None:
                self._take(sequences[:, -1])
                self.previous = None

        def mean(self, row: int, length: int) -> float | None:
            if length == 0 or not self.chosen:
                return None
            return float(torch.stack(self.chosen[:length], dim=1)[row].mean())

    return _Watch(), _LogprobRecorder()


class _RowStreamer:
    """A `generate` streamer for any batch size: pushes (row, new text) to a queue.

    Decodes each row's tokens since its last newline (like TextIteratorStreamer) and holds back
    text that ends in an incomplete UTF-8 character.
    """

    def __init__(self, tokenizer, watch, first_row: int, out: queue.Queue):
        self.tokenizer, self.watch, self.first_row, self.out = tokenizer, watch, first_row, out
        self.prompt_seen = False
        self.cache: list[list[int]] = []
        self.printed: list[int] = []
        self.received: list[int] = []

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            self.cache = [[] for _ in range(value.shape[0])]
            self.printed = [0] * value.shape[0]
            self.received = [0] * value.shape[0]
            return
        for row, token in enumerate(value.reshape(len(self.cache), -1)[:, -1].tolist()):
            # `generate` calls the stopping criteria before the streamer, so a row's last real
            # token arrives when `watch` already counted it; later ones are padding.
            if self.received[row] >= self.watch.lengths[row]:
                continue
            self.received[row] += 1
            self.cache[row].append(token)
            text = self.tokenizer.decode(self.cache[row], skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            new = text[self.printed[row] :]
            if text.endswith("\n"):
                self.cache[row], self.printed[row] = [], 0
            else:
                self.printed[row] = len(text)
            if new:
                self.out.put((self.first_row + row, new, self.received[row]))

    def end(self):
        for row, tokens in enumerate(self.cache):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)[self.printed[row] :]
            if text:
                self.out.put((self.first_row + row, text, self.received[row]))


def _shared_prompt_cache(model, inputs, prompts: list[str]):
    """A KV cache of every row's prompt but its last token, computed once per distinct prompt, or
    None when all rows differ (nothing to share). `generate` then only runs the last prompt token
    per row, then decodes as usual; positions follow the attention mask as `generate` sets them."""
    import torch
    from transformers import DynamicCache

    first_row: dict[str, int] = {}
    row_of_prompt = [first_row.setdefault(prompt, len(first_row)) for prompt in prompts]
    if len(first_row) == len(prompts) or inputs["input_ids"].shape[1] < 2:
        return None
    distinct = [prompts.index(prompt) for prompt in first_row]
    ids = inputs["input_ids"][distinct, :-1]
    mask = inputs["attention_mask"][distinct, :-1]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    cache.batch_select_indices(torch.tensor(row_of_prompt, device=ids.device))
    return cache


def _generate_chunk(
    loaded: LoadedModel,
    prompts: list[str],
    config: GenerationConfig,
    cancel: threading.Event | None,
    streamer_factory=None,
) -> list[Generation]:
    """One `model.generate` call over a list of prompts (already expanded to one row per sample)."""
    import torch
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    tokenizer, model = loaded.tokenizer, loaded.model
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_len = inputs["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    eos_ids.discard(None)
    watch, recorder = _stopping_and_recording(tokenizer, len(prompts), prompt_len, eos_ids, config, cancel)
    sample = config.temperature > 0
    processors = [recorder]
    if sample:  # our own warpers, after the recorder, so it sees the model's raw distribution
        processors += [TemperatureLogitsWarper(config.temperature), TopPLogitsWarper(config.top_p)]
    # Neutral values override sampling defaults a model may ship in generation_config.json.
    neutral = {"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}
    hf_config = HFGenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=sample,
        num_beams=1,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids),
        **neutral,
    )
    with loaded.lock:
        if config.seed is not None:
            torch.manual_seed(config.seed)
        sequences = model.generate(
            **inputs,
            past_key_values=_shared_prompt_cache(model, inputs, prompts),
            generation_config=hf_config,
            logits_processor=processors,
            stopping_criteria=[watch],
            streamer=streamer_factory(watch) if streamer_factory else None,
        )
    recorder.finish(sequences)
    prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
    results = []
    for row in range(len(prompts)):
        length = watch.lengths[row]
        token_ids = sequences[row, prompt_len : prompt_len + length].tolist()
        results.append(
            Generation(
                text=tokenizer.decode(token_ids, skip_special_tokens=True),
                prompt_tokens=int(prompt_tokens[row]),
                new_tokens=length,
                mean_logprob=recorder.mean(row, length),
                finish=watch.finish[row],
                token_ids=token_ids,
            )
        )
    return results


def _rows(prompts: Sequence[str], config: GenerationConfig) -> list[str]:
    return [prompt for prompt in prompts for _ in range(config.n)]


def _group(generations: list[Generation], n: int) -> list[list[Generation]]:
    return [generations[i : i + n] for i in range(0, len(generations), n)]


def generate_batch(
    loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, *, cancel: threading.Event | None = None
) -> list[list[Generation]]:
    """`config.n` samples for each prompt, generated `config.batch_size` rows at a time."""
    rows = _rows(prompts, config)
    generations: list[Generation] = []
    for start in range(0, len(rows), config.batch_size):
        chunk_config = dataclasses.replace(config, seed=None if config.seed is None else config.seed + start)
        generations += _generate_chunk(loaded, rows[start : start + config.batch_size], chunk_config, cancel)
    return _group(generations, config.n)


def generate_stream(
    loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, *, cancel: threading.Event | None = None
) -> Iterator[StreamChunk]:
    """Like `generate_batch`, but yields each row's text as it is written.

    Generation runs in a background thread; closing this generator early stops it.
    """
    rows = _rows(prompts, config)
    stop = threading.Event()
    watched = AnyEvent(stop, cancel)
    generations: list[Generation] = []
    try:
        for start in range(0, len(rows), config.batch_size):
            out: queue.Queue = queue.Queue()
            done = object()
            failure: list[BaseException] = []
            chunk_config = dataclasses.replace(config, seed=None if config.seed is None else config.seed + start)

            def work(
                chunk=rows[start : start + config.batch_size],
                first=start,
                chunk_config=chunk_config,
                out=out,
                done=done,
                failure=failure,
            ):
                try:
                    generations.extend(
                        _generate_chunk(
                            loaded,
                            chunk,
                            chunk_config,
                            watched,
                            streamer_factory=lambda watch: _RowStreamer(loaded.tokenizer, watch, first, out),
                        )
                    )
                except BaseException as error:  # re-raised in the consumer's thread
                    failure.append(error)
                finally:
                    out.put(done)

            thread = threading.Thread(target=work, name="cap-generate", daemon=True)
            thread.start()
            while (item := out.get()) is not done:
                yield StreamChunk(row=item[0], text=item[1], tokens=item[2])
            thread.join()
            if failure:
                raise failure[0]
    finally:
        stop.set()
    yield StreamChunk(row=-1, text="", generations=_group(generations, config.n))


class AnyEvent:
    """Set when either the consumer went away or the caller cancelled (is_set is all `_Watch` needs)."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)
