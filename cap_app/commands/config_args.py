"""Turn a config dataclass into argparse options and back.

Every command has one config dataclass whose fields carry their help text
(`field(default=..., metadata={"help": ...})`). The CLI parses into it and the Gradio handlers
build the same dataclass from widgets, so both paths reach the library with the same object.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """Add one `--option` per field of `cls` (bools become `--flag/--no-flag`)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind is bool:
            group.add_argument(
                _option(f.name),
                action=argparse.BooleanOptionalAction,
                help=f"{help_text} (default: {default})",
                **kwargs,
            )
            continue
        choices = f.metadata.get("choices")
        origin = typing.get_origin(kind)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind not in (int, float, str):
            kind = str
        group.add_argument(
            _option(f.name), type=kind, choices=choices, help=f"{help_text} (default: {default})", **kwargs
        )


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build `cls` from parsed args; options not given keep the dataclass default."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)
