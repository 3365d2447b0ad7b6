"""The `transformers` backend: the in-process model of `cap_app.models.loading`, any Hub model or
folder (4-bit on CUDA), batched (left padding, N samples per prompt) or streamed token by token.

Conversations are rendered with the model's own chat template. Both paths run the same
`model.generate` call with two small hooks:
- `_Watch` (a stopping criterion) ends each row once its ```python block is closed, at EOS, when
  its last lines repeat in a loop (small models do; `base.stop_reason`), or when the caller
  cancels, and remembers how many tokens each row really generated;
- `_LogprobRecorder` (a logits processor placed *before* temperature/top-p) keeps the mean
  log-probability of the chosen tokens under the model's own distribution; votes use it to
  break ties. It holds one (batch, vocab) row at a time instead of all scores.
When a batch holds several samples of the same prompt, that prompt is prefilled once and its KV
cache copied to each sample's row (`_shared_prompt_cache`): on CPU the ~400-token CaP prompt
costs as much as dozens of decoding steps, and `generate` alone would pay it per sample.

`generate_batch` and `generate_stream` are the only functions that touch the model, and the
backend calls them as this module's attributes, so a Space can wrap them (`spaces.GPU`,
ui/hosting.py) and everything else stays on the CPU.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Iterator, Sequence

from cap_app.backends.base import (
    Emit,
    FinishReason,
    Generation,
    GenerationConfig,
    PromptSize,
    StreamChunk,
    per_conversation,
    stop_reason,
    stream_in_thread,
)
from cap_app.models.chat_template import render_messages
from cap_app.models.loading import LoadedModel, get_model

_newline_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_backtick_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    """A `generate` streamer for any batch size: reports (row, new text, tokens so far) to `emit`.

    Decodes each row's tokens since its last newline (like TextIteratorStreamer) and holds back
    text that ends in an incomplete UTF-8 character.
    """

    def __init__(self, tokenizer, watch, first_row: int, emit: Emit):
        self.tokenizer, self.watch, self.first_row, self.emit = tokenizer, watch, first_row, emit
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
                self.emit(self.first_row + row, new, self.received[row])

    def end(self):
        for row, tokens in enumerate(self.cache):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)[self.printed[row] :]
            if text:
                self.emit(self.first_row + row, text, self.received[row])


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
    emit: Emit | None = None,
    *,
    first_row: int = 0,
) -> list[Generation]:
    """One `model.generate` call over a list of prompts (already expanded to one row per sample), each
    row's new text reported to `emit` (rows numbered from `first_row`) when given."""
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
            streamer=None if emit is None else _RowStreamer(tokenizer, watch, first_row, emit),
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


def _generate(
    loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, cancel, emit: Emit | None
) -> list[list[Generation]]:
    """`config.n` samples for each prompt, generated `config.batch_size` rows at a time; each row's
    new text reported to `emit` as it is written, when given."""
    rows = [prompt for prompt in prompts for _ in range(config.n)]
    generations: list[Generation] = []
    for start in range(0, len(rows), config.batch_size):
        chunk_config = dataclasses.replace(config, seed=None if config.seed is None else config.seed + start)
        chunk = rows[start : start + config.batch_size]
        generations += _generate_chunk(loaded, chunk, chunk_config, cancel, emit, first_row=start)
    return per_conversation(generations, config.n)


def generate_batch(
    loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, *, cancel: threading.Event | None = None
) -> list[list[Generation]]:
    """`config.n` samples for each prompt, generated `config.batch_size` rows at a time."""
    return _generate(loaded, prompts, config, cancel, None)


def generate_stream(
    loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, *, cancel: threading.Event | None = None
) -> Iterator[StreamChunk]:
    """Like `generate_batch`, but yields each row's text as it is written (a generator function, as
    `spaces.GPU` expects of a stream); closing it early stops the generation."""
    yield from stream_in_thread(
        lambda watched, emit: _generate(loaded, prompts, config, watched, emit), cancel, name="cap-generate"
    )


class TransformersBackend:
    name = "transformers"

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @property
    def description(self) -> str:
        return self.loaded.description

    def _prompts(self, conversations) -> list[str]:
        return [render_messages(self.loaded.tokenizer, conversation) for conversation in conversations]

    def generate_batch(self, conversations, config, *, cancel=None):
        return generate_batch(self.loaded, self._prompts(conversations), config, cancel=cancel)

    def generate_stream(self, conversations, config, *, cancel=None):
        return generate_stream(self.loaded, self._prompts(conversations), config, cancel=cancel)

    def prompt_size(self, conversation) -> PromptSize:
        """The prompt's tokens and the positions the model was trained for (`max_position_embeddings`;
        past them a model's output degrades or fails)."""
        tokenizer = self.loaded.tokenizer
        tokens = len(tokenizer(render_messages(tokenizer, conversation), add_special_tokens=False)["input_ids"])
        context = getattr(getattr(self.loaded.model, "config", None), "max_position_embeddings", None)
        return PromptSize(tokens, context if isinstance(context, int) and context > 0 else None)


def from_settings(model_cfg, backend_cfg) -> TransformersBackend:
    """The registry's factory: the model `get_model` holds (it keeps one loaded per process)."""
    return TransformersBackend(get_model(model_cfg))
