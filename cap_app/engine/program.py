"""Pull the Python program out of model text.

Models answer in a ```python block (the CaP prompt asks for one), but small models also wrap it
in prose, use ``` or ```py, stop before closing the block, or write bare code. The rule, in
order: the first fenced block that looks like Python (closed or cut off by the token limit);
otherwise the longest run of lines that parses as Python once leading and trailing prose is
trimmed; otherwise the text itself, so the sandbox reports the syntax error.
"""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py"}
_SPECIAL_TOKENS = re.compile(r"<\|[a-z_]+\|>|</?s>")
_OPENING_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n", re.MULTILINE)
_PARTIAL_FENCE = re.compile(r"(?:^|\n)[ \t]*`{1,3}[A-Za-z0-9_+-]*[ \t]*$")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _trim_prose(lines: list[str]) -> str | None:
    """The code left after dropping up to 10 prose lines before and after it, or None."""
    for start in range(min(len(lines), 10)):
        if not lines[start].strip():
            continue
        for end in range(len(lines), max(start, len(lines) - 10), -1):
            code = "\n".join(lines[start:end]).strip("\n")
            if code and _parses(code) and _looks_like_code(code):
                return code
    return None


def _looks_like_code(code: str) -> bool:
    """A bare sentence like `The answer is 5` can parse as nothing useful; real code has one of these."""
    return bool(re.search(r"=|print\s*\(|\breturn\b|\bdef\b|\bimport\b", code))


def extract_program(text: str) -> str:
    """The program in `text` (see the module docstring for the rules); '' for empty text."""
    text = _SPECIAL_TOKENS.sub("", text.replace("\r\n", "\n"))
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    python_blocks = [body for tag, body in blocks if tag in _PYTHON_TAGS and body.strip()]
    if python_blocks:
        return python_blocks[0].strip("\n")
    trimmed = _trim_prose(text.splitlines())
    return trimmed if trimmed is not None else text.strip()


def streamed_program(text: str) -> str:
    """The program as far as the model has written it, for a view that shows it while it streams
    (and after a Stop): the body of its first ```python block without the fence lines, and
    without a fence line still being written, so the view never shows the model's markup."""
    text = _SPECIAL_TOKENS.sub("", text.replace("\r\n", "\n"))
    opening = _OPENING_FENCE.search(text)
    if opening is not None and opening.group(1).lower() in _PYTHON_TAGS:
        body = text[opening.end() :]
        closing = re.search(r"^[ \t]*```", body, re.MULTILINE)
        return (body[: closing.start()] if closing else _PARTIAL_FENCE.sub("", body)).rstrip("\n")
    return _PARTIAL_FENCE.sub("", text)
