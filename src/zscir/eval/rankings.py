"""Rankings made by other code: reading a predictions file, checking it against a split's queries and gallery,
and the single-target recall the benchmarks' `score_subset` hooks share (zscir.eval.score drives them).

A predictions file is a JSON object {query id: [image ids, best first]}; a "version" / "metric" key, as in
the CIRR server files, is ignored. Ids may be ints (CIRCO's server files); they are compared as strings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zscir.errors import InputError
from zscir.eval.metrics import recall_at_k, recall_hits
from zscir.eval.protocols import per_query_record

if TYPE_CHECKING:
    # type-only: the benchmark modules under zscir.datasets import this module
    from zscir.datasets.base import BenchmarkSplit

MISS = 10**9  # the rank of a target that is not in the list: a miss at every K
_IGNORED_KEYS = ("version", "metric")


def read_predictions(path: str | Path) -> dict[str, list[str]]:
    """{query id: ranked ids as strings} from a JSON file (ids may be ints, as in CIRCO files)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path.name}: not a JSON file ({e})") from e
    if not isinstance(doc, dict):
        raise InputError(f"{path.name}: expected a JSON object {{query id: [ranked ids]}}")
    out: dict[str, list[str]] = {}
    for k, v in doc.items():
        if k in _IGNORED_KEYS:
            continue
        if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            raise InputError(f"{path.name}: query {k}: expected a list of image ids, got {str(v)[:80]}")
        out[str(k)] = [str(x) for x in v]
    return out


def check_rankings(preds: Mapping[str, Sequence[str]], qids: Sequence[str], gallery: set[str], need: int,
                   where: str) -> None:
    """Every query has a ranking, no ranking is for an unknown query, and each is duplicate-free, made of
    gallery ids and at least `need` long (the largest K); else InputError naming the query."""
    missing = [q for q in qids if q not in preds]
    if missing:
        raise InputError(f"{where}: no ranking for {len(missing)} of {len(qids)} queries (first: {missing[0]})")
    extra = sorted(set(preds) - set(qids))
    if extra:
        raise InputError(f"{where}: {len(extra)} ranking(s) for queries the annotations do not have (first: {extra[0]})")
    for q in qids:
        p = preds[q]
        if len(set(p)) != len(p):
            raise InputError(f"{where}: query {q}: duplicate ids in its ranking")
        unknown = [x for x in p if x not in gallery]
        if unknown:
            raise InputError(f"{where}: query {q}: {unknown[0]!r} is not a gallery image")
        if len(p) < need:
            raise InputError(f"{where}: query {q}: {len(p)} ids ranked; R@{need} / mAP@{need} need at least {need}")


def rank_of(ranking: Sequence[str], target: str) -> int:
    """0-based position of target in a ranking; MISS when it is not listed."""
    try:
        return list(ranking).index(target)
    except ValueError:
        return MISS


def score_single_target(split: BenchmarkSplit, preds: Mapping[str, list[str]], ks: Sequence[int] = (10, 50),
                        where: str = "predictions") -> dict[str, Any]:
    """R@K of each query's one target, the reference kept (FashionIQ)."""
    qids = [q.qid for q in split.queries]
    check_rankings(preds, qids, {g.id for g in split.gallery}, max(ks), where)
    ranks = [rank_of(preds[q.qid], q.targets[0]) for q in split.queries]
    return {"data": split.summary(), "metrics": recall_at_k(ranks, ks, "R"),
            "per_query": per_query_record(qids, recall_hits(ranks, ks, "R"))}
