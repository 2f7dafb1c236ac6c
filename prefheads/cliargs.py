"""Turn a config dataclass into typer options: the dataclass is the CLI schema.

Each field becomes ``--field-name`` with its type, default, and the help text from the
dataclass docstring's ``Attributes:`` section, so the CLI, the Python API and recipe files can
never drift apart. ``--help`` shows each field's first sentence (readable in 80 columns); the
whole text is kept as the command's ``option_docs`` for ``docs/cli.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer


def field_docs(cls: type) -> dict[str, str]:
    """``{field: help}`` parsed from a Google-style ``Attributes:`` docstring section."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    current = None
    for line in section.splitlines():
        m = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip().replace("``", "")
        elif current and line.strip():
            out[current] += " " + line.strip().replace("``", "")
    return out


def first_sentence(text: str) -> str:
    """The first sentence of a help text (``e.g.`` and ``i.e.`` do not end one)."""
    m = re.search(r"(?<!e\.g)(?<!i\.e)\.\s", text + " ")
    return text[: m.start() + 1] if m else text


def _option_type(tp: Any) -> Any:
    """What typer parses a field of type ``tp`` as; the dataclass converts and checks the value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list or any(typing.get_origin(a) is list for a in args):
        return typing.Optional[list[str]]
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1 or typing.get_origin(rest[0]) is typing.Literal:  # int | "auto": one string
            return typing.Optional[str] if type(None) in args else str
    return tp


def command_from_dataclass(cls: type, run: Callable[[Any], None], skip: tuple[str, ...] = ()) -> Callable[..., None]:
    """A function whose signature holds one typer option per field of ``cls``; calls ``run(cls(**kw))``.

    Its ``option_docs`` maps each option to the field's whole help text (``--help`` shows the
    first sentence).
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        tp = _option_type(hints[f.name])
        if typing.get_origin(tp) is not list and list in [typing.get_origin(a) for a in typing.get_args(tp)]:
            default = default or None
        ann = Annotated[tp, typer.Option(help=first_sentence(docs.get(f.name, "")))]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))

    def command(**kwargs: Any) -> None:
        kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
        run(cls(**kwargs))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = run.__doc__
    command.option_docs = {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}  # type: ignore[attr-defined]
    return command
