"""Evaluate a composition method on a standard benchmark with the exact protocol (benchmarks.md §2.2).

    FashionIQ  per category: gallery = image split, reference kept; R@10, R@50; averages over categories
    CIRR       reference removed; R@1/5/10/50, Rs@1/2/3 over img_set.members, (R@5 + Rs@1)/2
    CIRCO      reference kept; mAP@5/10/25/50 on the top 50 (+ R@K of the caption's target, mAP@10 per
               semantic aspect on val)
    GeneCIS    per task: candidates = [target] + gallery; R@1/2/3; headline = average R@1 over tasks

`--split test` ranks without ground truth and writes the server files (CIRR pair, CIRCO file) after
validating them. Gallery embeddings are computed once per (encoder, gallery) and cached by the engine.
Ties are broken by gallery (candidate-list) order everywhere (metrics.py).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import string
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

import zscir
from zscir.backbones.preprocess import MODES
from zscir.datasets import SUBSETS, BenchmarkSplit, load_benchmark
from zscir.datasets.fashioniq import join_captions
from zscir.errors import InputError
from zscir.eval import submission as sub
from zscir.eval.engine import compose_queries, embed_gallery
from zscir.eval.metrics import map_at_k, recall_at_k, target_ranks
from zscir.eval.protocols import circo_protocol, cirr_protocol, single_target_protocol

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{caption}"
TEMPLATE_FIELDS = {"fashioniq": {"caption"}, "cirr": {"caption"}, "circo": {"caption", "shared_concept"},
                   "genecis": {"caption"}}


@dataclasses.dataclass
class EvalSettings:
    benchmark: str
    root: Path
    split: str = "val"
    subsets: Sequence[str] | None = None  # FashionIQ categories / GeneCIS tasks; None = all
    template: str = DEFAULT_TEMPLATE
    caption_order: str = "both"  # FashionIQ: forward, reverse or both (features averaged)
    cache_dir: Path | None = None
    batch_size: int = 64
    strict_counts: bool = False
    submission_dir: Path | None = None
    allow_incomplete: bool = False  # --split test: write server files even for an incomplete gallery


def set_preprocess_mode(backbone, mode: str | None):
    """`backbone` preprocessing with `mode` (center_crop, target_pad, resize), keeping its size and
    normalisation: a view of it (same weights and fingerprint), or itself when the mode is already its own.
    The gallery cache keys on the preprocessing digest, so modes never share embeddings."""
    if mode is None or mode == backbone.preprocess_config.mode:
        return backbone
    if mode not in MODES:
        raise InputError(f"preprocessing {mode!r}: expected one of {', '.join(MODES)}")
    from zscir.backbones.tuned import TunedBackbone

    return TunedBackbone.copy_of(backbone, tune=(), preprocess=backbone.preprocess_config.with_mode(mode))


def check_template(template: str, benchmark: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    except ValueError as e:  # "{caption" and the like
        raise InputError(f"template {template!r}: not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
    allowed = TEMPLATE_FIELDS[benchmark]
    if "caption" not in fields:
        raise InputError(f"template {template!r} has no {{caption}} field")
    bad = fields - allowed
    if bad:
        raise InputError(f"template {template!r}: field(s) {sorted(bad)} not available for {benchmark} "
                         f"(available: {sorted(allowed)})")


def blank_queries(split: BenchmarkSplit) -> list[str]:
    """Ids of the queries whose modification is empty in the official file (kept, answered, counted)."""
    if split.benchmark == "fashioniq":
        return [q.qid for q in split.queries if not join_captions(q.texts, "forward")[0]]
    return [q.qid for q in split.queries if not q.texts or not q.texts[0].strip()]


def query_texts(split: BenchmarkSplit, template: str, caption_order: str) -> list[list[str]]:
    """Per text variant, one text per query (FashionIQ with caption order "both" has two variants). An empty
    modification stays empty (the method answers it as it answers an empty text: the reference unchanged for
    interpolation methods, the template without its `that {text}` for pseudo-token methods)."""
    if split.benchmark == "fashioniq":
        per_query = [join_captions(q.texts, caption_order) for q in split.queries]
        variants = [[t[v] for t in per_query] for v in range(len(per_query[0]))]
    else:
        variants = [[q.texts[0] if q.texts else "" for q in split.queries]]
    return [[template.format(caption=c, **{k: v for k, v in q.fields.items() if isinstance(v, str)}).strip()
             if c.strip() else "" for c, q in zip(var, split.queries)] for var in variants]


def _compose(method, split: BenchmarkSplit, settings: EvalSettings) -> torch.Tensor:
    images = split.images()
    refs = [images[q.reference] for q in split.queries]
    out = None
    for texts in query_texts(split, settings.template, settings.caption_order):
        q = compose_queries(method, refs, texts, settings.batch_size, desc=f"{split.benchmark} {split.subset} queries")
        out = q if out is None else out + q
    return F.normalize(out, dim=-1)


def _gallery(method, split: BenchmarkSplit, settings: EvalSettings) -> torch.Tensor:
    return embed_gallery(method, [g.id for g in split.gallery], split.gallery, settings.cache_dir,
                         settings.batch_size, desc=f"{split.benchmark} {split.subset} gallery")


def _eval_subset(method, split: BenchmarkSplit, settings: EvalSettings) -> dict[str, Any]:
    gal = _gallery(method, split, settings)
    qry = _compose(method, split, settings)
    gidx = split.gallery_index()
    result: dict[str, Any] = {"data": split.summary()}
    if split.benchmark == "fashioniq":
        res = single_target_protocol(qry, gal, [gidx[q.targets[0]] for q in split.queries], ks=(10, 50))
        result["metrics"] = res.metrics
    elif split.benchmark == "cirr":
        test = not split.has_targets
        res = cirr_protocol(qry, gal, [gidx[q.reference] for q in split.queries],
                            None if test else [gidx[q.targets[0]] for q in split.queries],
                            [[gidx[m] for m in q.members] for q in split.queries])
        names = [g.id for g in split.gallery]
        if test:
            recall, subset = sub.cirr_submissions([q.qid for q in split.queries],
                                                  [[names[j] for j in row] for row in res.top],
                                                  [[names[j] for j in row] for row in res.extra["subset_top"]])
            result["files"] = [str(p) for p in sub.write_cirr(
                settings.submission_dir or Path("."), recall, subset, {q.qid: q.reference for q in split.queries},
                {q.qid: q.members for q in split.queries}, names)]
        else:
            m = dict(res.metrics)
            m["(R@5+Rs@1)/2"] = (m["R@5"] + m["Rs@1"]) / 2
            result["metrics"] = m
    elif split.benchmark == "circo":
        ids = [g.id for g in split.gallery]
        test = not split.has_targets
        res = circo_protocol(qry, gal, ids, None if test else [q.targets for q in split.queries],
                             None if test else [q.targets[0] for q in split.queries])
        if test:
            s = sub.circo_submission([q.qid for q in split.queries], [[ids[j] for j in row] for row in res.top])
            path = (settings.submission_dir or Path(".")) / "circo_test_submission.json"
            result["files"] = [str(sub.write_circo(path, s, len(split.queries), ids))]
        else:
            result["metrics"] = res.metrics
            result["semantic_mAP@10"] = _semantic_map(split, [[ids[j] for j in row] for row in res.top])
    elif split.benchmark == "genecis":
        cidx = [[gidx[c] for c in q.candidates] for q in split.queries]
        n = len(cidx[0])
        cand = gal[torch.as_tensor(cidx)]  # (Q, n, D)
        s = torch.einsum("qd,qnd->qn", qry, cand)
        ranks = target_ranks(s, torch.zeros(len(cidx), dtype=torch.long))
        result["metrics"] = recall_at_k(ranks, (1, 2, 3), "R")
        result["candidates_per_query"] = n
    return result


def _semantic_map(split: BenchmarkSplit, preds: list[list[str]]) -> dict[str, float]:
    by_aspect: dict[str, list[int]] = {}
    for i, q in enumerate(split.queries):
        for a in q.fields.get("semantic_aspects", []):
            by_aspect.setdefault(a, []).append(i)
    return {a: map_at_k([preds[i] for i in idx], [split.queries[i].targets for i in idx], (10,))["mAP@10"]
            for a, idx in sorted(by_aspect.items())}


def aggregate(benchmark: str, per: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The tables' summary numbers over subsets (FashionIQ: average R@10, R@50 and their mean; GeneCIS:
    average R@1 over tasks); for CIRR and CIRCO the one subset's metrics."""
    ms = [r["metrics"] for r in per.values() if "metrics" in r]
    if not ms:
        return {}
    if benchmark == "fashioniq":
        r10 = sum(m["R@10"] for m in ms) / len(ms)
        r50 = sum(m["R@50"] for m in ms) / len(ms)
        return {"R@10": r10, "R@50": r50, "mean": (r10 + r50) / 2}
    if benchmark == "genecis":
        return {"average R@1": sum(m["R@1"] for m in ms) / len(ms)}
    return dict(ms[0])


def evaluate(method, settings: EvalSettings) -> dict[str, Any]:
    """Run one benchmark; returns the results document (what `zscir eval` writes as JSON)."""
    b = settings.benchmark
    if b not in SUBSETS:
        raise InputError(f"unknown benchmark {b!r}; expected one of {', '.join(SUBSETS)}")
    if settings.split == "test" and b == "fashioniq":
        raise InputError("fashioniq has no test server and no public test targets (nobody reports FashionIQ "
                         "test); use --split val")
    if settings.split == "test" and b == "genecis":
        raise InputError("genecis has a single evaluation split with public answers and no server; use --split val")
    check_template(settings.template, b)
    subsets = list(settings.subsets) if settings.subsets else list(SUBSETS[b])
    bad = [s for s in subsets if s not in SUBSETS[b]]
    if bad:
        raise InputError(f"{b}: unknown subset(s) {bad}; expected some of {', '.join(SUBSETS[b])}")
    # Load (and check) every subset before embedding anything: a missing file fails in seconds.
    splits = {s: load_benchmark(b, settings.root, s, settings.split, settings.strict_counts) for s in subsets}
    if settings.split == "test" and not settings.allow_incomplete:
        short = [n for sp in splits.values() for n in sp.notes] or \
            [f"{b} test: not the full split" for sp in splits.values() if not sp.complete]
        if short:
            raise InputError(f"{short[0]}; a server submission needs the complete official split (the server "
                             "scores every query against the whole gallery), nothing written; pass "
                             "--allow-incomplete to write it anyway")
    blanks = {s or b: blank_queries(sp) for s, sp in splits.items()}
    n_blank = sum(len(v) for v in blanks.values())
    if n_blank:
        first = next(f"{k} query {v[0]}" for k, v in blanks.items() if v)
        log.warning("%d quer%s with an empty modification text in the official file (first: %s); kept and "
                    "answered as an empty text", n_blank, "y" if n_blank == 1 else "ies", first)
    partial = b in ("fashioniq", "genecis") and sorted(subsets) != sorted(SUBSETS[b])
    t0 = time.perf_counter()
    per = {s or b: _eval_subset(method, sp, settings) for s, sp in splits.items()}
    for k, ids in blanks.items():
        per[k]["data"]["blank_modifications"] = len(ids)
        if ids:
            per[k]["data"]["blank_modification_queries"] = ids[:20]
    summary = aggregate(b, per)
    if partial and summary:
        summary["partial"] = True
        summary["subsets"] = list(subsets)
    bb = method.backbone
    doc: dict[str, Any] = {
        "benchmark": b,
        "split": settings.split,
        "root": str(settings.root),
        "complete": all(sp.complete for sp in splits.values()) and not partial,
        "blank_modifications": n_blank,
        "results": per,
        "summary": summary,
        "method": {"name": method.name, "settings": method.settings(),
                   **({"checkpoint": getattr(method, "checkpoint_ref")} if getattr(method, "checkpoint_ref", None)
                      else {})},
        "backbone": {
            "spec": getattr(bb, "spec", None),
            "fingerprint": bb.fingerprint(),
            "weights": getattr(bb, "weights_tag", None) or getattr(bb, "spec", None),
        },
        "preprocess": dataclasses.asdict(bb.preprocess_config),
        "text": {"template": settings.template,
                 **({"caption_order": settings.caption_order} if b == "fashioniq" else {})},
        "protocol": PROTOCOL_NOTES[b],
        "zscir_version": zscir.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    files = [f for r in per.values() for f in r.get("files", [])]
    if files:
        doc["submission_files"] = files
    return doc


PROTOCOL_NOTES = {
    "fashioniq": "val, per category; gallery = image_splits; reference kept; ties by gallery order",
    "cirr": "reference removed; Recall_subset over img_set.members in the global order; gallery = all split keys",
    "circo": "gallery = all of image_info_unlabeled2017; reference kept (as the official evaluation); top-50 mAP",
    "genecis": "candidates = [target] + gallery; templates with a non-modal gallery length left out (official)",
}


def format_table(doc: dict[str, Any]) -> str:
    """The standard table for a results document."""
    b = doc["benchmark"]
    per = doc["results"]
    lines = [f"{b} {doc['split']}  method={doc['method']['name']} {doc['method']['settings'] or ''}  "
             f"backbone={doc['backbone']['spec']}  preprocess={doc['preprocess']['mode']}"]
    if not doc.get("complete", True):
        lines.append("WARNING: not the full official split; numbers are not comparable with published tables")
    if doc.get("blank_modifications"):
        lines.append(f"note: {doc['blank_modifications']} quer(ies) with an empty modification in the official file, "
                     "kept and answered as an empty text")
    avg = "average (partial)" if doc.get("summary", {}).get("partial") else "average"
    if doc.get("submission_files"):
        lines += ["wrote " + f for f in doc["submission_files"]]
        return "\n".join(lines)

    def row(name: str, vals: Sequence[float]) -> str:
        return f"{name:<18}" + "".join(f"{v:>10.2f}" for v in vals)

    def header(cols: Sequence[str]) -> str:
        return f"{'':<18}" + "".join(f"{c:>10}" for c in cols)

    if b == "fashioniq":
        lines.append(header(["R@10", "R@50"]))
        lines += [row(k, [r["metrics"]["R@10"], r["metrics"]["R@50"]]) for k, r in per.items()]
        s = doc["summary"]
        lines.append(row(avg, [s["R@10"], s["R@50"]]))
        lines.append(f"{'mean of averages':<18}{s['mean']:>10.2f}")
    elif b == "cirr":
        cols = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "(R@5+Rs@1)/2"]
        m = doc["summary"]
        lines.append(header([c if len(c) < 10 else "Avg" for c in cols]))
        lines.append(row("cirr", [m[c] for c in cols]))
    elif b == "circo":
        cols = ["mAP@5", "mAP@10", "mAP@25", "mAP@50"]
        lines.append(header(cols))
        lines.append(row("circo", [doc["summary"][c] for c in cols]))
    elif b == "genecis":
        lines.append(header(["R@1", "R@2", "R@3"]))
        lines += [row(k, [r["metrics"][f"R@{i}"] for i in (1, 2, 3)]) for k, r in per.items()]
        lines.append(f"{avg + ' R@1':<18}{doc['summary']['average R@1']:>10.2f}")
    return "\n".join(lines)
