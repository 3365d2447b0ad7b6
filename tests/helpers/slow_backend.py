"""A generation backend that writes a fixed program slowly, for the Refine all tests: the engine,
sandbox and store around it are real; only the model is replaced (the real offline default runs
through Refine all in test_batch_refinement.py's slow test).

It records each conversation's question as it starts one, so a test can tell which items the job
(or an interactive refinement) generated, and in what order; `gate` (an Event) holds every
generation before its first token until set (or cancelled).
"""

from __future__ import annotations

import threading
import time

from cap_app.backends import priority
from cap_app.backends.base import Generation, PromptSize, StreamChunk

PROGRAM_TEXT = "```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```"


class SlowBackend:
    name = "stub"
    description = "slow stub"

    def __init__(self, token_delay_s: float = 0.0, gate: threading.Event | None = None, too_long: str = ""):
        self.token_delay_s = token_delay_s
        self.gate = gate
        self.too_long = too_long  # a conversation holding this text fills the model's context
        self.started: list[str] = []  # the first user message of each conversation, as generation began
        self.interactive_seen: list[int] = []  # interactive refinements in flight as each began (the gate)
        self._lock = threading.Lock()

    def prompt_size(self, conversation) -> PromptSize:
        if self.too_long and self.too_long in _question(conversation):
            return PromptSize(8192, 8192)
        return PromptSize(None, None)

    def generate_batch(self, conversations, config, *, cancel=None):
        chunks = list(self.generate_stream(conversations, config, cancel=cancel))
        return chunks[-1].generations if chunks and chunks[-1].generations is not None else [[] for _ in conversations]

    def generate_stream(self, conversations, config, *, cancel=None):
        for conversation in conversations:
            with self._lock:
                self.started.append(_question(conversation))
                self.interactive_seen.append(priority.interactive_in_flight())
        while self.gate is not None and not self.gate.wait(0.01):
            if cancel is not None and cancel.is_set():
                return
        pieces = [PROGRAM_TEXT[i : i + 8] for i in range(0, len(PROGRAM_TEXT), 8)]
        for count, piece in enumerate(pieces, 1):
            if cancel is not None and cancel.is_set():
                return
            time.sleep(self.token_delay_s)
            for row in range(len(conversations)):
                yield StreamChunk(row, piece, tokens=count)
        generation = Generation(PROGRAM_TEXT, None, len(pieces), -0.1, "program_end")
        yield StreamChunk(-1, "", generations=[[generation] * config.n for _ in conversations])


def _question(conversation) -> str:
    user = next((m["content"] for m in conversation if m.get("role") == "user"), "")
    return user
