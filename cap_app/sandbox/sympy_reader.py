"""sympy's text parser, closed: in the zygote that serves sympy programs it reads numbers only.

sympy turns text into expressions with `parse_expr`, which `eval`s it with `__import__` in
reach. Text reaches it from programs by routes nobody can list in full: `sympify` converts any
iterable element by element (a deque, a zip, a dict view), and sympy re-parses strings it made
from a program's objects (`nsimplify` formats `str(constant)`, which for a Symbol is any name
the program chose). So the parser itself is replaced, in every module that bound it, by
`read_arithmetic`: numbers, + - * / **, parentheses and a few named constants and functions,
read token by token and built with sympy's own classes, never evaluated. That keeps what sympy
needs of its parser (`nsimplify` reads back mpmath's `identify` formulas such as
'((6-sqrt(0))/18)') and refuses everything else with one message. The code gate (codegate.py)
stands behind it: in a child, no text becomes code even if a route to `eval` remained.

Only in the zygote that serves sympy programs: the app itself parses answers with sympy
(math-verify).
"""

from __future__ import annotations

import functools
import io
import re
import sys
import tokenize
from collections.abc import Callable, Iterator
from typing import Any

from cap_app.sandbox.policy import PolicyError

SYMPY_READS_NO_TEXT = "sympy does not read text in the sandbox; build expressions from symbols()"
MAX_TEXT_CHARS = 2_000  # what sympy formats for itself is short; nested text could exhaust the stack
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # decimal only: no 0x, 1_0, 1j


class _Tokens:
    """The text's tokens (numbers, operators, names), one at a time, with one of look-ahead."""

    def __init__(self, text: str):
        self._tokens = self._significant(text)
        self.current = next(self._tokens)

    @staticmethod
    def _significant(text: str) -> Iterator[tokenize.TokenInfo]:
        skipped = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT}
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type not in skipped:
                yield token

    def take(self, operator: str | None = None) -> tokenize.TokenInfo:
        token = self.current
        if operator is not None and not (token.type == tokenize.OP and token.string == operator):
            raise PolicyError(SYMPY_READS_NO_TEXT)
        self.current = next(self._tokens, token)
        return token

    def at(self, *operators: str) -> bool:
        return self.current.type == tokenize.OP and self.current.string in operators


@functools.cache
def _vocabulary() -> tuple[Any, dict[str, Any], dict[str, Callable[..., Any]]]:
    """sympy, and the names the reader knows: the constants and functions of mpmath's formulas."""
    import sympy  # the zygote has it loaded already

    constants = {"pi": sympy.pi, "E": sympy.E, "GoldenRatio": sympy.GoldenRatio}
    constants |= {"EulerGamma": sympy.EulerGamma, "Catalan": sympy.Catalan}
    return sympy, constants, {"sqrt": sympy.sqrt, "exp": sympy.exp, "log": sympy.log}


class _Reader:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
    unary := ('+'|'-') unary | power; power := atom ('**' unary)?;
    atom := number | constant | function '(' expr ')' | '(' expr ')'."""

    def __init__(self, text: str, evaluate: bool):
        self.sympy, self.constants, self.functions = _vocabulary()
        self.evaluate = evaluate
        self.tokens = _Tokens(text)

    def read(self) -> Any:
        value = self.expr()
        if self.tokens.current.type != tokenize.ENDMARKER:
            raise PolicyError(SYMPY_READS_NO_TEXT)
        return value

    def expr(self) -> Any:
        value = self.term()
        while self.tokens.at("+", "-"):
            sign = 1 if self.tokens.take().string == "+" else -1
            value = self.sympy.Add(value, self._times(sign, self.term()), evaluate=self.evaluate)
        return value

    def term(self) -> Any:
        value = self.unary()
        while self.tokens.at("*", "/"):
            exponent = 1 if self.tokens.take().string == "*" else -1
            value = self._times(value, self.sympy.Pow(self.unary(), exponent, evaluate=self.evaluate))
        return value

    def unary(self) -> Any:
        if self.tokens.at("+", "-"):
            sign = 1 if self.tokens.take().string == "+" else -1
            return self._times(sign, self.unary())
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if self.tokens.at("**"):
            self.tokens.take()
            return self.sympy.Pow(base, self.unary(), evaluate=self.evaluate)
        return base

    def atom(self) -> Any:
        token = self.tokens.take()
        if token.type == tokenize.NUMBER and _NUMBER.fullmatch(token.string):
            return self.sympy.Integer(token.string) if token.string.isdigit() else self.sympy.Float(token.string)
        if token.type == tokenize.NAME and token.string in self.constants:
            return self.constants[token.string]
        if token.type == tokenize.NAME and token.string in self.functions:
            self.tokens.take("(")
            argument = self.expr()
            self.tokens.take(")")
            return self.functions[token.string](argument, evaluate=self.evaluate)
        if token.type == tokenize.OP and token.string == "(":
            value = self.expr()
            self.tokens.take(")")
            return value
        raise PolicyError(SYMPY_READS_NO_TEXT)

    def _times(self, left: Any, right: Any) -> Any:
        return self.sympy.Mul(left, right, evaluate=self.evaluate)


def read_arithmetic(text: Any, *args: Any, evaluate: bool = True, **kwargs: Any) -> Any:
    """What `parse_expr(text, ...)` becomes in the sandbox: arithmetic on numbers, or a PolicyError
    (not a TypeError or ValueError, which sympy catches and rewords: the program is told why).
    The other arguments (local names, transformations) are ignored: no name they define is read."""
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        raise PolicyError(SYMPY_READS_NO_TEXT)
    try:
        return _Reader(text, bool(evaluate)).read()
    except (tokenize.TokenError, SyntaxError, RecursionError) as exc:
        raise PolicyError(SYMPY_READS_NO_TEXT) from exc


def _refuse_text(*args: Any, **kwargs: Any) -> Any:
    raise PolicyError(SYMPY_READS_NO_TEXT)


def close_sympy_parser() -> None:
    """Replace sympy's parser in every module that bound it: `parse_expr` reads arithmetic only;
    its other entry points (which evaluate or build code from text) refuse. `sympify` imports
    `parse_expr` at each call, so it meets the replacement too."""
    from sympy.parsing import sympy_parser

    refused = (sympy_parser.eval_expr, sympy_parser.stringify_expr, sympy_parser.evaluateFalse)
    originals = (sympy_parser.parse_expr, *refused)  # noqa: F841 (held, so their ids stay theirs while replaced)
    replacements = {id(sympy_parser.parse_expr): read_arithmetic} | {id(function): _refuse_text for function in refused}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            replacement = replacements.get(id(value))
            if replacement is not None:
                namespace[name] = replacement
