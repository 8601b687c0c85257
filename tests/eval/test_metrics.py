import pytest
import torch

from zscir.eval.metrics import (
    average_precision_at_k,
    average_precisions,
    map_at_k,
    recall_at_k,
    recall_hits,
    stable_order,
    subset_ranks,
    target_ranks,
)
from zscir.eval.protocols import circo_protocol, cirr_protocol


def test_target_ranks_hand_computed_with_ties():
    scores = torch.tensor([
        [0.1, 0.9, 0.5, 0.5],  # target 2 ties with 3; stable: index 2 before 3 -> rank 1
        [0.1, 0.9, 0.5, 0.5],  # target 3 ties with 2, which comes first -> rank 2
        [0.7, 0.7, 0.7, 0.7],  # all tied: rank = gallery index
    ])
    ranks = target_ranks(scores, torch.tensor([2, 3, 3]))
    assert ranks.tolist() == [1, 2, 3]
    # identical to the position in a stable descending sort
    for i, t in enumerate([2, 3, 3]):
        assert stable_order(scores[i]).tolist().index(t) == ranks[i]


def test_recall_at_k():
    r = recall_at_k([0, 4, 9, 49, 50], ks=(1, 5, 10, 50))
    assert r == {"R@1": 20.0, "R@5": 40.0, "R@10": 60.0, "R@50": 80.0}
    with pytest.raises(ValueError):
        recall_at_k([])


def test_subset_rank_keeps_global_order():
    order = [5, 3, 8, 1, 0, 7]
    assert subset_ranks(order, members=[1, 7, 8], target=1) == 1
    assert subset_ranks(order, members=[1, 7, 8], target=8) == 0


def test_average_precision_hand_computed():
    # relevant at ranks 1 and 3 of 5, |GT| = 2: AP@5 = (1/1 + 2/3) / 2
    assert average_precision_at_k(["a", "x", "b", "y", "z"], {"a", "b"}, 5) == pytest.approx((1 + 2 / 3) / 2)
    # |GT| larger than K: divide by K
    assert average_precision_at_k(["a", "b", "x"], set("abcdefg"), 2) == pytest.approx(1.0)
    # a GT beyond K does not count
    assert average_precision_at_k(["x", "y", "a"], {"a"}, 2) == 0.0


def test_map_refuses_duplicates_and_averages():
    with pytest.raises(ValueError, match="duplicate"):
        map_at_k([["a", "a"]], [{"a"}], ks=(2,))
    m = map_at_k([["a", "x"], ["x", "b"]], [{"a"}, {"b"}], ks=(1, 2))
    assert m == {"mAP@1": 50.0, "mAP@2": pytest.approx(100 * (1 + 0.5) / 2)}


def test_cirr_protocol_removes_reference_and_subsets():
    # gallery 0..5; query scores the reference (0) highest, it must be skipped
    gallery = torch.eye(6)
    q = torch.tensor([[0.9, 0.1, 0.5, 0.4, 0.3, 0.2]])
    res = cirr_protocol(q, gallery, reference_idx=[0], target_idx=[3], members_idx=[[0, 1, 3, 4, 5, 2]], ks=(1, 2, 3), subset_ks=(1, 2, 3))
    # ranking without the reference: 2, 3, 4, 5, 1 -> target 3 at rank 1
    assert res.metrics["R@1"] == 0.0 and res.metrics["R@2"] == 100.0
    assert res.top[0][:2] == [2, 3] and 0 not in res.top[0]
    assert res.extra["subset_top"][0] == [2, 3, 4]
    assert res.metrics["Rs@1"] == 0.0 and res.metrics["Rs@2"] == 100.0


def test_circo_protocol_keeps_reference():
    gallery = torch.eye(4)
    q = torch.tensor([[0.9, 0.8, 0.1, 0.7]])
    res = circo_protocol(q, gallery, ["r", "a", "b", "c"], ground_truths=[["a", "c"]], ks=(1, 3))
    assert res.top[0][0] == 0  # the reference ranks first: not removed (official evaluation)
    # predictions r, a, c: AP@3 = (1/2 + 2/3) / 2
    assert res.metrics["mAP@3"] == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert res.metrics["mAP@1"] == 0.0


def test_per_query_values_average_to_the_metrics():
    hits = recall_hits([0, 4, 9, 49, 50], ks=(1, 10))
    assert hits["R@1"].tolist() == [100, 0, 0, 0, 0] and hits["R@10"].tolist() == [100, 100, 100, 0, 0]
    aps = average_precisions([["a", "x"], ["x", "b"]], [{"a"}, {"b"}], ks=(2,))
    assert aps["mAP@2"].tolist() == pytest.approx([100.0, 50.0])
    # every protocol's per-query values are the queries' own, in query order, and their mean is the metric
    gallery = torch.eye(6)
    q = torch.tensor([[0.9, 0.1, 0.5, 0.4, 0.3, 0.2], [0.1, 0.9, 0.2, 0.3, 0.4, 0.5]])
    res = cirr_protocol(q, gallery, reference_idx=[0, 1], target_idx=[2, 3], members_idx=[[0, 2, 3], [1, 3, 5]],
                        ks=(1, 3), subset_ks=(1,))
    assert res.per_query["R@1"] == [100.0, 0.0] and res.per_query["R@3"] == [100.0, 100.0]  # 2nd: 5, 4, 3
    assert res.per_query["Rs@1"] == [100.0, 0.0]
    assert all(res.metrics[k] == pytest.approx(sum(v) / len(v)) for k, v in res.per_query.items())
    res = circo_protocol(q, gallery, list("abcdef"), ground_truths=[["c"], ["f", "e"]], ks=(2,))
    # query 0 ranks a, c (its reference kept): AP@2 = (1/2) / 1; query 1 ranks b, f: (1/2) / 2
    assert res.per_query["mAP@2"] == pytest.approx([50.0, 25.0]) and res.metrics["mAP@2"] == pytest.approx(37.5)
