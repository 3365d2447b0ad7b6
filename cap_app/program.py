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
