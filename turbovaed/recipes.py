"""Strict TOML recipes -> nested dataclasses. Unknown keys and wrong types fail with the key's path,
before any work starts (shared by distill/ and export/ recipes)."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from turbovaed.io import InputError

T = TypeVar("T")


def _check(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, key)
            except InputError as err:
                errors.append(str(err))
        raise InputError(errors[0])
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"recipe key '{key}' must be a table, got {type(value).__name__}")
        return build(hint, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise InputError(f"recipe key '{key}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise InputError(f"recipe key '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type[T], data: dict, prefix: str = "") -> T:
    """Instantiate dataclass `cls` from a dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{prefix}] " if prefix else ""
        raise InputError(f"unknown recipe key(s) {where}{', '.join(unknown)}; expected some of {sorted(names)}")
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"recipe {'[' + prefix + '] ' if prefix else ''}is incomplete: {err}") from err


def load_toml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"recipe {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"recipe {path} is not valid TOML: {err}") from err
    return build(cls, data)


def to_toml(obj: Any) -> str:
    """Render a recipe dataclass back to TOML (saved next to what it produced)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines, tables = [], []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            tables.append((f.name, v))
        elif v is not None:
            lines.append(f"{f.name} = {value(v)}")
    for name, sub in tables:
        lines += ["", f"[{name}]"] + [f"{g.name} = {value(getattr(sub, g.name))}" for g in dataclasses.fields(sub)
                                      if getattr(sub, g.name) is not None]
    return "\n".join(lines) + "\n"
