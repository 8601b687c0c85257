"""Readers: turn a SOURCE (folder, glob, CSV or JSONL listing) into an ordered list of gallery items."""

from __future__ import annotations

import csv
import glob as globlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir.errors import InputError
from zscir.utils.io import read_jsonl_objects

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    """One gallery image: a stable id (unique in the index), where it lives, and free metadata."""

    id: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "meta": self.meta}


def read_source(source: str | Path) -> list[Item]:
    """Items of a folder (recursive, sorted; ids are paths relative to it), a glob pattern (sorted; ids are
    the matched paths), or a .csv / .jsonl listing with a `path` column (optional `id`; every other column is
    metadata; relative paths are relative to the listing's folder)."""
    s = str(source)
    p = Path(s).expanduser()
    if p.is_dir():
        items = _read_folder(p)
    elif p.is_file() and p.suffix.lower() == ".csv":
        items = _read_csv(p)
    elif p.is_file() and p.suffix.lower() in (".jsonl", ".ndjson"):
        items = _read_jsonl(p)
    elif any(ch in s for ch in "*?["):
        matches = sorted(m for m in globlib.glob(s, recursive=True) if Path(m).is_file())
        if not matches:
            raise InputError(f"{s}: the pattern matches no file")
        items = [Item(id=m, path=str(Path(m).resolve())) for m in matches]
    elif p.is_file():
        raise InputError(f"{p}: expected a folder, a glob pattern, or a .csv/.jsonl listing")
    else:
        raise InputError(f"{p}: no such folder or file")
    _check_unique(items, s)
    return items


def _read_folder(root: Path) -> list[Item]:
    files = sorted(f for f in root.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise InputError(f"{root}: the folder is empty (no image to index)")
    if not images:
        raise InputError(
            f"{root}: no image files among {len(files)} file(s) (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    base = root.resolve()
    return [Item(id=f.relative_to(root).as_posix(), path=str(base / f.relative_to(root))) for f in images]


def _row_item(row: dict[str, Any], base: Path, where: str) -> Item:
    path = row.get("path")
    if not isinstance(path, str) or not path.strip():
        raise InputError(f"{where}: missing 'path'")
    full = Path(path).expanduser()
    if not full.is_absolute():
        full = base / full
    item_id = row.get("id")
    item_id = path if item_id is None or item_id == "" else str(item_id)
    meta = {k: v for k, v in row.items() if k not in ("path", "id")}
    return Item(id=item_id, path=str(full.resolve()), meta=meta)


def _read_csv(path: Path) -> list[Item]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV listing needs a 'path' column (found {reader.fieldnames})")
        items = [_row_item(row, path.parent, f"{path}:{i + 2}") for i, row in enumerate(reader)]
    if not items:
        raise InputError(f"{path}: the listing has no rows")
    return items


def _read_jsonl(path: Path) -> list[Item]:
    items = [_row_item(row, path.parent, f"{path}:{n}") for n, row in read_jsonl_objects(path, "with a 'path'")]
    if not items:
        raise InputError(f"{path}: the listing has no rows")
    return items


def _check_unique(items: list[Item], source: str) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise InputError(f"{source}: id {it.id!r} appears more than once; ids must be unique")
        seen.add(it.id)
