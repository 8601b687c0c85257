"""Experiment settings as data: one TOML file per world size (settings/<size>.toml), one table per trainer or
evaluation step. `--settings FILE` on `zscir demo` replaces the file; a recipe reads its table with
`ctx.settings.table(name)` and builds its trainer config with `ctx.settings.config(name, ConfigClass)`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zscir.errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SETTINGS_DIR = Path(__file__).parent / "settings"
C = TypeVar("C", bound="DataclassInstance")  # a trainer's config dataclass


@dataclass(frozen=True)
class Settings:
    """The settings of one experiment size: {table: {key: value}}, plus where they came from."""

    tables: dict[str, dict[str, Any]]
    source: str
    seed: int = 0
    device: str = ""

    def table(self, name: str) -> dict[str, Any]:
        """A copy of table `name` ({} when the file has none: the trainer's defaults apply)."""
        return dict(self.tables.get(name, {}))

    def config(self, name: str, cls: type[C], **overrides: Any) -> C:
        """`cls()` with table `name`, the experiment's seed and device, then `overrides`; an unknown key in the
        table is an error naming the file (a typo must not fall back silently to a default)."""
        known = {f.name for f in fields(cls)}
        values = self.table(name)
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{self.source} [{name}]: unknown setting(s) {unknown} for {cls.__name__}")
        extra = {k: v for k, v in (("seed", self.seed), ("device", self.device)) if k in known}
        return replace(cls(), **{**values, **extra, **overrides})


def load_settings(size: str, seed: int = 0, device: str = "", path: str | Path | None = None) -> Settings:
    """The settings for world `size` (settings/<size>.toml), or those of `path`."""
    file = Path(path) if path else SETTINGS_DIR / f"{size}.toml"
    if not file.is_file():
        sizes = ", ".join(sorted(p.stem for p in SETTINGS_DIR.glob("*.toml")))
        raise InputError(f"{file}: no such settings file" + ("" if path else f" (sizes with settings: {sizes})"))
    try:
        tables = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: not a valid TOML settings file ({e})") from None
    bad = [k for k, v in tables.items() if not isinstance(v, dict)]
    if bad:
        raise InputError(f"{file}: top-level keys {bad} must be tables ([name])")
    return Settings(tables, str(file), seed, device)
