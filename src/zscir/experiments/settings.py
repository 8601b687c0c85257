"""Experiment settings as data: one TOML file per world size (settings/<size>.toml), one table per trainer or
evaluation step. `--settings FILE` on `zscir demo` replaces the file; a recipe reads its table with
`ctx.settings.table(name)` and builds its trainer config with `ctx.settings.config(name, ConfigClass)`.

The `[engine]` table holds training-engine settings (`zscir.train.engine.EngineSettings` fields, e.g.
`precision`) that every trainer's config takes unless its own table says otherwise; `[evaluation]` holds the
precision the world evaluator embeds galleries and queries in (default fp32)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zscir.errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SETTINGS_DIR = Path(__file__).parent / "settings"
ENGINE_TABLE = "engine"
EVALUATION_TABLE = "evaluation"  # precision: the towers' autocast while the world evaluator embeds
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
        """`cls()` with the `[engine]` table's fields it has, table `name`, the experiment's seed and device, then
        `overrides`; an unknown key in the table is an error naming the file (a typo must not fall back silently
        to a default). Precision "auto" is resolved for the experiment's device."""
        known = {f.name for f in fields(cls)}
        own = self.table(name)
        unknown = sorted(set(own) - known)
        if unknown:
            raise InputError(f"{self.source} [{name}]: unknown setting(s) {unknown} for {cls.__name__}")
        values = {**{k: v for k, v in self.table(ENGINE_TABLE).items() if k in known}, **own}
        extra = {k: v for k, v in (("seed", self.seed), ("device", self.device)) if k in known}
        if values.get("precision") == "auto":  # resolved here: an artefact's key and record say what ran
            from zscir.utils.runtime import resolve_precision

            values["precision"] = resolve_precision("auto", self.device)
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
    from zscir.train.engine import PRECISIONS, EngineSettings

    evaluation = tables.get(EVALUATION_TABLE, {})
    if set(evaluation) - {"precision"} or evaluation.get("precision", "fp32") not in PRECISIONS:
        raise InputError(f"{file} [{EVALUATION_TABLE}]: only precision = one of {', '.join(PRECISIONS)}, got {evaluation}")
    engine_keys = {f.name for f in fields(EngineSettings)}
    unknown = sorted(set(tables.get(ENGINE_TABLE, {})) - engine_keys)
    if unknown:
        raise InputError(f"{file} [{ENGINE_TABLE}]: unknown setting(s) {unknown} (known: {sorted(engine_keys)})")
    return Settings(tables, str(file), seed, device)
