"""Readers: turn a SOURCE into an ordered list of gallery items, through the data layer (zscir.data): a
folder (recursive), a glob, a CSV/TSV/JSONL listing (configurable columns) or WebDataset tar shards (a tar,
a folder of tars, a brace pattern such as `shards/{00000..00331}.tar`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir.data.sources import IMAGE_EXTENSIONS, ListingSource, SourceConfig, TarSource, open_source
from zscir.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "Item", "read_items", "read_source"]


@dataclass(frozen=True)
class Item:
    """One gallery image: a stable id (unique in the index), where it lives (a file path, or
    `<tar path>#<member>` for an image inside a WebDataset shard; zscir.data.load_location opens both), and
    free metadata (the listing's other columns, the shard's .json, the caption when there is one)."""

    id: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "meta": self.meta}


def read_items(source: str | Path, *, image_column: str | None = None, caption_column: str | None = None,
               id_column: str | None = None) -> tuple[list[Item], list[dict[str, str]]]:
    """(items, listing problems). Items of a folder (recursive, sorted; ids are paths relative to it), a glob
    pattern (sorted; ids are the matched paths), a listing (image column `path`/`image`/`filepath`/... or
    `image_column`; optional id and caption columns; every other column is metadata; relative paths are
    relative to the listing's folder) or WebDataset shards (ids `<tar name>/<key>`, captions from `.txt`).
    Listing problems (dangling links, symlink loops, non-UTF-8 file names, truncated tars) are returned as
    `{"id", "path", "error"}` rows for the failures report."""
    s = str(source)
    src = open_source(s, config=SourceConfig(image_column=image_column, caption_column=caption_column,
                                              id_column=id_column))
    records = src.records(None, with_data=False) if isinstance(src, TarSource) else iter(src)
    items = []
    for rec in records:
        meta = dict(rec.meta)
        if rec.caption is not None and not isinstance(src, ListingSource):
            meta.setdefault("caption", rec.caption)
        items.append(Item(id=rec.key, path=rec.location, meta=meta))
    if not items:
        first = f" (first problem: {src.failures[0]['path']}: {src.failures[0]['error']})" if src.failures else ""
        raise InputError(f"{s}: the listing has no rows{first}" if isinstance(src, ListingSource)
                         else f"{s}: no image to index{first}")
    _check_unique(items, s)
    return items, list(src.failures)


def read_source(source: str | Path, **columns: str | None) -> list[Item]:
    """The items of read_items (listing problems dropped; `zscir index` reports them)."""
    return read_items(source, **columns)[0]


def _read_jsonl(path: Path) -> list[Item]:
    """A JSONL listing's items (kept for the JSONL-reader tests: errors name the file and line)."""
    return read_source(path)


def _check_unique(items: list[Item], source: str) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise InputError(f"{source}: id {it.id!r} appears more than once; ids must be unique")
        seen.add(it.id)
