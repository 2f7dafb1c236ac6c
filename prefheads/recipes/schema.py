"""Typed YAML configs: build nested dataclasses from plain dicts, with errors that name the key.

A recipe file is plain YAML; :func:`build` turns it into the recipe's dataclass, checking every
key and type on the way (unknown keys are errors, with close names suggested), so a typo fails
before any weights load. :func:`apply_overrides` applies ``dotted.key=value`` CLI overrides to
the raw dict first (CLI > file > dataclass defaults), and :func:`to_plain` goes back to a dict
for the resolved config saved beside the outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe config is invalid; the message starts with ``<file>: <dotted.key>:``."""


def _where(source: str, path: str) -> str:
    return f"{source}: {path}" if path else source


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, source: str, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(value, a, source, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if len(errors) == 1 else
                          f"{_where(source, path)}: {value!r} is none of {[_type_name(a) for a in args]}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{_where(source, path)}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and hasattr(tp, "from_shorthand") and not isinstance(value, dict):
            value = tp.from_shorthand(value)  # e.g. a bare task name for a data source
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, path)}: expected a mapping for {tp.__name__}, got {value!r}")
        return build(tp, value, source, path)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{_where(source, path)}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_convert(v, inner, source, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, path)}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, source, f"{path}.{k}"): _convert(v, vt, source, f"{path}.{k}")
                for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(source, path)}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(source, path)}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(source, path)}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None or isinstance(value, bool):
            raise ConfigError(f"{_where(source, path)}: expected a string, got {value!r}")
        return str(value)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{_where(source, path)}: expected null, got {value!r}")
        return None
    raise ConfigError(f"{_where(source, path)}: unsupported field type {_type_name(tp)}")  # pragma: no cover


def build(cls: type, data: dict[str, Any], source: str = "<config>", path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, recursively, validating keys and types.

    Args:
        cls: A dataclass (its fields may be dataclasses, lists, dicts, unions, literals).
        data: The raw mapping (from YAML).
        source: File name for error messages.
        path: Dotted key of ``data`` inside the file (for nested calls).

    Raises:
        ConfigError: For an unknown key, a wrong type, or a value the dataclass's
            ``__post_init__`` rejects; the message names ``source`` and the dotted key.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{_where(source, '.'.join(p for p in (path, str(k)) if p))}: unknown key{hint} "
                          f"(known keys of {cls.__name__}: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], source, f"{path}.{name}" if path else name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise ConfigError(f"{_where(source, path or cls.__name__)}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{_where(source, path or cls.__name__)}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"stages.sft.steps=10"`` -> ``(["stages", "sft", "steps"], 10)``; the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (dotted keys for nested fields)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``dotted.key=value`` override set (list items by index)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[_index(node, k, text)]
                continue
            if node.get(k) is None:  # absent from the file: the nested default is built from {}
                node[k] = {}
            node = node[k]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: i + 1])} is a value, not a section")
        if isinstance(node, list):
            node[_index(node, keys[-1], text)] = value
        else:
            node[keys[-1]] = value
    return out


def _index(node: list, key: str, text: str) -> int:
    try:
        i = int(key)
        node[i]
        return i
    except (ValueError, IndexError):
        raise ConfigError(f"override {text!r}: {key!r} is not an index of a {len(node)}-item list") from None


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts / lists (YAML-ready), field order kept."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    """YAML text of a dataclass tree (or plain data), in field order."""
    return yaml.safe_dump(to_plain(obj), sort_keys=False, allow_unicode=True, width=110)
