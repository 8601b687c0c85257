"""Index kinds are faiss factory strings plus the metric (inner product on L2-normalised vectors = cosine).

    flat    "Flat"                       exact; memory = 4*D bytes/vector
    hnsw    "HNSW32,Flat"                graph; fast and accurate; ~4*D + 256 bytes/vector
    ivfpq   "IVF<nlist>,PQ<m>[x<bits>]"  compressed; m bytes/vector (+ ids); re-scored exactly from the shards

`auto` picks by gallery size; any other faiss factory string is accepted as is."""

from __future__ import annotations

import math
from typing import Iterable

import faiss
import numpy as np

from zscir.errors import InputError

KINDS = ("auto", "flat", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 100_000
AUTO_HNSW_MAX = 5_000_000


def choose_kind(n: int) -> str:
    if n <= AUTO_FLAT_MAX:
        return "flat"
    if n <= AUTO_HNSW_MAX:
        return "hnsw"
    return "ivfpq"


def factory_for(kind: str, n: int, dim: int) -> tuple[str, str, int]:
    """(factory string, search parameters, rerank factor) for a kind name or a raw factory string."""
    kind = kind or "auto"
    if kind == "auto":
        kind = choose_kind(n)
    if kind == "flat":
        return "Flat", "", 0
    if kind == "hnsw":
        return "HNSW32,Flat", "efSearch=128", 0
    if kind == "ivfpq":
        nlist = 1 << max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
        nlist = max(1, min(nlist, n // 39 if n >= 39 else 1, 65536))
        m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0 and m <= dim // 4 or m == 1)
        bits = 8 if n >= 256 * 39 else 4
        return f"IVF{nlist},PQ{m}x{bits}", f"nprobe={min(nlist, 32)}", 4
    try:
        probe = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"index kind {kind!r}: neither one of {', '.join(KINDS)} nor a faiss factory string ({e})") from e
    return kind, "", 0 if isinstance(probe, faiss.IndexFlat) else 4


def build(factory: str, dim: int, chunks: Iterable[np.ndarray], n: int, train_sample: np.ndarray | None = None):
    """Build an inner-product faiss index from float chunks (in order)."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    hnsw = _hnsw_of(index)
    if hnsw is not None:
        hnsw.efConstruction = 80
    if not index.is_trained:
        if train_sample is None or len(train_sample) == 0:
            raise InputError(f"index {factory!r} needs training vectors")
        index.train(np.ascontiguousarray(train_sample, dtype=np.float32))
    for c in chunks:
        index.add(np.ascontiguousarray(c, dtype=np.float32))
    return index


def _hnsw_of(index):
    try:
        return faiss.downcast_index(index).hnsw
    except AttributeError:
        return None


def apply_search_params(index, params: str) -> None:
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)


def read(path: str):
    """Memory-map the index file where faiss can, else read it."""
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(path)


def write(index, path: str) -> None:
    faiss.write_index(index, path)
