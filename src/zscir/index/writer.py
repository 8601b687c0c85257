"""Writer and shard format: one shard = float16 embeddings (.npy) + one JSON line per row (.jsonl), written
atomically; the runner then lists it (with checksums) in the manifest. The readers here (and `gather_rows`,
rows at global positions across shards) serve both the runner and the store."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zscir.errors import CheckpointError
from zscir.index.manifest import ShardRecord
from zscir.index.reader import Item
from zscir.utils.io import atomic_path, sha256_file

SHARDS = "shards"


def shard_name(number: int) -> str:
    return f"{SHARDS}/shard-{number:05d}"


def write_shard(folder: Path, number: int, emb: np.ndarray, items: list[Item], failed: list[dict[str, str]],
                files: list[dict | None] | None = None) -> ShardRecord:
    """`files`: per item, the identity of the file that was embedded (file_identity), kept in its row so the
    service serves a gallery file only while it is still that file."""
    if emb.shape[0] != len(items):
        raise ValueError(f"{emb.shape[0]} embeddings for {len(items)} items")
    name = shard_name(number)
    npy, meta = folder / f"{name}.npy", folder / f"{name}.jsonl"
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(emb, dtype=np.float16), allow_pickle=False)
    with atomic_path(meta) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, it in enumerate(items):
                row = it.to_json()
                if files is not None and files[i] is not None:
                    row["file"] = files[i]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return ShardRecord(name=name, count=len(items), sha256=sha256_file(npy), meta_sha256=sha256_file(meta), failed=failed)


def file_identity(path: str) -> dict | None:
    """size, mtime (ns) and inode of the file a path leads to now; None if it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def verify_shard(folder: Path, rec: ShardRecord) -> None:
    """Refuse a missing, truncated or modified shard: wrong results are worse than none."""
    for suffix, digest in ((".npy", rec.sha256), (".jsonl", rec.meta_sha256)):
        path = folder / f"{rec.name}{suffix}"
        if not path.is_file():
            raise CheckpointError(f"{path}: shard file missing; the index is damaged (rebuild or restore it)")
        if sha256_file(path) != digest:
            raise CheckpointError(
                f"{path}: checksum mismatch (truncated or modified); refusing to use this index "
                "(rebuild or restore it)"
            )


def read_shard_embeddings(folder: Path, rec: ShardRecord, mmap: bool = True) -> np.ndarray:
    arr = np.load(folder / f"{rec.name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    if arr.ndim != 2 or arr.shape[0] != rec.count:
        raise CheckpointError(f"{folder / rec.name}.npy: shape {arr.shape} does not match the manifest ({rec.count} rows)")
    return arr


def gather_rows(arrays: Sequence[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """float32 rows at global positions of an index whose embeddings are split into `arrays`, one per shard
    in shard order (position p is row p - offset of the shard holding it)."""
    offsets = np.cumsum([0] + [len(a) for a in arrays])
    out = np.empty((len(positions), arrays[0].shape[1]), np.float32)
    shard = np.searchsorted(offsets, positions, side="right") - 1
    for s in np.unique(shard):
        sel = shard == s
        out[sel] = arrays[s][positions[sel] - offsets[s]]
    return out


def read_shard_items(folder: Path, rec: ShardRecord) -> list[dict]:
    with open(folder / f"{rec.name}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) != rec.count:
        raise CheckpointError(f"{folder / rec.name}.jsonl: {len(rows)} rows, the manifest says {rec.count}")
    return rows
