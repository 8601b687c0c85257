"""Listing sources: CSV/TSV/JSONL, one row per image, the image/caption/id columns named or guessed."""


import csv
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from zscir.data.base import CAPTION_COLUMNS, ID_COLUMNS, IMAGE_COLUMNS, Record, Source, SourceConfig
from zscir.errors import InputError
from zscir.utils.io import iter_jsonl_objects, utf8_lines


@overload
def _pick(name: str | None, fields: Sequence[str], candidates: Sequence[str], what: str, where: str,
          flag: str, required: Literal[True]) -> str: ...
@overload
def _pick(name: str | None, fields: Sequence[str], candidates: Sequence[str], what: str, where: str,
          flag: str, required: bool) -> str | None: ...
def _pick(name: str | None, fields: Sequence[str], candidates: Sequence[str], what: str, where: str,
          flag: str, required: bool) -> str | None:
    if name is not None:
        if name not in fields:
            raise InputError(f"{where}: no column {name!r} ({flag}); the columns are {', '.join(fields) or 'none'}")
        return name
    lower = {f.lower(): f for f in fields}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise InputError(f"{where}: no {what} column (looked for {', '.join(candidates)}; the columns are "
                         f"{', '.join(fields) or 'none'}); name it with {flag}")
    return None


def iter_jsonl(path: str | Path, expected: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Streamed `(line number, object)` for each non-blank line (zscir.utils.io.iter_jsonl_objects)."""
    return iter_jsonl_objects(path, expected)


class ListingSource(Source):
    """A CSV/TSV (header row) or JSONL listing, one image per row, streamed (never held in memory).

    Image column: `config.image_column`, else the first of IMAGE_COLUMNS present; caption column likewise
    (CAPTION_COLUMNS; optional); id column likewise (ID_COLUMNS; default: the image path as written). Every
    other column becomes metadata. Relative image paths are relative to the listing's folder."""

    kind = "listing"

    def __init__(self, spec: str, path: Path, config: SourceConfig) -> None:
        super().__init__(spec, config)
        self.path = path
        self.base = Path(os.path.abspath(path.parent))
        self.format = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv"
        self.columns = self._columns()

    def _rows(self, expected: str = "with an image path") -> Iterator[tuple[int, dict[str, Any]]]:
        if self.format == "jsonl":
            yield from iter_jsonl(self.path, expected)
            return
        delim = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with open(self.path, "rb") as f:
            reader = csv.DictReader(utf8_lines(f, self.path), delimiter=delim)
            try:
                for row in reader:
                    if None in row:
                        raise InputError(f"{self.path}:{reader.line_num}: more fields than the header has")
                    yield reader.line_num, row
            except csv.Error as e:
                raise InputError(f"{self.path}:{reader.line_num}: malformed CSV ({e})") from None

    def _columns(self) -> tuple[str, str | None, str | None]:
        cfg, where = self.config, str(self.path)
        if self.format == "csv":
            with open(self.path, "rb") as f:
                reader = csv.reader(utf8_lines(f, self.path), delimiter="\t" if self.path.suffix.lower() == ".tsv" else ",")
                fields = next(reader, None)
            if not fields:
                raise InputError(f"{self.path}: empty listing (no header row)")
        else:
            first = next(self._rows(), None)
            if first is None:
                raise InputError(f"{self.path}: the listing has no rows")
            fields = list(first[1])
        img = _pick(cfg.image_column, fields, IMAGE_COLUMNS, "image path", where, "--image-column", True)
        cap = _pick(cfg.caption_column, fields, CAPTION_COLUMNS, "caption", where, "--caption-column", False)
        ident = _pick(cfg.id_column, fields, ID_COLUMNS, "id", where, "--id-column", False)
        return img, cap, ident

    @property
    def has_captions(self) -> bool:
        return self.columns[1] is not None

    def records(self, unit: Any = None) -> Iterator[Record]:
        img, cap, ident = self.columns
        for n, row in self._rows(f"with a {img!r}"):
            where = f"{self.path}:{n}"
            path = row.get(img)
            if not isinstance(path, str) or not path.strip():
                raise InputError(f"{where}: missing {img!r}")
            path = path.strip()
            if "://" in path:
                full = path  # decoding reports it: URLs are not downloaded here
            else:
                p = Path(path).expanduser()
                full = os.path.normpath(p if p.is_absolute() else self.base / p)
            key = row.get(ident) if ident else None
            key = path if key is None or key == "" else str(key)
            caption = None
            if cap is not None:
                c = row.get(cap)
                caption = " ".join(c.split()) if isinstance(c, str) else (None if c is None else str(c))
            meta = {k: v for k, v in row.items() if k not in (img, ident)}
            yield Record(key=key, location=full, caption=caption or None, meta=meta)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"listing\0{os.path.abspath(self.path)}\0{self.config.digest()}\n".encode())
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()[:16]
