"""Synthetic CIR triplets from a user's own image-caption pairs (the premise of two-stage's stage 2: "a small
amount of synthetic triplets"), and the reader of CIR-triplet files.

`make_cir_triplets`: for each pair (image, caption), a rule-based edit of the caption gives (modification
text, edited caption) - the edit function is passed in (the CLI passes zscir.train.triplets'
`generate_triplets`: swap an attribute word, add or remove a phrase); the target is the image whose embedding
is nearest to the edited caption's text embedding (the reference excluded), kept only when that cosine is at
least `min_similarity` and, with `min_margin` set, the target matches the edited caption better than the
original caption by that margin (otherwise the "target" is just another picture of the reference). Image
and text embeddings come from the frozen-feature cache, so a second run (another floor, or a trainer) does
not recompute them.

File format (JSONL, one object per line): {"reference": path, "modification": text, "target": path, ...};
paths relative to the file's folder (absolute ones allowed); a path may name a tar member
(`shards/00000.tar#000000012.jpg`, see zscir.data.sources.read_location). Extra keys (scores, captions) are
kept as metadata."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zscir.data.cache import CachedFeatures, FeatureCache
from zscir.data.features import image_features, text_features
from zscir.data.sources import Source, iter_jsonl, split_location
from zscir.data.stream import StreamConfig
from zscir.errors import InputError
from zscir.utils.io import write_text

log = logging.getLogger(__name__)

#: (captions, per_caption, seed) -> objects with .reference, .modification, .target caption strings
CaptionEditor = Callable[[Sequence[str], int, int], Sequence[Any]]


@dataclass(frozen=True)
class CIRTriplet:
    """A composed-retrieval training triplet: reference image location, modification text, target image
    location (absolute locations, readable with zscir.data.load_location)."""

    reference: str
    modification: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class TripletReport:
    """What make_cir_triplets did: `kept` of `candidates` edits became triplets (kept_fraction)."""

    images: int  # readable images (all are target candidates)
    pairs: int  # images with a caption
    candidates: int  # caption edits whose reference caption belongs to a pair
    kept: int
    below_floor: int
    below_margin: int
    min_similarity: float
    min_margin: float | None
    mean_similarity_kept: float
    out: str
    unreadable: int
    #: 10th, 50th and 90th percentile of the best target similarity over all edits (to choose a floor)
    similarity_quantiles: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.candidates if self.candidates else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_fraction": self.kept_fraction}

    def summary(self) -> str:
        margin = f", {self.below_margin} closer to the original caption" if self.min_margin is not None else ""
        return (f"{self.out}: kept {self.kept} of {self.candidates} edited captions ({self.kept_fraction:.1%}; "
                f"{self.below_floor} below similarity {self.min_similarity:g}{margin}) from {self.pairs} pairs, "
                f"{self.images} images" + (f", {self.unreadable} unreadable" if self.unreadable else "")
                + "; best-target similarity p10/p50/p90 " + "/".join(f"{q:.2f}" for q in self.similarity_quantiles))


def _nearest(feats: CachedFeatures, queries: torch.Tensor, exclude: Sequence[int], k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) of each query over the memory-mapped image embeddings, one shard at a time."""
    q = F.normalize(queries.float(), dim=-1)
    best_s = torch.full((len(q), k), -float("inf"))
    best_i = torch.full((len(q), k), -1, dtype=torch.long)
    for s, arr in enumerate(feats.arrays):
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        sims = q @ F.normalize(x, dim=-1).T
        off = int(feats.offsets[s])
        for r, e in enumerate(exclude):  # the reference is never its own target
            if off <= e < off + len(x):
                sims[r, e - off] = -float("inf")
        kk = min(k, sims.shape[1])
        ts, ti = sims.topk(kk, dim=1)
        cat_s, cat_i = torch.cat([best_s, ts], 1), torch.cat([best_i, ti + off], 1)
        order = cat_s.argsort(dim=1, descending=True)[:, :k]
        best_s, best_i = cat_s.gather(1, order), cat_i.gather(1, order)
    return best_s.numpy(), best_i.numpy()


def _rel(location: str, base: Path) -> str:
    try:
        return os.path.relpath(location, base)
    except ValueError:  # another drive (Windows)
        return location


def make_cir_triplets(
    backbone,
    source: Source,
    out: str | Path,
    edit: CaptionEditor,
    *,
    per_caption: int = 2,
    min_similarity: float = 0.2,
    min_margin: float | None = None,
    seed: int = 0,
    max_triplets: int | None = None,
    cache: FeatureCache | str | Path | None = None,
    config: StreamConfig | None = None,
    targets: Source | None = None,
) -> TripletReport:
    """Write synthetic CIR triplets made from `source`'s image-caption pairs to `out` (JSONL) and report.

    Targets are chosen among the pairs' images and, when given, the images of `targets` (e.g. unlabelled
    images: a larger pool holds more right targets); the reference image is never its own target.

    Refused (InputError) when the source has no captions, or when no edit clears the floor (the message
    gives the best similarity seen, so the floor can be chosen)."""
    if not source.has_captions:
        raise InputError(f"{source.spec}: a {source.kind} source has no captions; triplets need image-caption "
                         "pairs (a listing with a caption column, or WebDataset shards with .txt)")
    out = Path(out)
    feats = image_features(backbone, source, "image_embedding", cache=cache, dtype=torch.float16,
                           config=config or StreamConfig(batch_size=64, workers=0, max_bad_fraction=1.0))
    pair_rows = [i for i, c in enumerate(feats.captions) if c]
    pair_captions = [c for c in feats.captions if c]  # the captions of pair_rows
    if not pair_rows:
        raise InputError(f"{source.spec}: none of the {len(feats)} readable images has a caption")
    caption_row: dict[str, int] = {}
    for i, cap in zip(pair_rows, pair_captions):
        caption_row.setdefault(cap, i)
    edits = [t for t in edit(pair_captions, per_caption, seed) if t.reference in caption_row]
    if not edits:
        raise InputError(f"{source.spec}: the caption editor made no edit of these captions")
    refs = [caption_row[t.reference] for t in edits]
    # text embeddings are cached too: another floor or margin on the same pairs recomputes nothing
    target_emb = text_features(backbone, [t.target for t in edits], "text_embedding", cache=cache).tensor().float()
    scores, rows = _nearest(feats, target_emb, refs, k=1)
    pools = [feats] * len(edits)  # which cache entry each chosen target row belongs to
    if targets is not None:
        extra = image_features(backbone, targets, "image_embedding", cache=cache, dtype=torch.float16,
                               config=config or StreamConfig(batch_size=64, workers=0, max_bad_fraction=1.0))
        xs, xr = _nearest(extra, target_emb, [], k=2)
        for j in range(len(edits)):
            ref_loc = feats.locations[refs[j]]
            for c in range(xs.shape[1]):  # the reference may be in the extra pool too: never its own target
                if xr[j, c] >= 0 and extra.locations[int(xr[j, c])] != ref_loc:
                    if xs[j, c] > scores[j, 0]:
                        scores[j, 0], rows[j, 0], pools[j] = xs[j, c], xr[j, c], extra
                    break
    if min_margin is not None:
        ref_cap_emb = text_features(backbone, [t.reference for t in edits], "text_embedding",
                                    cache=cache).tensor().float()
    kept: list[dict[str, Any]] = []
    below_floor = below_margin = 0
    base = out.resolve().parent
    best_seen = float(scores.max()) if scores.size else float("-inf")
    for j, t in enumerate(edits):
        s, r = float(scores[j, 0]), int(rows[j, 0])
        if r < 0 or s < min_similarity:
            below_floor += 1
            continue
        pool = pools[j]
        if min_margin is not None:
            img = torch.from_numpy(np.asarray(pool[r], np.float32))
            img = F.normalize(img, dim=0)
            if s - float(F.normalize(ref_cap_emb[j], dim=0) @ img) < min_margin:
                below_margin += 1
                continue
        kept.append({"reference": _rel(feats.locations[refs[j]], base), "modification": t.modification,
                     "target": _rel(pool.locations[r], base), "similarity": round(s, 4),
                     "reference_caption": t.reference, "target_caption": t.target})
        if max_triplets is not None and len(kept) >= max_triplets:
            break
    if not kept:
        if below_margin:
            raise InputError(f"{source.spec}: {below_floor} of {len(edits)} edits fall below the similarity floor "
                             f"{min_similarity:g} and the other {below_margin} below the margin {min_margin:g}; "
                             "lower --min-margin (or leave it out)")
        raise InputError(f"{source.spec}: no edit clears the similarity floor {min_similarity:g} (best "
                         f"{best_seen:.3f} over {len(edits)} edits); lower --min-similarity")
    write_text(out, "".join(json.dumps(row, ensure_ascii=True) + "\n" for row in kept))
    p10, p50, p90 = (round(float(q), 4) for q in np.quantile(scores[:, 0], [0.1, 0.5, 0.9]))
    report = TripletReport(images=len(feats) + (len(extra) if targets is not None else 0), pairs=len(pair_rows), candidates=len(edits), kept=len(kept),
                           below_floor=below_floor, below_margin=below_margin, min_similarity=min_similarity,
                           min_margin=min_margin,
                           mean_similarity_kept=round(float(np.mean([k["similarity"] for k in kept])), 4),
                           out=str(out), unreadable=int(feats.meta.get("failures", 0)),
                           similarity_quantiles=(p10, p50, p90))
    log.info(report.summary())
    return report


def read_cir_triplets(path: str | Path, max_missing: float = 0.05) -> list[CIRTriplet]:
    """CIR triplets from a JSONL file (see the module docstring), locations made absolute. Rows whose image
    is missing are skipped with a warning unless they are more than `max_missing` of the file (refused)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: triplet file not found")
    base = path.resolve().parent
    out: list[CIRTriplet] = []
    missing: list[str] = []
    total = 0
    for n, row in iter_jsonl(path, "with reference, modification, target"):
        total += 1
        vals = []
        for k in ("reference", "modification", "target"):
            v = row.get(k)
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"{path}:{n}: {k!r} must be a non-empty string")
            vals.append(v.strip())
        locs = [v if os.path.isabs(v) else os.path.normpath(base / v) for v in (vals[0], vals[2])]
        gone = [v for v, loc in zip((vals[0], vals[2]), locs) if not os.path.isfile(split_location(loc)[0])]
        if gone:
            missing.append(f"line {n}: {gone[0]}")
            continue
        meta = {k: v for k, v in row.items() if k not in ("reference", "modification", "target")}
        out.append(CIRTriplet(locs[0], " ".join(vals[1].split()), locs[1], meta))
    if total == 0:
        raise InputError(f"{path}: no triplets")
    if missing:
        frac = len(missing) / total
        shown = "; ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        if frac > max_missing or not out:
            raise InputError(f"{path}: {len(missing)} of {total} triplets name a missing image ({frac:.0%} > the "
                             f"allowed {max_missing:.0%}): {shown}")
        log.warning("%s: skipped %d triplet(s) with a missing image: %s", path, len(missing), shown)
    return out
