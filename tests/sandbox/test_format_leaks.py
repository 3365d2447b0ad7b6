"""`format`, `str.format`, `str.format_map` and `string.Formatter`: format fields that walk
attributes or items of their arguments (CVE-2023-41039, GHSA-hp3v-5vw7-fx9w) are refused;
plain formatting keeps working because model programs use it."""

from __future__ import annotations

from tests.sandbox.hostile import cases, stopped_test

FIELD_ATTRIBUTE_WALK = "print('{0.__class__.__base__}'.format(1))"
FIELD_GLOBALS_WALK = "def f():\n    pass\nprint('{0.__globals__}'.format(f))"
FIELD_ITEM_WALK = "print('{0[0]}'.format([1]))"
FIELD_KEYWORD_WALK = "print('{x.real}'.format(x=1))"
NESTED_SPEC_WALK = "print('{0:{1.__class__}}'.format(1, 2))"
UNBOUND_STR_FORMAT = "print(str.format('{0.__class__}', 1))"
FORMAT_METHOD_KEPT = "f = 'x{0.__class__}'.format\nprint(f(1))"
FORMAT_MAP = "print('{a}'.format_map({'a': 1}))"
FORMAT_BUILTIN_SPEC = "print(format(1, '{0.__class__}'))"
STRING_MODULE = "import string\nprint(string.Formatter().format('{0.__class__}', 1))"
FROM_STRING_FORMATTER = "from string import Formatter"
FSTRING_DUNDER = "x = 1\nprint(f'{x.__class__}')"
FSTRING_NESTED_SPEC = "x = 1\nprint(f'{x:{x.__class__}}')"
FORMAT_CLOSURE_ATTRIBUTES = "f = '{}'.format\nprint(f.func)"

CASES = cases(
    (FIELD_ATTRIBUTE_WALK, "error", "line 1: attribute or item access inside format fields is not allowed"),
    (FIELD_GLOBALS_WALK, "error", "line 3: attribute or item access inside format fields is not allowed"),
    (FIELD_ITEM_WALK, "error", "line 1: attribute or item access inside format fields is not allowed"),
    (FIELD_KEYWORD_WALK, "error", "line 1: attribute or item access inside format fields is not allowed"),
    (NESTED_SPEC_WALK, "error", "line 1: attribute or item access inside format fields is not allowed"),
    (UNBOUND_STR_FORMAT, "error", "line 1: attribute or item access inside format fields is not allowed"),
    (FORMAT_METHOD_KEPT, "error", "line 2: attribute or item access inside format fields is not allowed"),
    (FORMAT_MAP, "error", "line 1: access to attribute 'format_map' is not allowed"),
    (
        FORMAT_BUILTIN_SPEC,
        "error",
        "line 1: ValueError: Invalid format specifier '{0.__class__}' for object of type 'int'",
    ),
    (STRING_MODULE, "rejected", "line 1: import of 'string' is not allowed"),
    (FROM_STRING_FORMATTER, "rejected", "line 1: import of 'string' is not allowed"),
    (FSTRING_DUNDER, "rejected", 'line 2: "__class__" is an invalid attribute name because it starts with "_"'),
    (FSTRING_NESTED_SPEC, "rejected", 'line 2: "__class__" is an invalid attribute name because it starts with "_"'),
    (FORMAT_CLOSURE_ATTRIBUTES, "error", "line 2: AttributeError: 'function' object has no attribute 'func'"),
)


test_format_leak_is_stopped = stopped_test(CASES)


PLAIN_FORMATTING = """\
price = 3.14159
print('{:.2f}'.format(price), '{0} and {1}'.format('a', 'b'), '{name}!'.format(name='hi'))
print(f'{price:.1f}', format(price, '.3f'), '%.2f' % price, '{0:{1}}'.format(price, '.0f'))
"""


def test_plain_formatting_still_works(run_hostile):
    result = run_hostile(PLAIN_FORMATTING)
    assert result.status == "ok", result.error
    assert result.stdout == "3.14 a and b hi!\n3.1 3.142 3.14 3\n"
