"""Messages as the prompt text a model reads: its tokenizer's chat template, else plain text.

One renderer for everything that turns a conversation into text for a Hugging Face tokenizer: the
transformers backend, token counts, and the training rows (`engine/prompts.format_prompt`).
"""

from __future__ import annotations


def render_messages(tokenizer, messages: list[dict[str, str]]) -> str:
    """Messages as prompt text: the chat template when the tokenizer has one, plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\nProgram:\n"
