"""Strict dataclass configuration: configs round-trip through JSON, and unknown keys raise."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from zscir.errors import CheckpointError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain JSON-able dict (nested dataclasses included)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from `data`, refusing keys the dataclass does not have (a misspelt key is an error)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown config keys {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)  # type: ignore[arg-type]
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)
