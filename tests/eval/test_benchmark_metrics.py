"""Benchmark protocols on hand-built embeddings (rankings worked out by hand, ties included), and the CIRCO
metric on the real example submission."""

import json

import numpy as np
import pytest
import torch
from bench_fixtures import real_circo_dir

from zscir.datasets.circo import read_circo_annotations
from zscir.eval.metrics import average_precision_at_k, map_at_k, target_ranks
from zscir.eval.protocols import circo_protocol, cirr_protocol, single_target_protocol
from zscir.eval.submission import validate_circo


def unit(rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_target_ranks_ties_follow_gallery_order():
    s = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    # order: 1, then the tie 0, 2, 3 in gallery order, then 4
    assert target_ranks(s, torch.tensor([0])).tolist() == [1]
    assert target_ranks(s, torch.tensor([2])).tolist() == [2]
    assert target_ranks(s, torch.tensor([3])).tolist() == [3]
    assert target_ranks(s, torch.tensor([4])).tolist() == [4]


def test_cirr_protocol_hand_computed():
    # gallery: 6 images on a circle; query 0 is closest to image 0 (its reference), then 1, 2, ...
    ang = torch.arange(6, dtype=torch.float32) * 0.4
    gallery = torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    q = torch.stack([gallery[0], gallery[0]])
    # query 0: reference 0 (removed), target 2 -> global order 1, 2, 3, 4, 5 -> rank 1
    # query 1: reference 1 (removed), target 4 -> global order 0, 2, 3, 4, 5 -> rank 3
    res = cirr_protocol(q, gallery, [0, 1], [2, 4], [[0, 2, 4, 5], [1, 4, 5, 0]], ks=(1, 2, 5), subset_ks=(1, 2, 3))
    assert res.metrics["R@1"] == 0 and res.metrics["R@2"] == 50 and res.metrics["R@5"] == 100
    # subsets (reference removed, global order kept): q0 -> [2, 4, 5] rank 0; q1 -> [0, 4, 5] rank 1
    assert res.metrics["Rs@1"] == 50 and res.metrics["Rs@2"] == 100
    assert res.top[0] == [1, 2, 3, 4, 5] and 0 not in res.top[0]  # reference never listed
    assert res.extra["subset_top"] == [[2, 4, 5], [0, 4, 5]]


def test_cirr_protocol_ties():
    gallery = unit([[1, 0], [1, 0], [1, 0], [0, 1]])
    q = unit([[1, 0]])
    # reference 1 removed; 0 and 2 tie -> gallery order: 0 first; target 2 -> rank 1
    res = cirr_protocol(q, gallery, [1], [2], [[0, 1, 2, 3]], ks=(1, 2), subset_ks=(1, 2))
    assert res.metrics == {"R@1": 0.0, "R@2": 100.0, "Rs@1": 0.0, "Rs@2": 100.0}


def test_fashioniq_reference_kept():
    gallery = unit([[1, 0], [0.9, 0.1], [0, 1]])
    q = unit([[1, 0]])
    # the reference (0) stays and is first; target 1 is second
    res = single_target_protocol(q, gallery, [1], ks=(1, 2))
    assert res.metrics == {"R@1": 0.0, "R@2": 100.0}


def test_circo_protocol_hand_computed():
    gallery = unit([[1, 0], [0.99, 0.14], [0.9, 0.44], [0.5, 0.87], [0, 1]])
    ids = ["10", "11", "12", "13", "14"]
    q = unit([[1, 0]])
    # ranking: 10 (the reference, kept), 11, 12, 13, 14; GT = {11, 13}
    # P@2 = 1/2 (hit), P@4 = 2/4 (hit); AP@K = (1/2 + 2/4) / min(K, 2) = 0.5 for K >= 4; AP@3 = (1/2)/2 = 0.25
    res = circo_protocol(q, gallery, ids, [["11", "13"]], ["11"], ks=(3, 4), top_n=5)
    assert res.metrics["mAP@3"] == pytest.approx(25.0) and res.metrics["mAP@4"] == pytest.approx(50.0)
    assert res.metrics["R@5"] == 100.0
    assert res.top == [[0, 1, 2, 3, 4]]


def test_average_precision_hand_values():
    assert average_precision_at_k([1, 2, 3, 4, 5], {1, 3}, 5) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k([9, 9.5, 3], {3, 4, 5, 6, 7, 8}, 5) == pytest.approx((1 / 3) / 5)
    with pytest.raises(ValueError):
        map_at_k([[1, 1]], [[1]])


def official_map(preds, gts, k):
    """The official CIRCO formula written independently (NumPy, as the evaluation script does)."""
    aps = []
    for p, gt in zip(preds, gts):
        rel = np.isin(np.asarray(p[:k]), np.asarray(gt)).astype(float)
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float(np.sum(prec * rel) / min(k, len(gt))))
    return 100 * float(np.mean(aps)), aps


def test_circo_metric_on_real_example_submission():
    d = real_circo_dir()
    if d is None:
        pytest.skip("real CIRCO annotations not found (expected ../shared/data/circo beside the repo)")
    sub = json.loads((d / "submission_val_example.json").read_text())
    val = read_circo_annotations(d / "val.json", "val")
    assert validate_circo(sub, len(val)) == []
    preds = [[str(x) for x in sub[q.qid]] for q in val]
    gts = [q.targets for q in val]
    ours = map_at_k(preds, gts)
    for k in (5, 10, 25, 50):
        ref, aps = official_map(preds, gts, k)
        assert ours[f"mAP@{k}"] == pytest.approx(ref, abs=1e-9)
    # hand-checked queries: query ids with their hits in the top 50
    for q, p in zip(val, preds):
        hits = [i + 1 for i, x in enumerate(p) if x in set(q.targets)]
        manual = sum((j + 1) / r for j, r in enumerate(hits) if r <= 10) / min(10, len(q.targets))
        assert average_precision_at_k(p, q.targets, 10) == pytest.approx(manual)
    # by hand: query 7 (3 GTs) has its only hit at rank 16, query 30 (11 GTs) at rank 30, query 11 (8 GTs) at 47
    by_id = {q.qid: (p, q.targets) for q, p in zip(val, preds)}
    assert average_precision_at_k(*by_id["7"], 10) == 0.0
    assert average_precision_at_k(*by_id["7"], 25) == pytest.approx((1 / 16) / 3)
    assert average_precision_at_k(*by_id["30"], 25) == 0.0
    assert average_precision_at_k(*by_id["30"], 50) == pytest.approx((1 / 30) / 11)
    assert average_precision_at_k(*by_id["11"], 50) == pytest.approx((1 / 47) / 8)
    # the example file's figures by the official formula (it is close to a random ranking)
    assert ours == pytest.approx({"mAP@5": 0.486111, "mAP@10": 0.517767, "mAP@25": 0.540035, "mAP@50": 0.602039}, abs=1e-5)
