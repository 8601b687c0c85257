"""Retrieval metrics exactly as the ZS-CIR peers compute them (benchmarks.md §1-2).

Conventions, everywhere in zscir:
  * similarity is the cosine of L2-normalised embeddings;
  * rankings sort by descending score, and **ties keep gallery order** (a stable sort: of two images with
    equal score, the one earlier in the gallery ranks first), so results never depend on sort internals;
  * ranks are 0-based; metrics are percentages (100 * mean).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
MAP_KS = (5, 10, 25, 50)


def stable_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of scores (..., N) by descending score, ties in index order."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of targets[i] in row i of scores (Q, N), ties broken by gallery index.

    Equal to the position of the target in stable_order(scores[i]), without sorting the row."""
    q = torch.arange(scores.shape[0])
    t_score = scores[q, targets].unsqueeze(1)
    idx = torch.arange(scores.shape[1]).unsqueeze(0)
    before = (scores > t_score) | ((scores == t_score) & (idx < targets.unsqueeze(1)))
    return before.sum(dim=1)


def _ranks(ranks: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    r = np.asarray(torch.as_tensor(ranks).cpu().numpy() if isinstance(ranks, torch.Tensor) else ranks)
    if r.size == 0:
        raise ValueError("no queries to evaluate")
    return r


def recall_hits(ranks: Sequence[int] | np.ndarray | torch.Tensor, ks: Iterable[int] = RECALL_KS,
                prefix: str = "R") -> dict[str, np.ndarray]:
    """{f"{prefix}@{k}": per query 100 if rank < k else 0} for 0-based ranks of a single target per query: the
    per-query values whose mean is `recall_at_k` (paired comparisons of two methods need them)."""
    r = _ranks(ranks)
    return {f"{prefix}@{k}": 100.0 * (r < k) for k in ks}


def recall_at_k(ranks: Sequence[int] | np.ndarray | torch.Tensor, ks: Iterable[int] = RECALL_KS, prefix: str = "R") -> dict[str, float]:
    """{f"{prefix}@{k}": 100 * mean(rank < k)} for 0-based ranks of a single target per query."""
    r = _ranks(ranks)
    return {f"{prefix}@{k}": float(100.0 * np.mean(r < k)) for k in ks}


def subset_ranks(order: Sequence[int], members: Sequence[int], target: int) -> int:
    """Rank of target among `members` in the global ranking `order` (the reference already removed)."""
    member_set = set(int(m) for m in members)
    sub = [int(i) for i in order if int(i) in member_set]
    return sub.index(int(target))


def average_precision_at_k(predictions: Sequence, ground_truth: Iterable, k: int) -> float:
    """CIRCO's AP@K: sum_{k'<=K} P@k' * rel_k' / min(K, |GT|) over the prediction list."""
    gt = set(ground_truth)
    if not gt:
        raise ValueError("a query with no ground truth")
    hits = 0
    total = 0.0
    for rank, p in enumerate(list(predictions)[:k], start=1):
        if p in gt:
            hits += 1
            total += hits / rank
    return total / min(k, len(gt))


def map_at_k(predictions: Sequence[Sequence], ground_truths: Sequence[Iterable], ks: Iterable[int] = MAP_KS) -> dict[str, float]:
    """{f"mAP@{k}": 100 * mean AP@k}; each prediction list must be duplicate-free (the server refuses)."""
    return {f"mAP@{k}": float(100.0 * np.mean(v)) for k, v in _aps(predictions, ground_truths, ks).items()}


def average_precisions(predictions: Sequence[Sequence], ground_truths: Sequence[Iterable],
                       ks: Iterable[int] = MAP_KS) -> dict[str, np.ndarray]:
    """{f"mAP@{k}": per query 100 * AP@k}: the per-query values whose mean is `map_at_k`."""
    return {f"mAP@{k}": 100.0 * v for k, v in _aps(predictions, ground_truths, ks).items()}


def _aps(predictions: Sequence[Sequence], ground_truths: Sequence[Iterable], ks: Iterable[int]) -> dict[int, np.ndarray]:
    """{k: per-query AP@k} after the checks every mAP needs."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truths)} queries")
    if not predictions:
        raise ValueError("no queries to evaluate")
    for i, p in enumerate(predictions):
        if len(set(p)) != len(p):
            raise ValueError(f"query {i}: duplicate ids in the prediction list")
    gts = [set(g) for g in ground_truths]
    return {k: np.array([average_precision_at_k(p, g, k) for p, g in zip(predictions, gts)]) for k in ks}
