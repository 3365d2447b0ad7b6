"""The `transformers` backend: the in-process model of `cap_app.models.loading` and `cap_app.backends.generation`.

Conversations are rendered with the model's own chat template here; generation goes through the
`cap_app.backends.generation` module attributes, so a Space's `spaces.GPU` wrappers (ui/hosting.py) apply.
"""

from __future__ import annotations

from cap_app.backends import generation
from cap_app.backends.base import PromptSize
from cap_app.engine.prompts import render_messages
from cap_app.models.loading import LoadedModel


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
        return generation.generate_batch(self.loaded, self._prompts(conversations), config, cancel=cancel)

    def generate_stream(self, conversations, config, *, cancel=None):
        return generation.generate_stream(self.loaded, self._prompts(conversations), config, cancel=cancel)

    def prompt_size(self, conversation) -> PromptSize:
        """The prompt's tokens and the positions the model was trained for (`max_position_embeddings`;
        past them a model's output degrades or fails)."""
        tokenizer = self.loaded.tokenizer
        tokens = len(tokenizer(render_messages(tokenizer, conversation), add_special_tokens=False)["input_ids"])
        context = getattr(getattr(self.loaded.model, "config", None), "max_position_embeddings", None)
        return PromptSize(tokens, context if isinstance(context, int) and context > 0 else None)
