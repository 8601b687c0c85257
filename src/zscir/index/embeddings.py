"""Embeddings made elsewhere as an index source: `zscir index --embeddings DIR --backbone SPEC`.

Two layouts:

    clip-retrieval   DIR/img_emb/img_emb_N.npy + DIR/metadata/metadata_N.parquet, matched by N (what
                     `clip-retrieval inference` writes); ids from the metadata's `image_path`, else `url`,
                     else `key`, else `N:row`; every other column becomes metadata
    plain            X.npy + X.jsonl (one JSON object per row: optional `id` and `path`, the rest metadata),
                     given as the .npy file or a folder of such pairs

The backbone named by --backbone must be the one that made the vectors: its dimension is checked here and
its fingerprint recorded in the manifest, so searches compose queries with it. Vectors are L2-normalised on
the way in (the index stores cosines); non-finite or all-zero rows are refused, naming the file and row."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir.errors import InputError
from zscir.index.reader import Item
from zscir.utils.io import read_jsonl_objects

_CLIP_EMB = re.compile(r"^img_emb_(\d+)\.npy$")
_CLIP_META = re.compile(r"^metadata_(\d+)\.parquet$")
ID_COLUMNS = ("image_path", "url", "key")


@dataclass
class _Part:
    npy: Path
    rows: int


@dataclass
class EmbeddingSource:
    """Items (in file order) and where each one's vector lives; `distributor()` yields them shard by shard
    like the image distributors, so the runner's resume, manifest and faiss build are shared."""

    root: Path
    layout: str
    dim: int
    parts: list[_Part]
    items: list[Item]
    locate: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (part, row)

    def vectors(self, items: list[Item]) -> np.ndarray:
        out = np.empty((len(items), self.dim), np.float32)
        arrays: dict[int, np.ndarray] = {}
        for i, it in enumerate(items):
            part, row = self.locate[it.id]
            if part not in arrays:
                arrays[part] = np.load(self.parts[part].npy, mmap_mode="r", allow_pickle=False)
            out[i] = arrays[part][row]
        bad = np.asarray(~np.isfinite(out).all(1))
        norms = np.linalg.norm(np.where(bad[:, None], 0, out), axis=1)
        for j in np.flatnonzero(bad | (norms == 0)):
            part, row = self.locate[items[j].id]
            raise InputError(f"{self.parts[part].npy.name} row {row}: non-finite or all-zero embedding")
        return out / norms[:, None]

    def distributor(self) -> PrecomputedDistributor:
        return PrecomputedDistributor(self)


class PrecomputedDistributor:
    """The distributor for precomputed vectors: no model, no unreadable files."""

    def __init__(self, source: EmbeddingSource) -> None:
        self.source = source

    def run(self, todo: list[Item], shard_size: int) -> Iterator[tuple[list[Item], np.ndarray, list[int], dict[int, str]]]:
        for start in range(0, len(todo), shard_size):
            chunk = todo[start : start + shard_size]
            yield chunk, self.source.vectors(chunk), list(range(len(chunk))), {}


def read_embeddings(source: str | Path) -> EmbeddingSource:
    """Open a clip-retrieval output folder, a folder of .npy + .jsonl pairs, or one .npy with its .jsonl."""
    p = Path(source).expanduser()
    if p.is_dir() and (p / "img_emb").is_dir():
        src = _read_clip_retrieval(p)
    elif p.is_dir():
        pairs = sorted(p.glob("*.npy"))
        if not pairs:
            raise InputError(f"{p}: neither clip-retrieval output (img_emb/ + metadata/) nor a folder of .npy + "
                             ".jsonl pairs")
        src = _read_plain(p, pairs)
    elif p.is_file() and p.suffix == ".npy":
        src = _read_plain(p.parent, [p])
    elif p.exists():
        raise InputError(f"{p}: --embeddings takes a folder (clip-retrieval layout or .npy + .jsonl pairs) or a .npy")
    else:
        raise InputError(f"{p}: no such folder or file")
    seen: dict[str, tuple[int, int]] = {}
    for it, loc in zip(src.items, _locations(src.parts)):
        if it.id in seen:
            raise InputError(f"{p}: id {it.id!r} appears twice (ids must be unique)")
        seen[it.id] = loc
    src.locate = seen
    if not src.items:
        raise InputError(f"{p}: no embeddings")
    return src


def _locations(parts: list[_Part]) -> Iterator[tuple[int, int]]:
    for i, part in enumerate(parts):
        for r in range(part.rows):
            yield i, r


def _open_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{path.name}: not a readable .npy array ({e})") from None
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{path.name}: expected a 2-D float array (rows, dim), got shape {a.shape} {a.dtype}")
    return a


def _read_clip_retrieval(root: Path) -> EmbeddingSource:
    emb = {int(m.group(1)): f for f in (root / "img_emb").iterdir() if (m := _CLIP_EMB.match(f.name))}
    meta_dir = root / "metadata"
    meta = {int(m.group(1)): f for f in meta_dir.iterdir() if (m := _CLIP_META.match(f.name))} if meta_dir.is_dir() else {}
    if not emb:
        raise InputError(f"{root}/img_emb: no img_emb_N.npy files")
    if set(emb) != set(meta):
        missing = sorted(set(emb) - set(meta))
        extra = sorted(set(meta) - set(emb))
        raise InputError(f"{root}: img_emb and metadata do not match by number"
                         + (f"; no metadata_N.parquet for N = {missing[:5]}" if missing else "")
                         + (f"; no img_emb_N.npy for N = {extra[:5]}" if extra else ""))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading clip-retrieval metadata (.parquet) needs pyarrow: pip install pyarrow") from None
    parts, items, dim = [], [], None
    for n in sorted(emb):
        a = _open_npy(emb[n])
        dim = _check_dim(dim, a, emb[n])
        try:
            table = pq.read_table(meta[n])
        except Exception as e:  # noqa: BLE001 - pyarrow raises its own types for corrupt files
            raise InputError(f"{meta[n].name}: not a readable parquet file ({type(e).__name__})") from None
        if table.num_rows != len(a):
            raise InputError(f"{meta[n].name} has {table.num_rows} rows but {emb[n].name} has {len(a)} embeddings")
        rows = table.to_pylist()
        id_col = next((c for c in ID_COLUMNS if c in table.column_names), None)
        for r, row in enumerate(rows):
            ident = str(row[id_col]) if id_col and row.get(id_col) is not None else f"{n}:{r}"
            path = row.get("image_path") or row.get("url") or ""
            items.append(Item(id=ident, path=str(path), meta={k: _jsonable(v) for k, v in row.items()
                                                              if k not in (id_col, "image_path")}))
        parts.append(_Part(emb[n], len(a)))
    assert dim is not None  # emb is not empty
    return EmbeddingSource(root, "clip-retrieval", dim, parts, items)


def _read_plain(root: Path, npys: list[Path]) -> EmbeddingSource:
    parts, items, dim = [], [], None
    for npy in npys:
        a = _open_npy(npy)
        dim = _check_dim(dim, a, npy)
        listing = npy.with_suffix(".jsonl")
        if not listing.is_file():
            raise InputError(f"{npy.name}: no {listing.name} beside it (one JSON object per row: id, path, metadata)")
        rows = [obj for _, obj in read_jsonl_objects(listing, "(id, path, metadata)")]
        if len(rows) != len(a):
            raise InputError(f"{listing.name} has {len(rows)} rows but {npy.name} has {len(a)} embeddings")
        for r, obj in enumerate(rows):
            ident = obj.pop("id", None)
            path = obj.pop("path", "") or ""
            items.append(Item(id=str(ident) if ident is not None else f"{npy.stem}:{r}", path=str(path), meta=obj))
        parts.append(_Part(npy, len(a)))
    assert dim is not None  # npys is not empty
    return EmbeddingSource(root, "plain", dim, parts, items)


def _check_dim(dim: int | None, a: np.ndarray, path: Path) -> int:
    if dim is not None and a.shape[1] != dim:
        raise InputError(f"{path.name}: {a.shape[1]}-d embeddings, the other files are {dim}-d")
    return int(a.shape[1])


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
