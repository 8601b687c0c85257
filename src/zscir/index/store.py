"""Opening an index for queries: verify the manifest and checksums, read the shards and the faiss file into
memory (never memory-mapped: a file damaged on disk later cannot crash or silently change a running
server), and answer top-k queries (approximate kinds re-scored exactly from the float16 shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zscir.errors import CheckpointError, InputError
from zscir.index import kinds
from zscir.index.manifest import MANIFEST, Manifest
from zscir.index.runner import _gather
from zscir.index.writer import read_shard_embeddings, read_shard_items, verify_shard
from zscir.utils.io import sha256_file


class GalleryIndex:
    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = man = Manifest.load(self.folder)
        if man.faiss is None:
            raise CheckpointError(f"{self.folder}: the index is incomplete (an interrupted `zscir index`); "
                                  "run the same command again to finish it")
        # While `zscir index --add` runs (or after one was interrupted) the manifest also lists the new
        # shards, but the faiss index still covers the complete index it started from: serve exactly that.
        shards = searchable_shards(self.folder, man)
        self.pending = man.count - sum(rec.count for rec in shards)
        if verify:
            for rec in shards:
                verify_shard(self.folder, rec)
        fpath = self.folder / man.faiss.file
        if not fpath.is_file() or (verify and sha256_file(fpath) != man.faiss.sha256):
            raise CheckpointError(f"{fpath}: missing or checksum mismatch; refusing to use this index")
        # Read into memory, never memory-mapped: a shard truncated or rewritten on disk while this process
        # runs must not crash it (SIGBUS) nor change its answers.
        self.arrays = [_read_embeddings(self.folder, rec) for rec in shards]
        self.items: list[dict[str, Any]] = []
        for rec in shards:
            self.items.extend(_read_items(self.folder, rec))
        self.position = {it["id"]: i for i, it in enumerate(self.items)}
        self.index = kinds.read(str(fpath))
        if self.index.ntotal != len(self.items) or self.index.d != man.dim:
            raise CheckpointError(f"{fpath}: holds {self.index.ntotal} vectors of dim {self.index.d}; "
                                  f"the manifest says {len(self.items)} of dim {man.dim}")
        try:
            kinds.apply_search_params(self.index, man.faiss.search)
        except InputError as e:
            raise CheckpointError(f"{self.folder / MANIFEST}: faiss.search: {e}") from None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def kind(self) -> str:
        return self.manifest.faiss.factory if self.manifest.faiss else "?"

    def check_method(self, method) -> None:
        """Queries must come from the encoder that embedded the gallery."""
        man = self.manifest
        bb = method.backbone
        if bb.fingerprint() != man.backbone_fingerprint:
            raise CheckpointError(
                f"{self.folder}: built with backbone {man.backbone_spec} (fingerprint {man.backbone_fingerprint}); "
                f"the query backbone {getattr(bb, 'spec', '?')} has fingerprint {bb.fingerprint()}: refusing to mix "
                "embedding spaces"
            )
        if bb.preprocess_config.digest() != man.preprocess_digest:
            raise CheckpointError(f"{self.folder}: built with preprocessing {man.preprocess_digest}, the query "
                                  f"backbone uses {bb.preprocess_config.digest()}")
        if method.gallery_id != man.gallery_id:
            raise CheckpointError(f"{self.folder}: the gallery was embedded by {man.gallery_method!r} "
                                  f"({man.gallery_id}); method {method.name!r} needs {method.gallery_id}")

    def lookup(self, item_id: str) -> int:
        try:
            return self.position[item_id]
        except KeyError:
            raise InputError(f"no image with id {item_id!r} in the index") from None

    def vectors(self, positions: Sequence[int]) -> np.ndarray:
        return _gather(self.arrays, np.asarray(positions, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, positions), each (Q, k) with -inf / -1 padding; `exclude` positions never listed."""
        return search_vectors(self.index, self.arrays, queries, k, exclude, self.manifest.faiss.rerank)


def searchable_shards(folder: Path, man: Manifest) -> list:
    """The shards the faiss index covers: all of them for a complete index; during or after an interrupted
    `--add`, the prefix that made up the complete index (faiss.count images)."""
    if man.complete:
        return list(man.shards)
    shards, n = [], 0
    for rec in man.shards:
        if n == man.faiss.count:
            break
        shards.append(rec)
        n += rec.count
    if n != man.faiss.count:
        raise CheckpointError(f"{folder}: the index is incomplete (an interrupted `zscir index`); "
                              "run the same command again to finish it")
    return shards


def _read_embeddings(folder: Path, rec):
    try:
        return read_shard_embeddings(folder, rec, mmap=False)
    except (ValueError, OSError, EOFError) as e:  # truncated or not an .npy: reached with --no-verify
        raise CheckpointError(f"{folder / rec.name}.npy: damaged shard ({type(e).__name__}: {e}); "
                              "rebuild or restore the index") from None


def _read_items(folder: Path, rec) -> list[dict[str, Any]]:
    try:
        rows = read_shard_items(folder, rec)
    except (ValueError, OSError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{folder / rec.name}.jsonl: damaged shard ({type(e).__name__}); "
                              "rebuild or restore the index") from None
    if not all(isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("path"), str) for r in rows):
        raise CheckpointError(f"{folder / rec.name}.jsonl: damaged shard (a row without a string id and path)")
    return rows


def search_vectors(index, arrays: Sequence[np.ndarray], queries: np.ndarray, k: int, exclude: Sequence[int] = (),
                   rerank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """faiss top-k; with rerank > 0, rerank*k candidates are re-scored exactly from the float16 `arrays`
    (the shards, memory-mapped), which recovers most of what product quantisation loses."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = int(index.ntotal)
    k = max(0, min(int(k), n))  # there are never more than n answers: a huge k must not allocate for them
    excl = set(int(e) for e in exclude)
    want = min(n, k + len(excl))
    cand = min(n, want * rerank) if rerank else want
    cand = max(cand, want)
    scores, pos = index.search(q, cand)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_p = np.full((len(q), k), -1, np.int64)
    for r in range(len(q)):
        valid = [(float(sc), int(p)) for sc, p in zip(scores[r], pos[r]) if p >= 0 and int(p) not in excl]
        keep = [p for _, p in valid]
        if rerank and keep:
            exact = _gather(arrays, np.asarray(keep, np.int64)) @ q[r]
            order = np.argsort(-exact, kind="stable")[:k]
            keep, s = [keep[i] for i in order], exact[order]
        else:
            keep, s = keep[:k], np.array([sc for sc, _ in valid[:k]], np.float32)
        out_p[r, : len(keep)] = keep
        out_s[r, : len(keep)] = s
    return out_s, out_p
