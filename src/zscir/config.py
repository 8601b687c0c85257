"""Strict dataclass configuration: configs round-trip through JSON, and unknown keys raise."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from zscir.errors import CheckpointError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain JSON-able dict (nested dataclasses included)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build `cls` from `data`, refusing keys the dataclass does not have (a misspelt key is an error) and
    values of the wrong type ("96" or 96.5 for an int, a list for a dict...); then the dataclass's own
    `validate()` (if it has one) checks relations between fields. Every refusal is a CheckpointError naming
    the field. This is the one place a config read from a file is checked."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: expected an object of settings, got {_describe(data)}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown config keys {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{name}.{key}")  # type: ignore[arg-type]
        else:
            if not _matches(value, hint):
                raise CheckpointError(f"{name}.{key}: expected {_hint_name(hint)}, got {_describe(value)}")
            if isinstance(value, list) and typing.get_origin(hint) is tuple:
                value = tuple(value)
        kwargs[key] = value
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: {e}") from None
    return obj


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (unknown hints fit anything)."""
    if hint is None or hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        if origin is tuple and args:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
