"""The `openai` backend: any OpenAI-compatible `/v1` server (vLLM, SGLang, TGI, llama.cpp's server).

Each sample is one streamed `/chat/completions` request (the server applies its model's chat
template), seeded `seed + row`; `concurrency` of them are in flight at once. The stop rules run
here on the streamed text and close the connection when they fire (servers stop generating when
the client leaves), so every server stops a program at the same point as the local backends.
Mean log-probs come from the stream's `logprobs` when the server sends them; otherwise they are
None and a vote tie is broken by order. Prompt tokens come from the stream's `usage`, which a
server sends after its last token when asked (`stream_options.include_usage`: OpenAI, vLLM,
SGLang, llama.cpp's server): known for a sample the server finished (EOS, its token limit), None
for one cut here at the program's end, whose usage is never sent.

Failures: 429, 5xx, connection errors and timeouts are retried with exponential backoff
(`Retry-After` honoured) as long as nothing of the sample was streamed to the page yet; a bad key,
an unknown model or a refused request fail at once. Every failure is a BackendError with one line
that names the server, never the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator

from cap_app.backends.base import BackendError, PromptSize, RowSampler, Token, fit_to_context, follow

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Sampling extensions some servers turn on by default (llama.cpp's server: repeat_penalty 1.1,
# min_p 0.05; vLLM and SGLang call the penalty repetition_penalty), set neutral so a server writes
# the programs the local backends write. Servers ignore the names they do not know.
NEUTRAL_SAMPLING = {"repeat_penalty": 1.0, "repetition_penalty": 1.0, "min_p": 0.0}
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


class _Retryable(Exception):
    """A failure worth another try; str() is the one-line reason."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


class _Cut(Exception):
    """A stream that ended before the server said it was finished."""


class _ContextExceeded(Exception):
    """The server refused a request whose prompt and max_tokens exceed its model's context, and
    said both numbers."""

    def __init__(self, size: PromptSize):
        super().__init__(f"{size.tokens} prompt tokens of a context of {size.context}")
        self.size = size


# How servers word that refusal (HTTP 400): OpenAI and vLLM ("This model's maximum context length is
# 4096 tokens. However, you requested 4115 tokens (3715 in the messages, 400 in the completion)", or
# "... your request has 3715 input tokens"), llama.cpp's server ("the request exceeds the available
# context size ... n_prompt_tokens 3715, n_ctx 4096"), llama-cpp-python ("Requested tokens (3715)
# exceed context window of 4096").
_CONTEXT_WORDINGS = (
    re.compile(r"maximum context length is (?P<context>\d+).*?(?P<prompt>\d+) (?:in the messages|input tokens)", re.S),
    re.compile(r"n_prompt_tokens\D*(?P<prompt>\d+).*?n_ctx\D*(?P<context>\d+)", re.S),
    re.compile(r"Requested tokens \((?P<prompt>\d+)\) exceed context window of (?P<context>\d+)"),
)


def _context_refusal(detail: str) -> PromptSize | None:
    for wording in _CONTEXT_WORDINGS:
        if match := wording.search(detail):
            return PromptSize(int(match["prompt"]), int(match["context"]))
    return None


def from_settings(model_cfg, backend_cfg) -> OpenAIBackend:
    """The registry's factory: the server the settings name, its model as the server has it."""
    if not backend_cfg.base_url:
        raise BackendError("the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1")
    if model_cfg.adapter:
        raise BackendError("--adapter does not apply to the openai backend: the server's model is used as it is")
    return OpenAIBackend(
        backend_cfg.base_url,
        model_cfg.model,
        api_key=os.environ.get("CAP_API_KEY"),
        concurrency=backend_cfg.concurrency,
        timeout_s=backend_cfg.request_timeout_s,
        retries=backend_cfg.retries,
    )


class OpenAIBackend(RowSampler):
    name = "openai"

    def __init__(
        self, base_url: str, model: str | None, *, api_key: str | None, concurrency: int, timeout_s: float, retries: int
    ):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.concurrency, self.retries = concurrency, retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=concurrency + 1),
        )
        self.timeout_s = timeout_s
        self.model = self._check_model(model)

    @property
    def description(self) -> str:
        return f"{self.model} @ {self.base_url}"

    def _check_model(self, model: str | None) -> str:
        """The served model to use: the one asked for, refused at once when the server lacks it,
        or the server's only model when none was named."""
        response = self._with_retries(lambda: self._checked(self.client.get("/models")), streamed=lambda: False)
        served = [entry.get("id") for entry in response.json().get("data", [])]
        if model is None:
            if len(served) != 1:
                raise BackendError(
                    f"the server at {self.base_url} serves {len(served)} models "
                    f"({', '.join(map(str, served)) or 'none'}); pick one with --model"
                )
            return served[0]
        if model not in served:
            raise BackendError(
                f"the server at {self.base_url} has no model '{model}' "
                f"(it serves: {', '.join(map(str, served)) or 'none'})"
            )
        return model

    def sample(self, conversation, config, seed, cancel, emit):
        body = {
            "model": self.model,
            "messages": conversation,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 1,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p if config.temperature > 0 else 1.0,
            "stream_options": {"include_usage": True},
            **NEUTRAL_SAMPLING,
        }
        if seed is not None:
            body["seed"] = seed
        sent = [False]
        usage: dict = {}

        def tracked(text: str, tokens: int) -> None:
            sent[0] = True
            emit(text, tokens)

        def attempt(config=config):
            with self.client.stream("POST", "/chat/completions", json=body) as response:
                self._checked(response)
                generation = follow(
                    self._tokens(response, usage),
                    config,
                    prompt_tokens=None,
                    cancel=cancel,
                    emit=None if emit is None else tracked,
                )
                generation.prompt_tokens = usage.get("prompt_tokens")
                if generation.finish == "length" and generation.new_tokens < config.max_new_tokens:
                    # the server stopped it short of max_tokens: its context was full (llama-cpp-python's
                    # server lowers max_tokens to what the prompt leaves without a word)
                    generation.token_limit = generation.new_tokens
                    if generation.prompt_tokens is not None:
                        generation.context = generation.prompt_tokens + generation.new_tokens
                return generation

        try:
            return self._with_retries(attempt, streamed=lambda: sent[0])
        except _ContextExceeded as refusal:
            # the server counts the prompt, this client cannot: fit the budget to what it said is left
            fitted, note = fit_to_context(config, refusal.size)
            if note is None:
                raise BackendError(f"the server at {self.base_url} refused the request ({refusal})") from None
            body["max_tokens"] = fitted.max_new_tokens
            generation = self._with_retries(lambda: attempt(fitted), streamed=lambda: sent[0])
            return dataclasses.replace(generation, token_limit=fitted.max_new_tokens, context=refusal.size.context)

    def _with_retries(self, attempt, *, streamed):
        """Run `attempt` until it succeeds, retrying what is worth it with exponential backoff."""
        import httpx

        wait = FIRST_BACKOFF_S
        for tries in range(1, self.retries + 2):
            try:
                return attempt()
            except httpx.TimeoutException:
                reason = f"no reply from {self.base_url} within {self.timeout_s:g} s"
                retry_after = None
            except httpx.ConnectError:
                reason = f"cannot reach {self.base_url}"
                retry_after = None
            except (httpx.TransportError, _Cut) as error:
                reason = f"lost the connection to {self.base_url} ({_message(error) or type(error).__name__})"
                retry_after = None
            except _Retryable as error:
                reason, retry_after = str(error), error.wait_s
            if streamed() or tries > self.retries:
                raise BackendError(f"{reason}; gave up after {tries} tr{'y' if tries == 1 else 'ies'}")
            time.sleep(min(MAX_BACKOFF_S, retry_after if retry_after is not None else wait))
            wait *= 2

    def _checked(self, response):
        """The response if it is a success; else _Retryable or a BackendError saying what was refused."""
        if response.status_code < 400:
            return response
        response.read()
        detail = _error_detail(response)
        status = f"HTTP {response.status_code}{': ' + detail if detail else ''}"
        if response.status_code in RETRY_STATUS:
            wait = response.headers.get("retry-after")
            raise _Retryable(
                f"the server at {self.base_url} failed ({status})",
                float(wait) if wait and wait.replace(".", "", 1).isdigit() else None,
            )
        if response.status_code in (401, 403):
            raise BackendError(f"the server at {self.base_url} refused the API key ({status}); set CAP_API_KEY")
        if response.status_code == 400 and (size := _context_refusal(detail)) is not None:
            raise _ContextExceeded(size)
        if response.status_code == 404:
            raise BackendError(
                f"the server at {self.base_url} has no such endpoint ({status}); "
                "--base-url is its OpenAI API address, usually ending in /v1"
            )
        raise BackendError(f"the server at {self.base_url} refused the request ({status})")

    def _tokens(self, response, usage: dict) -> Iterator[Token]:
        """Tokens of a streamed chat completion (server-sent events); EOS when the server stopped.
        The chunk that finishes the sample is held back until the stream's end, so the `usage`
        chunk after it (prompt tokens) is read into `usage` before the reader stops. A stream that
        ends before its finish reason was cut short (a server restarting, or llama_cpp.server
        dropping a request for a newer one) and is retried."""
        last = None
        for chunk in self._chunks(response):
            if isinstance(chunk.get("usage"), dict):
                usage.update(chunk["usage"])
            for choice in chunk.get("choices", [])[:1]:
                if choice.get("finish_reason") is not None:
                    last = choice
                else:
                    yield from _choice_tokens(choice)
        if last is None:
            raise _Cut(
                "the stream ended unfinished; llama_cpp.server needs --interrupt_requests false for concurrent requests"
            )
        yield from _choice_tokens(last)
        if last["finish_reason"] == "stop":
            yield Token("", None, eos=True)

    def _chunks(self, response) -> Iterator[dict]:
        """The JSON chunks of a server-sent event stream, up to `[DONE]`."""
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise _Retryable(f"the server at {self.base_url} failed mid-stream ({_message(chunk['error'])})")
            yield chunk


def _choice_tokens(choice: dict) -> Iterator[Token]:
    """The tokens of one streamed choice: one per log-prob entry (the text on the first), else the text."""
    text = (choice.get("delta") or {}).get("content") or ""
    entries = ((choice.get("logprobs") or {}).get("content")) or []
    if entries:
        for i, entry in enumerate(entries):
            yield Token(text if i == 0 else "", entry.get("logprob"))
    elif text:
        yield Token(text, None)


def _message(error) -> str:
    """An error (object or text) as at most 200 characters of its first line."""
    lines = str(error.get("message", error) if isinstance(error, dict) else error).strip().splitlines()
    return lines[0][:200] if lines else ""


def _error_detail(response) -> str:
    """The server's error message, shortened to one line."""
    try:
        body = response.json()
    except ValueError:
        return _message(response.text)
    error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
    return _message(error)
