"""Index kinds are faiss factory strings plus the metric (inner product on L2-normalised vectors = cosine).

    flat    "Flat"                       exact; memory = 4*D bytes/vector
    hnsw    "HNSW32,Flat"                graph; fast and accurate; ~4*D + 256 bytes/vector
    ivfpq   "IVF<nlist>,PQ<m>[x<bits>]"  compressed; m bytes/vector (+ ids); re-scored exactly from the shards

`auto` picks by gallery size and, with a recall target, the first kind that reaches it; any other faiss factory
string is accepted as is.

Search parameters (`efSearch` for graphs, `nprobe` for inverted lists, `rerank`: candidates re-scored exactly
= rerank * k) are settings: `zscir index --target-recall R` measures recall@k against exact search on composed
queries drawn from the gallery itself and records the cheapest parameters that reach R (and the recall they
reach) in the manifest, in the spirit of autofaiss; `--ef-search/--nprobe/--rerank` on `search` and `serve`
override them."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from zscir.errors import InputError

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 100_000
AUTO_HNSW_MAX = 5_000_000


def choose_kind(n: int) -> str:
    return auto_candidates(n)[0]


def auto_candidates(n: int) -> list[str]:
    """Kinds `auto` tries in order (the first that reaches the recall target is kept)."""
    if n <= AUTO_FLAT_MAX:
        return ["flat"]
    if n <= AUTO_HNSW_MAX:
        return ["hnsw", "ivfpq"]
    return ["ivfpq", "hnsw"]


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
            # the faiss stub lists only the (name, value) overload; the "k=v,k=v" string form is the documented one
            faiss.ParameterSpace().set_index_parameters(index, params)  # type: ignore[arg-type]
        except RuntimeError as e:
            raise InputError(f"faiss search parameters {params!r} do not apply to this index "
                             f"({faiss_reason(e)})") from None


# --- search parameters as settings --------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchParams:
    """Search-time settings; None keeps the index's own (recorded in its manifest by `zscir index`)."""

    ef_search: int | None = None  # HNSW: candidate list size (more = better recall, slower)
    nprobe: int | None = None  # IVF: inverted lists visited per query
    rerank: int | None = None  # approximate kinds: rerank * k candidates re-scored exactly from the shards

    def __post_init__(self) -> None:
        for name in ("ef_search", "nprobe"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise InputError(f"--{name.replace('_', '-')} {v}: must be a whole number >= 1")
        if self.rerank is not None and (not isinstance(self.rerank, int) or self.rerank < 0):
            raise InputError(f"--rerank {self.rerank}: must be a whole number >= 0 (0: no exact re-scoring)")


def tunables(index) -> dict[str, bool]:
    """Which ParameterSpace knobs the index has."""
    idx = faiss.downcast_index(index)
    has_ivf = faiss.try_extract_index_ivf(idx) is not None
    return {"efSearch": _hnsw_of(idx) is not None, "nprobe": has_ivf}


def parse_params(params: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (params or "").split(","))):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value)
    return out


def format_params(params: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def resolve_params(index, recorded: str, recorded_rerank: int, override: SearchParams | None) -> tuple[str, int]:
    """The ParameterSpace string and rerank factor to search with: the recorded ones, overridden by the
    user's settings; a setting the index kind has no use for is an error, not silently ignored."""
    params = parse_params(recorded)
    rerank = recorded_rerank
    if override is None:
        return format_params(params), rerank
    have = tunables(index)
    for flag, key, value in (("--ef-search", "efSearch", override.ef_search), ("--nprobe", "nprobe", override.nprobe)):
        if value is None:
            continue
        if not have[key]:
            kind = "a graph (HNSW)" if key == "efSearch" else "an inverted-list (IVF)"
            raise InputError(f"{flag} applies to {kind} index; this index is not one")
        params[key] = value
    if override.rerank is not None:
        rerank = override.rerank
    return format_params(params), rerank


# --- recall-targeted tuning ---------------------------------------------------------------------------------

#: text directions for tuning queries when the backbone's text tower is at hand: generic modifications
TUNING_TEXTS = (
    "make it red", "but blue", "in black and white", "at night", "on a beach", "two of them", "smaller",
    "larger and green", "without the background", "with a dog next to it", "made of wood", "in the snow",
    "seen from above", "a cartoon of it", "but yellow", "with more people", "indoors", "a close-up",
    "in a forest", "older", "striped", "with flowers", "on a white background", "purple and round",
)


@dataclass
class TuningResult:
    """What `zscir index --target-recall` measured; recorded in the manifest (FaissRecord.tuning)."""

    target_recall: float
    k: int
    queries: int
    query_source: str  # how the text directions were made ("text tower" or "gallery items")
    reached: bool
    recall: float  # recall@k of the chosen parameters on the tuning queries
    search: str
    rerank: int
    p50_ms: float  # one query per call, search only
    tried: list[dict] = field(default_factory=list)  # every setting measured: params, rerank, recall, p50_ms

    def to_json(self) -> dict:
        return asdict(self)


def composed_queries(sample: Callable[[np.ndarray], np.ndarray], n: int, count: int,
                     text_dirs: np.ndarray | None = None, alpha: float = 0.8, seed: int = 0) -> np.ndarray:
    """`count` composed queries drawn from the gallery itself: a gallery embedding slerped (weight alpha)
    towards a text direction, as Slerp builds queries. `sample(positions)` returns gallery vectors;
    without text embeddings the directions are other gallery items."""
    import torch

    from zscir.methods.slerp import slerp

    rng = np.random.default_rng(seed)
    refs = sample(np.sort(rng.choice(n, size=count, replace=count > n)))
    if text_dirs is None or len(text_dirs) == 0:
        dirs = sample(np.sort(rng.choice(n, size=count, replace=count > n)))
        dirs = dirs[rng.permutation(count)]
    else:
        dirs = np.asarray(text_dirs, np.float32)[rng.integers(0, len(text_dirs), count)]
    q = slerp(torch.from_numpy(np.asarray(refs, np.float32)), torch.from_numpy(np.asarray(dirs, np.float32)), alpha)
    return np.ascontiguousarray(q.numpy(), dtype=np.float32)


def exact_topk(arrays: Sequence[np.ndarray], queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Exact top-k positions (Q, k) by inner product over the float16 shards, chunk by chunk."""
    q = np.ascontiguousarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_p = np.zeros((len(q), 0), np.int64)
    offset = 0
    for a in arrays:
        for s in range(0, len(a), chunk):
            block = np.asarray(a[s : s + chunk], np.float32)
            sc = q @ block.T
            kk = min(k, sc.shape[1])
            top = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
            cat_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], 1)
            cat_p = np.concatenate([best_p, top + offset + s], 1)
            keep = np.argsort(-cat_s, axis=1, kind="stable")[:, :k]
            best_s, best_p = np.take_along_axis(cat_s, keep, 1), np.take_along_axis(cat_p, keep, 1)
        offset += len(a)
    return best_p


def _measure(index, arrays, queries: np.ndarray, truth: np.ndarray, k: int, params: str, rerank: int) -> dict:
    from zscir.index.store import search_vectors

    apply_search_params(index, params)
    lat, hit = [], 0
    for i in range(len(queries)):
        t = time.perf_counter()
        _, pos = search_vectors(index, arrays, queries[i : i + 1], k, rerank=rerank)
        lat.append((time.perf_counter() - t) * 1000)
        hit += len(set(pos[0].tolist()) & set(truth[i].tolist()))
    return {"search": params, "rerank": rerank, "recall": round(hit / (len(queries) * k), 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 3)}


def tune(index, arrays: Sequence[np.ndarray], queries: np.ndarray, k: int, target: float, default_search: str,
         default_rerank: int, query_source: str = "gallery items", truth: np.ndarray | None = None) -> TuningResult:
    """The cheapest search parameters whose recall@k on `queries` (vs exact search) reaches `target`.

    Graphs: the smallest efSearch that reaches it. Inverted lists: for each rerank factor (when the codes are
    lossy), the smallest nprobe that reaches it; the fastest of those wins. Where nothing reaches the target,
    the setting with the best recall is kept and `reached` is False (the caller warns)."""
    if truth is None:
        truth = exact_topk(arrays, queries, k)
    have = tunables(index)
    base = parse_params(default_search)
    grid: list[list[tuple[dict, int]]] = []  # chains of increasing effort; each stops at the target
    if have["efSearch"]:
        efs = [e for e in (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096) if e >= k // 2]
        grid.append([({**base, "efSearch": e}, default_rerank) for e in efs])
    if have["nprobe"]:
        ivf = faiss.try_extract_index_ivf(faiss.downcast_index(index))
        assert ivf is not None  # tunables() found nprobe
        nlist = ivf.nlist
        probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if p < nlist] + [nlist]
        # lossy codes are always re-scored (at least the k found): the scores a client sees are exact cosines
        reranks = [1, 2, 4, 8, 16] if default_rerank else [0]
        for rr in reranks:
            grid.append([({**base, "nprobe": p}, rr) for p in probes])
    if not grid:
        grid.append([(base, default_rerank)])
    tried, reaching = [], []
    for chain in grid:
        prev = -1.0
        for params, rr in chain:
            row = _measure(index, arrays, queries, truth, k, format_params(params), rr)
            tried.append(row)
            log.info("tuning %s rerank %d: recall@%d %.4f, p50 %.2f ms", row["search"] or "-", rr, k, row["recall"],
                     row["p50_ms"])
            if row["recall"] >= target:
                reaching.append(row)
                break
            if row["recall"] <= prev + 1e-4 and row["recall"] < target - 0.05:
                break  # more effort no longer helps this chain
            prev = row["recall"]
    if reaching:
        best = min(reaching, key=lambda r: r["p50_ms"])
    else:
        best = max(tried, key=lambda r: (r["recall"], -r["p50_ms"]))
    apply_search_params(index, best["search"])
    return TuningResult(target_recall=target, k=k, queries=len(queries), query_source=query_source,
                        reached=bool(reaching), recall=best["recall"], search=best["search"], rerank=best["rerank"],
                        p50_ms=best["p50_ms"], tried=tried)


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
