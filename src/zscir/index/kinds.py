"""Index kinds are faiss factory strings plus the metric (inner product on L2-normalised vectors = cosine).

    flat    "Flat"                       exact; memory = 4*D bytes/vector
    hnsw    "HNSW32,Flat"                graph; fast and accurate; ~4*D + 256 bytes/vector
    ivfpq   "IVF<nlist>,PQ<m>[x<bits>]"  compressed; m bytes/vector (+ ids); re-scored exactly from the shards

`auto` picks by gallery size; any other faiss factory string is accepted as is."""

from __future__ import annotations

import math
import re
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
        raise InputError(f"index kind {kind!r}: neither one of {', '.join(KINDS)} nor a faiss factory string "
                         f"({faiss_reason(e)})") from None
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
        try:
            faiss.ParameterSpace().set_index_parameters(index, params)
        except RuntimeError as e:
            raise InputError(f"faiss search parameters {params!r} do not apply to this index "
                             f"({faiss_reason(e)})") from None


def read(path: str):
    """Read the index file into memory. Never memory-mapped: a file truncated or rewritten under a running
    server would otherwise crash it (SIGBUS) or change its rankings silently; a read copy is immune, and
    a damaged file is a CheckpointError here."""
    from zscir.errors import CheckpointError

    try:
        return faiss.read_index(path)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: damaged faiss index ({faiss_reason(e)}); rebuild or restore it") from None


def faiss_reason(e: BaseException) -> str:
    """The human part of a faiss C++ error ("Error in <signature> at <file>:<line>: <reason>")."""
    msg = " ".join(str(e).split())
    m = re.search(r"failed: (.*)$", msg) or re.search(r"\.(?:cpp|h):\d+: (.*)$", msg)
    return (m.group(1) if m else msg)[:200]


def check_buildable(factory: str, n: int, dim: int) -> None:
    """Refuse, before any embedding, a factory string faiss cannot train on `n` vectors of `dim`
    (IVF with more lists than vectors, PQ codebooks larger than the data, sub-quantizers not dividing dim)."""
    try:
        index = faiss.downcast_index(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
    except RuntimeError as e:
        raise InputError(f"index kind {factory!r}: not a faiss factory string for {dim}-d vectors "
                         f"({faiss_reason(e)})") from None
    nlist = int(getattr(index, "nlist", 0) or 0)
    if nlist and n < nlist:
        raise InputError(f"index kind {factory!r}: {nlist} IVF lists need at least {nlist} images to train, "
                         f"the index will hold {n}; use a smaller IVF<lists> or --kind auto")
    pq = getattr(index, "pq", None)
    if pq is not None and n < int(pq.ksub):
        raise InputError(f"index kind {factory!r}: PQ codebooks of {int(pq.ksub)} centroids need at least "
                         f"{int(pq.ksub)} images to train, the index will hold {n}; use fewer bits (PQ<m>x4) or --kind auto")


def write(index, path: str) -> None:
    faiss.write_index(index, path)
