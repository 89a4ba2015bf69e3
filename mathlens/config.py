"""Dataclass configs from dicts / TOML files, validated field by field.

Every error names the field, the value and what is allowed, and is a :class:`MathlensError`.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mathlens.errors import MathlensError

#: the largest seed: seeds go to torch, NumPy and Python's random alike; NumPy's legacy generators take 0 … 2**32 − 1
MAX_SEED = 2**32 - 1

T = TypeVar("T")


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrongly typed values are errors.

    Value-range checks belong in the dataclass's ``__post_init__`` (raise MathlensError there).
    """
    if not isinstance(data, dict):
        raise MathlensError(f"{where}: expected a table of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MathlensError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if not _type_ok(value, tp):
            raise MathlensError(f"{where}: {key} = {value!r} is invalid (expected {_describe(tp)})")
        if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp)):
            value = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except MathlensError:
        raise
    except (TypeError, ValueError) as e:
        raise MathlensError(f"{where}: {e}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing, unreadable or malformed file is a MathlensError."""
    path = Path(path)
    if not path.is_file():
        raise MathlensError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MathlensError(f"config file is not UTF-8 text: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise MathlensError(f"config file {path} is not valid TOML: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain, JSON-ready dict."""
    return dataclasses.asdict(obj)
