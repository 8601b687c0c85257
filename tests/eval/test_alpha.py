"""Slerp's alpha choice on training triplets: the score and the tie rule."""

from zscir.eval.alpha import SELECTION_KS, best_alpha


def _row(r1, r5, r10, r50):
    return {"R@1": r1, "R@5": r5, "R@10": r10, "R@50": r50}


def test_every_recall_column_counts_not_r1_alone():
    # 0.8 wins R@1, 0.7 wins every deeper column and the mean of the four
    recalls = {0.7: _row(12.0, 52.0, 69.3, 93.3), 0.8: _row(15.3, 50.7, 66.3, 90.0)}
    best, scores = best_alpha(recalls)
    assert best == 0.7
    assert scores == {0.7: 56.65, 0.8: 55.58}
    assert best_alpha(recalls, ks=(1,))[0] == 0.8  # the score really is over `ks`
    assert SELECTION_KS == (1, 5, 10, 50)


def test_ties_to_the_hundredth_go_to_the_alpha_nearest_the_published_one():
    # 0.7 and 0.8 tie exactly, as on quick seed 1 of world v4
    recalls = {0.6: _row(7.0, 50.0, 70.0, 90.0), 0.7: _row(15.0, 59.0, 73.0 + 2 / 3, 95.0),
               0.8: _row(22.0 + 1 / 3, 53.0 + 1 / 3, 74.0, 93.0)}
    assert best_alpha(recalls)[0] == 0.8
    assert best_alpha({0.5: _row(1, 1, 1, 1), 0.6: _row(1, 1, 1, 1)})[0] == 0.6
