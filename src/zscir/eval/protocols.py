"""Evaluation protocols on precomputed embeddings (benchmarks.md §2.2), shared by the synthetic world and
the real benchmarks.

  cirr_protocol    single target; the reference is removed from the ranking; R@1/5/10/50 and
                   Recall_subset@1/2/3 over the group members (global order kept, reference removed)
  circo_protocol   several ground truths; the reference is NOT removed (as the official evaluation);
                   mAP@5/10/25/50 on the top-50 list, plus R@K of the caption's own target
  single_target    FashionIQ-style: reference kept; R@K of one target
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zscir.eval.engine import score, topk_stable
from zscir.eval.metrics import (
    MAP_KS,
    RECALL_KS,
    SUBSET_KS,
    average_precisions,
    map_at_k,
    recall_at_k,
    recall_hits,
    subset_ranks,
    target_ranks,
)


@dataclass
class ProtocolResult:
    """Metrics (percentages) plus the per-query rankings that produced them (for reports and files) and each
    metric's per-query values (`per_query[name]`, whose mean is `metrics[name]`: what a paired comparison of two
    methods on the same queries needs, see zscir.eval.claims.paired_se)."""

    metrics: dict[str, float]
    top: list[list[int]] = field(default_factory=list)  # per query, top gallery indices
    top_scores: list[list[float]] = field(default_factory=list)  # their cosine scores
    extra: dict[str, Any] = field(default_factory=dict)
    per_query: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, metrics: dict[str, float], per_query: dict[str, Any], top: list[list[int]],
           top_scores: list[list[float]], extra: dict[str, Any] | None = None) -> ProtocolResult:
        """A result with its per-query values as plain lists (JSON-ready)."""
        return cls(metrics, top, top_scores, extra or {}, {k: [float(x) for x in v] for k, v in per_query.items()})

    def per_query_record(self, qids: Sequence[Any]) -> dict[str, Any]:
        """The per-query values keyed by query id, for a results file (see per_query_record)."""
        return per_query_record(qids, self.per_query)


def per_query_record(qids: Sequence[Any], values: dict[str, Any]) -> dict[str, Any]:
    """{"qids": [...], "values": {metric: [...]}} in query order: what `zscir compare` pairs two results files by
    (values in percent, APs to 4 decimals)."""
    vals = {k: [round(float(x), 4) for x in v] for k, v in values.items()}
    if any(len(v) != len(qids) for v in vals.values()):
        raise ValueError("per-query values and query ids of different lengths")
    return {"qids": [str(q) for q in qids], "values": vals}


def cirr_protocol(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    reference_idx: Sequence[int],
    target_idx: Sequence[int] | None,
    members_idx: Sequence[Sequence[int]],
    ks: Sequence[int] = RECALL_KS,
    subset_ks: Sequence[int] = SUBSET_KS,
    top_n: int = 50,
) -> ProtocolResult:
    """CIRR: remove each query's reference, rank the rest. With target_idx None (test split) only the
    rankings are returned (top-50 and the subset top-3, for the server files)."""
    s = score(queries, gallery, exclude=list(reference_idx))
    top = topk_stable(s, top_n)
    subsets: list[list[int]] = []
    for i, members in enumerate(members_idx):
        # the members in the global order (score descending, ties by gallery index), reference removed:
        # sorting just the members this way equals filtering the full ranking, without sorting N per query
        keep = sorted(set(int(m) for m in members) - {int(reference_idx[i])})
        ms = s[i, keep]
        subsets.append([keep[j] for j in torch.sort(ms, descending=True, stable=True).indices.tolist()])
    metrics: dict[str, float] = {}
    per_query: dict[str, Any] = {}
    if target_idx is not None:
        t = torch.as_tensor(list(target_idx))
        ranks = target_ranks(s, t)
        metrics.update(recall_at_k(ranks, ks, "R"))
        per_query.update(recall_hits(ranks, ks, "R"))
        if subset_ks:
            sub_r = [subset_ranks(subsets[i], subsets[i], int(t[i])) for i in range(len(subsets))]
            metrics.update(recall_at_k(sub_r, subset_ks, "Rs"))
            per_query.update(recall_hits(sub_r, subset_ks, "Rs"))
    return ProtocolResult.of(metrics, per_query, top, _top_scores(s, top), {"subset_top": [row[:3] for row in subsets]})


def circo_protocol(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_ids: Sequence,
    ground_truths: Sequence[Sequence] | None,
    target_ids: Sequence | None = None,
    ks: Sequence[int] = MAP_KS,
    top_n: int = 50,
) -> ProtocolResult:
    """CIRCO: rank the whole gallery (reference kept), mAP@K on the top-50 ids. With ground_truths None
    (test split) only the rankings are returned."""
    s = score(queries, gallery)
    top = topk_stable(s, top_n)
    metrics: dict[str, float] = {}
    per_query: dict[str, Any] = {}
    if ground_truths is not None:
        preds = [[gallery_ids[j] for j in row] for row in top]
        metrics.update(map_at_k(preds, ground_truths, ks))
        per_query.update(average_precisions(preds, ground_truths, ks))
        if target_ids is not None:
            ranks = [p.index(t) if t in p else top_n for p, t in zip(preds, target_ids)]
            metrics.update(recall_at_k(ranks, (5, 10, 25, 50), "R"))
            per_query.update(recall_hits(ranks, (5, 10, 25, 50), "R"))
    return ProtocolResult.of(metrics, per_query, top, _top_scores(s, top))


def single_target_protocol(
    queries: torch.Tensor, gallery: torch.Tensor, target_idx: Sequence[int], ks: Sequence[int] = (10, 50), top_n: int = 50
) -> ProtocolResult:
    """FashionIQ / GeneCIS style: the reference stays in the gallery; R@K of the one target."""
    s = score(queries, gallery)
    ranks = target_ranks(s, torch.as_tensor(list(target_idx)))
    top = topk_stable(s, top_n)
    return ProtocolResult.of(recall_at_k(ranks, ks, "R"), recall_hits(ranks, ks, "R"), top, _top_scores(s, top))


def _top_scores(scores: torch.Tensor, top: list[list[int]]) -> list[list[float]]:
    return [[float(scores[i, j]) for j in row] for i, row in enumerate(top)]
