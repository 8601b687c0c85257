"""Opening an index for queries: verify the manifest and checksums, read the shards and the faiss file into
memory (never memory-mapped: a file damaged on disk later cannot crash or silently change a running
server), and answer top-k queries (approximate kinds re-scored exactly from the float16 shards)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir.errors import CheckpointError, InputError
from zscir.index import kinds
from zscir.index.manifest import MANIFEST, Manifest
from zscir.index.writer import gather_rows, read_shard_embeddings, read_shard_items, verify_shard
from zscir.utils.io import sha256_file


@dataclass
class SearchHit:
    """One ranked gallery image of an index search (what `zscir search` prints and the service returns)."""

    rank: int
    score: float
    id: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(float(self.score), 6), "id": self.id, "path": self.path,
                "meta": self.meta}


class GalleryIndex:
    """An index folder opened for queries. `params` overrides the search parameters the manifest records
    (`--ef-search`, `--nprobe`, `--rerank`)."""

    def __init__(self, folder: str | Path, verify: bool = True, params: kinds.SearchParams | None = None) -> None:
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
            self.search_params, self.rerank = kinds.resolve_params(self.index, man.faiss.search, man.faiss.rerank,
                                                                   params)
            kinds.apply_search_params(self.index, self.search_params)
        except InputError as e:
            if params is not None and any(v is not None for v in (params.ef_search, params.nprobe, params.rerank)):
                raise  # the user's own --ef-search / --nprobe / --rerank
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
        # a TAT-tuned backbone wraps the base one: the index records the base backbone (its gallery_id the tuning)
        base_fp = getattr(bb, "base_fingerprint", None) or bb.fingerprint()
        if base_fp != man.backbone_fingerprint:
            raise CheckpointError(
                f"{self.folder}: built with backbone {man.backbone_spec} (fingerprint {man.backbone_fingerprint}); "
                f"the query backbone {getattr(bb, 'spec', '?')} has fingerprint {base_fp}: refusing to mix "
                "embedding spaces"
            )
        if bb.preprocess_config.digest() != man.preprocess_digest:
            raise CheckpointError(f"{self.folder}: built with preprocessing {man.preprocess_digest}, the query "
                                  f"backbone uses {bb.preprocess_config.digest()}")
        if method.gallery_id != man.gallery_id:
            tuned_index = bool(getattr(man, "gallery_checkpoint_fingerprint", ""))
            ref = getattr(method, "checkpoint_ref", None) or {}
            if tuned_index:
                why = (f"the index's gallery was embedded by {man.gallery_method!r} with a tuned image tower "
                       f"(checkpoint {man.gallery_checkpoint_fingerprint[:12]})")
            else:
                why = f"the index's gallery was embedded by {man.gallery_method!r} with the backbone's own image tower"
            mine = (f"method {method.name!r} embeds images with a tuned tower (checkpoint "
                    f"{str(ref.get('fingerprint', ''))[:12] or '?'})" if method.gallery_id != _plain(method)
                    else f"method {method.name!r} embeds images with the untuned tower")
            raise CheckpointError(f"{self.folder.name}: {why}, but {mine}: queries and gallery would live in "
                                  "different spaces; build an index with that method (`zscir index --method ... "
                                  "--checkpoint ...`) or use a method with the index's gallery encoder")

    def lookup(self, item_id: str) -> int:
        try:
            return self.position[item_id]
        except KeyError:
            raise InputError(f"no image with id {item_id!r} in the index") from None

    def vectors(self, positions: Sequence[int]) -> np.ndarray:
        return gather_rows(self.arrays, np.asarray(positions, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] = (),
               exclude_rows: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, positions), each (Q, k) with -inf / -1 padding; `exclude` positions never listed
        (`exclude_rows[r]`: not in row r)."""
        return search_vectors(self.index, self.arrays, queries, k, exclude, self.rerank, exclude_rows)

    def check_query_vectors(self, q: np.ndarray) -> np.ndarray:
        """A query composed elsewhere (e.g. `zscir compose --out`): (D,) or (Q, D), finite, non-zero; returned
        (Q, D) float32 and L2-normalised (the gallery is, and scores are cosines)."""
        q = np.asarray(q)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.manifest.dim or not np.issubdtype(q.dtype, np.number):
            raise InputError(f"query vector of shape {tuple(np.shape(q))}: expected ({self.manifest.dim},) or "
                             f"(Q, {self.manifest.dim}) numbers, as the index's backbone embeds")
        q = q.astype(np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if not np.isfinite(q).all() or (norms == 0).any():
            raise InputError("query vector has non-finite values or is all zeros")
        return q / norms

    def hits(self, scores: np.ndarray, positions: np.ndarray) -> list[SearchHit]:
        """One row of search() as ranked SearchHit records."""
        out = []
        for r, (s, p) in enumerate(zip(scores, positions)):
            if p < 0:
                break
            it = self.items[int(p)]
            out.append(SearchHit(rank=r + 1, score=float(s), id=it["id"], path=it["path"], meta=it.get("meta") or {}))
        return out


def searchable_shards(folder: Path, man: Manifest) -> list:
    """The shards the faiss index covers: all of them for a complete index; during or after an interrupted
    `--add`, the prefix that made up the complete index (faiss.count images)."""
    if man.complete:
        return list(man.shards)
    assert man.faiss is not None  # the caller refuses an index without one
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
                   rerank: int = 0, exclude_rows: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """faiss top-k; with rerank > 0, rerank*k candidates are re-scored exactly from the float16 `arrays`
    (the shards, held in memory), which recovers most of what product quantisation loses.

    `exclude` positions are left out of every row; `exclude_rows[r]` (a micro-batch of requests) out of row r
    only. A row's answer depends only on its query, k and how many positions it excludes, so a batch of
    requests with equal k and exclusion counts answers each exactly as it would be answered alone."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = int(index.ntotal)
    k = max(0, min(int(k), n))  # there are never more than n answers: a huge k must not allocate for them
    shared = set(int(e) for e in exclude)
    rows = [shared | set(int(e) for e in ex) for ex in exclude_rows] if exclude_rows is not None else [shared] * len(q)
    if len(rows) != len(q):
        raise ValueError(f"{len(rows)} exclusion lists for {len(q)} queries")
    want = min(n, k + max((len(r) for r in rows), default=0))
    cand = min(n, want * rerank) if rerank else want
    cand = max(cand, want)
    scores, pos = index.search(q, cand)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_p = np.full((len(q), k), -1, np.int64)
    for r in range(len(q)):
        excl = rows[r]
        valid = [(float(sc), int(p)) for sc, p in zip(scores[r], pos[r]) if p >= 0 and int(p) not in excl]
        keep = [p for _, p in valid]
        if rerank and keep:
            exact = gather_rows(arrays, np.asarray(keep, np.int64)) @ q[r]
            order = np.argsort(-exact, kind="stable")[:k]
            keep, s = [keep[i] for i in order], exact[order]
        else:
            keep, s = keep[:k], np.array([sc for sc, _ in valid[:k]], np.float32)
        out_p[r, : len(keep)] = keep
        out_s[r, : len(keep)] = s
    return out_s, out_p


def _plain(method) -> str:
    """The gallery id the method's base backbone has with its own (untuned) image tower."""
    bb = method.backbone
    return f"{getattr(bb, 'base_fingerprint', None) or bb.fingerprint()}/{bb.preprocess_config.digest()}"
