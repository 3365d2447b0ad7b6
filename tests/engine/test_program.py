"""Pulling the program out of model text."""

import pytest

from cap_app.engine.program import extract_program

FENCED = "Here is the program:\n```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```\nIt prints 18."
UNTAGGED_FENCE = "```\nx = 3\nprint(x)\n```"
PY_TAG = "```py\nx = 3\nprint(x)\n```"
CUT_OFF = "```python\nx = 3\nprint(x"  # the token limit hit before the block closed
OTHER_LANGUAGE_FIRST = "```text\nsome output\n```\n```python\nb = 2\nprint(b)\n```"
TWO_PROGRAMS = "```python\na = 1\n```\nor\n```python\na = 2\n```"
BARE_WITH_PROSE = "Sure! Here is the code:\nx = 3\nprint(x * 2)\nThis prints 6."
SPECIAL_TOKENS = "<|im_start|>```python\nx = 1\n```<|im_end|>"
WINDOWS_NEWLINES = "```python\r\nx = 1\r\nprint(x)\r\n```"
PROSE_ONLY = "I think the answer is five."


@pytest.mark.parametrize(
    "text, program",
    [
        (FENCED, "eggs = 16 - 3 - 4\nprint(eggs * 2)"),
        (UNTAGGED_FENCE, "x = 3\nprint(x)"),
        (PY_TAG, "x = 3\nprint(x)"),
        (CUT_OFF, "x = 3\nprint(x"),
        (OTHER_LANGUAGE_FIRST, "b = 2\nprint(b)"),
        (TWO_PROGRAMS, "a = 1"),
        (BARE_WITH_PROSE, "x = 3\nprint(x * 2)"),
        (SPECIAL_TOKENS, "x = 1"),
        (WINDOWS_NEWLINES, "x = 1\nprint(x)"),
        (PROSE_ONLY, PROSE_ONLY),  # left for the sandbox to reject with a syntax error
        ("", ""),
    ],
)
def test_extract_program(text, program):
    assert extract_program(text) == program


def test_long_junk_without_code_is_passed_on_unchanged():
    junk = "\n".join(f"this is line {i} of prose (" for i in range(2000))
    assert extract_program(junk) == junk
