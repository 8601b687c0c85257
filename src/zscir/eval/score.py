"""Score rankings made by other code against the official annotations, with exactly the metrics `zscir eval`
uses (zscir.eval.metrics), so numbers from any implementation are comparable with ours.

Predictions files (JSON objects; a "version" / "metric" key, as in server files, is ignored):

    CIRR val       {pairid: [image names, best first]}  the reference left out (removed if present);
                   the subset ranking either from `subset_predictions` ({pairid: [members, best first]}, the
                   CIRR server's recall_subset file) or, without it, the global list filtered to the group's
                   members (a target not in the list then counts as ranked last in its group)
    CIRCO val      {query id: [gallery ids, best first]}  the server submission format; mAP@K on the top 50
    FashionIQ val  {"<category>-<i>": [image ids, best first]}  i = the query's index in cap.<category>.val.json

Every query needs a list (at least as long as the largest K: 50), without duplicates, of gallery ids; anything
else is refused naming the query. A target missing from a list is a miss at every K.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import zscir
from zscir.datasets import SUBSETS, BenchmarkSplit, load_benchmark
from zscir.datasets.circo import load_circo
from zscir.datasets.cirr import load_cirr
from zscir.errors import InputError
from zscir.eval.benchmarks import aggregate
from zscir.eval.metrics import MAP_KS, RECALL_KS, SUBSET_KS, map_at_k, recall_at_k

SCORABLE = ("cirr", "circo", "fashioniq")
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


def _check(preds: Mapping[str, Sequence[str]], qids: Sequence[str], gallery: set[str], need: int, where: str) -> None:
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


def _rank(lst: Sequence[str], target: str) -> int:
    try:
        return lst.index(target)
    except ValueError:
        return MISS


def score_cirr(split: BenchmarkSplit, preds: Mapping[str, list[str]],
               subset_preds: Mapping[str, list[str]] | None = None, where: str = "predictions") -> dict[str, Any]:
    qids = [q.qid for q in split.queries]
    gallery = {g.id for g in split.gallery}
    refs = {q.qid: q.reference for q in split.queries}
    preds = {k: [x for x in v if x != refs[k]] if k in refs else v for k, v in preds.items()}  # reference left out
    _check(preds, qids, gallery, max(RECALL_KS), where)
    ranks = [_rank(preds[q.qid], q.targets[0]) for q in split.queries]
    metrics = recall_at_k(ranks, RECALL_KS, "R")
    sub_ranks = []
    for q in split.queries:
        members = [m for m in q.members if m != q.reference]
        if subset_preds is not None:
            if q.qid not in subset_preds:
                raise InputError(f"subset predictions: no ranking for query {q.qid}")
            lst = [m for m in subset_preds[q.qid] if m != q.reference]
            if any(m not in members for m in lst):
                raise InputError(f"subset predictions: query {q.qid} ranks an image outside its group")
            sub_ranks.append(_rank(lst, q.targets[0]))
        else:
            listed = [x for x in preds[q.qid] if x in set(members)]
            sub_ranks.append(listed.index(q.targets[0]) if q.targets[0] in listed else len(members) - 1)
    metrics.update(recall_at_k(sub_ranks, SUBSET_KS, "Rs"))
    metrics["(R@5+Rs@1)/2"] = (metrics["R@5"] + metrics["Rs@1"]) / 2
    return {"data": split.summary(), "metrics": metrics,
            "subset_source": "subset predictions" if subset_preds is not None else "global lists"}


def score_circo(split: BenchmarkSplit, preds: Mapping[str, list[str]], where: str = "predictions") -> dict[str, Any]:
    qids = [q.qid for q in split.queries]
    _check(preds, qids, {g.id for g in split.gallery}, max(MAP_KS), where)
    top = [preds[q][:50] for q in qids]
    metrics = map_at_k(top, [q.targets for q in split.queries], MAP_KS)
    ranks = [p.index(q.targets[0]) if q.targets[0] in p else 50 for p, q in zip(top, split.queries)]
    metrics.update(recall_at_k(ranks, (5, 10, 25, 50), "R"))
    return {"data": split.summary(), "metrics": metrics}


def score_single_target(split: BenchmarkSplit, preds: Mapping[str, list[str]], ks: Sequence[int] = (10, 50),
                        where: str = "predictions") -> dict[str, Any]:
    qids = [q.qid for q in split.queries]
    _check(preds, qids, {g.id for g in split.gallery}, max(ks), where)
    ranks = [_rank(preds[q.qid], q.targets[0]) for q in split.queries]
    return {"data": split.summary(), "metrics": recall_at_k(ranks, ks, "R")}


def score(benchmark: str, root: str | Path, predictions: str | Path, subset_predictions: str | Path | None = None,
          subsets: Sequence[str] | None = None, split: str = "val") -> dict[str, Any]:
    """A results document shaped like `zscir eval`'s, for rankings read from `predictions`."""
    if benchmark not in SCORABLE:
        raise InputError(f"zscir score reads rankings for {', '.join(SCORABLE)}; {benchmark!r} is not one of them")
    if split != "val":
        raise InputError("only the val splits have public annotations to score against; test goes to the server")
    preds = read_predictions(predictions)
    name = Path(predictions).name
    if subset_predictions is not None and benchmark != "cirr":
        raise InputError("--subset-predictions is for CIRR only")
    per: dict[str, Any] = {}
    complete = True
    if benchmark == "cirr":
        sp = load_cirr(root, "val", check_images=False)
        sub = read_predictions(subset_predictions) if subset_predictions else None
        per["cirr"] = score_cirr(sp, preds, sub, name)
        complete = sp.complete
    elif benchmark == "circo":
        sp = load_circo(root, "val", check_images=False)
        per["circo"] = score_circo(sp, preds, name)
        complete = sp.complete
    else:
        cats = list(subsets) if subsets else list(SUBSETS["fashioniq"])
        bad = [c for c in cats if c not in SUBSETS["fashioniq"]]
        if bad:
            raise InputError(f"fashioniq: unknown categories {bad}; expected some of {', '.join(SUBSETS['fashioniq'])}")
        splits = {c: load_benchmark("fashioniq", root, c, "val") for c in cats}
        mine = {c: {k: v for k, v in preds.items() if k.rsplit("-", 1)[0] == c} for c in cats}
        other = sorted(k for k in preds if k.rsplit("-", 1)[0] not in cats)
        if other:
            raise InputError(f"{name}: rankings for queries of no scored category (first: {other[0]})")
        for c, sp in splits.items():
            per[c] = score_single_target(sp, mine[c], (10, 50), name)
        complete = all(s.complete for s in splits.values()) and sorted(cats) == sorted(SUBSETS["fashioniq"])
    summary = aggregate(benchmark, per)
    if benchmark == "fashioniq" and sorted(per) != sorted(SUBSETS["fashioniq"]):
        summary["partial"] = True
        summary["subsets"] = list(per)
    return {
        "benchmark": benchmark, "split": split, "root": str(root), "complete": complete, "results": per,
        "summary": summary, "method": {"name": f"predictions:{name}", "settings": {}},
        "predictions": str(predictions), "backbone": {"spec": None}, "preprocess": {"mode": "-"},
        "zscir_version": zscir.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
