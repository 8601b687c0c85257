"""Evaluate a composition method on a registered benchmark with its exact protocol (benchmarks.md §2.2).

The steps every benchmark shares live here: check the template, load (and check) every subset before
embedding anything, embed the gallery once per (encoder, gallery) (cached by the engine), compose the queries
from the template and the benchmark's modification texts, then hand both to the benchmark's protocol and
aggregate. What differs between benchmarks (subsets, template fields, protocol, summary numbers, table rows)
is declared by each benchmark's module in zscir.datasets (registry.py). `--split test` ranks without ground
truth and the protocol writes the server files after validating them. Ties are broken by gallery
(candidate-list) order everywhere (metrics.py).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import zscir
from zscir.backbones.preprocess import MODES
from zscir.datasets import BenchmarkSplit, get_benchmark
from zscir.errors import InputError
from zscir.eval.engine import compose_queries, embed_gallery

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{caption}"


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
    allowed = get_benchmark(benchmark).template_fields
    if "caption" not in fields:
        raise InputError(f"template {template!r} has no {{caption}} field")
    bad = fields - allowed
    if bad:
        raise InputError(f"template {template!r}: field(s) {sorted(bad)} not available for {benchmark} "
                         f"(available: {sorted(allowed)})")


def blank_queries(split: BenchmarkSplit) -> list[str]:
    """Ids of the queries whose modification is empty in the official file (kept, answered, counted)."""
    bench = get_benchmark(split.benchmark)
    return [q.qid for q in split.queries if bench.is_blank(q)]


def query_texts(split: BenchmarkSplit, template: str, caption_order: str) -> list[list[str]]:
    """Per text variant, one text per query (FashionIQ with caption order "both" has two variants). An empty
    modification stays empty (the method answers it as it answers an empty text: the reference unchanged for
    interpolation methods, the template without its `that {text}` for pseudo-token methods)."""
    bench = get_benchmark(split.benchmark)
    per_query = [bench.modification_texts(q, caption_order) for q in split.queries]
    variants = [[t[v] for t in per_query] for v in range(len(per_query[0]) if per_query else 1)]
    return [[template.format(caption=c, **{k: v for k, v in q.fields.items() if isinstance(v, str)}).strip()
             if c.strip() else "" for c, q in zip(var, split.queries)] for var in variants]


def _compose(method, split: BenchmarkSplit, settings: EvalSettings) -> torch.Tensor:
    images = split.images()
    refs = [images[q.reference] for q in split.queries]
    out: torch.Tensor | None = None
    for texts in query_texts(split, settings.template, settings.caption_order):
        q = compose_queries(method, refs, texts, settings.batch_size, desc=f"{split.benchmark} {split.subset} queries")
        out = q if out is None else out + q
    assert out is not None  # query_texts yields at least one variant
    return F.normalize(out, dim=-1)


def _gallery(method, split: BenchmarkSplit, settings: EvalSettings) -> torch.Tensor:
    return embed_gallery(method, [g.id for g in split.gallery], split.gallery, settings.cache_dir,
                         settings.batch_size, desc=f"{split.benchmark} {split.subset} gallery")


def _eval_subset(method, split: BenchmarkSplit, settings: EvalSettings) -> dict[str, Any]:
    gal = _gallery(method, split, settings)
    qry = _compose(method, split, settings)
    return {"data": split.summary(), **get_benchmark(split.benchmark).evaluate(split, qry, gal, settings)}


def evaluate(method, settings: EvalSettings) -> dict[str, Any]:
    """Run one benchmark; returns the results document (what `zscir eval` writes as JSON)."""
    b = settings.benchmark
    bench = get_benchmark(b)
    if settings.split == "test" and bench.test_split_refusal:
        raise InputError(bench.test_split_refusal)
    check_template(settings.template, b)
    subsets = list(settings.subsets) if settings.subsets else list(bench.subsets)
    bad = [s for s in subsets if s not in bench.subsets]
    if bad:
        raise InputError(f"{b}: unknown subset(s) {bad}; expected some of {', '.join(bench.subsets)}")
    # Load (and check) every subset before embedding anything: a missing file fails in seconds.
    splits = {s: bench.load(settings.root, s, settings.split, settings.strict_counts) for s in subsets}
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
    partial = sorted(subsets) != sorted(bench.subsets)
    t0 = time.perf_counter()
    per = {s or b: _eval_subset(method, sp, settings) for s, sp in splits.items()}
    for k, ids in blanks.items():
        per[k]["data"]["blank_modifications"] = len(ids)
        if ids:
            per[k]["data"]["blank_modification_queries"] = ids[:20]
    summary: dict[str, Any] = bench.aggregate(per)
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
                   **({"checkpoint": method.checkpoint_ref} if getattr(method, "checkpoint_ref", None)
                      else {})},
        "backbone": {
            "spec": getattr(bb, "spec", None),
            "fingerprint": bb.fingerprint(),
            "weights": getattr(bb, "weights_tag", None) or getattr(bb, "spec", None),
        },
        "preprocess": dataclasses.asdict(bb.preprocess_config),
        "text": {"template": settings.template, **bench.text_settings(settings)},
        "protocol": bench.protocol,
        "zscir_version": zscir.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    files = [f for r in per.values() for f in r.get("files", [])]
    if files:
        doc["submission_files"] = files
    return doc


def format_table(doc: dict[str, Any]) -> str:
    """The standard table for a results document (of `zscir eval` or `zscir score`)."""
    b = doc["benchmark"]
    lines = [f"{b} {doc['split']}  method={doc['method']['name']} {doc['method']['settings'] or ''}  "
             f"backbone={doc['backbone']['spec']}  preprocess={doc['preprocess']['mode']}"]
    if not doc.get("complete", True):
        lines.append("WARNING: not the full official split; numbers are not comparable with published tables")
    if doc.get("blank_modifications"):
        lines.append(f"note: {doc['blank_modifications']} quer(ies) with an empty modification in the official file, "
                     "kept and answered as an empty text")
    if doc.get("submission_files"):
        lines += ["wrote " + f for f in doc["submission_files"]]
        return "\n".join(lines)
    avg = "average (partial)" if doc.get("summary", {}).get("partial") else "average"
    lines += get_benchmark(b).table_rows(doc, avg)
    return "\n".join(lines)
