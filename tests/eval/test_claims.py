"""Claims and calibration checks on measured rows: a claim holds only when every compared number says so, and
a claim whose rows were not run is left out."""

import pytest

from zscir.eval.claims import calibration, claims, format_checks, paired_se


def _rows(**cirr_circo):
    protocols = {"cirr": {}, "circo": {}}
    for name, (r1, rs1, map10) in cirr_circo.items():
        protocols["cirr"][name.replace("_", "+")] = {"R@1": r1, "R@10": r1 * 3, "Rs@1": rs1}
        protocols["circo"][name.replace("_", "+")] = {"mAP@5": map10 - 1, "mAP@10": map10}
    return protocols


def test_claims_need_both_protocols_and_skip_rows_not_run():
    p = _rows(image=(10, 20, 20), text=(5, 40, 1), sum=(12, 30, 8), slerp=(20, 50, 15), pic2word=(18, 50, 9))
    c = {r["claim"]: r for r in claims(p, {})}
    assert c["slerp beats text"]["holds"] and c["slerp beats sum"]["holds"]
    assert not c["slerp beats image"]["holds"]  # better on CIRR, worse on CIRCO: not held
    assert "two-stage beats pic2word" not in c and "slerp+tat beats slerp (both protocols)" not in c
    gap = {"modality_gap": {"before": {"matched_cosine": 0.3, "centroid_distance": 0.8},
                            "after": {"matched_cosine": 0.35, "centroid_distance": 0.6}}}
    assert {r["claim"]: r for r in claims(p, gap)}["TAT narrows the modality gap"]["holds"]
    tiny = {"modality_gap": {"before": {"matched_cosine": 0.856, "centroid_distance": 0.042},
                             "after": {"matched_cosine": 0.857, "centroid_distance": 0.041}}}
    assert not {r["claim"]: r for r in claims(p, tiny)}["TAT narrows the modality gap"]["holds"]  # 2%: not narrowed
    close = _rows(slerp=(20, 50, 15), sum=(19.5, 30, 14.6))
    row = {r["claim"]: r for r in claims(close, {})}["slerp beats sum"]
    assert row["holds"] and "within noise" in row["measured"]
    assert "| slerp beats image |" in format_checks(claims(p, {}))


def test_calibration_flags_strong_baselines():
    weak = _rows(image=(4, 21, 3), text=(5, 50, 2), sum=(9, 30, 6), slerp=(20, 50, 12), pic2word=(22, 55, 14))
    assert all(r["holds"] for r in calibration(weak)), calibration(weak)
    strong = _rows(image=(15, 45, 22), text=(2, 40, 1), sum=(21, 30, 15), slerp=(20, 50, 19), pic2word=(17, 50, 12))
    failed = {r["check"] for r in calibration(strong) if not r["holds"]}
    assert "image <= half of the best on cirr:R@1" in failed and "image-only Rs@1 near chance (20%)" in failed
    assert "sum below slerp on cirr:R@1" in failed and "no baseline is the best of any circo column" in failed


def test_paired_se_of_a_difference_on_the_same_queries():
    assert paired_se([100, 0, 100, 0], [100, 0, 100, 0]) == 0.0  # the same answers: no noise at all
    # differences 100, 0, 0, 0: mean 25, sample sd 50, over sqrt(4)
    assert paired_se([100, 0, 100, 0], [0, 0, 100, 0]) == pytest.approx(25.0)
    assert paired_se([1.0], [0.0]) == 0.0
    with pytest.raises(ValueError, match="same queries"):
        paired_se([1, 2], [1])


def _per_query(protocols, n=200, disagree=None):
    """Per-query values consistent with each row's metric (0/100 hits in query order); `disagree` maps a
    method to how many of its hits sit on queries the others miss (so paired differences vary)."""
    out = {}
    for p, rows in protocols.items():
        out[p] = {}
        for m, cols in rows.items():
            out[p][m] = {}
            shift = (disagree or {}).get(m, 0)
            for c, v in cols.items():
                k = round(v * n / 100)
                out[p][m][c] = [100.0 if (i + shift) % n < k else 0.0 for i in range(n)]
    return out


def test_paired_errors_label_close_margins_within_noise():
    p = _rows(image=(2, 21, 2), text=(2, 50, 1), sum=(9, 30, 6), slerp=(20, 50, 12), pic2word=(10, 55, 12.5))
    cal = {r["check"]: r for r in calibration(p, _per_query(p))}  # nested hits: differences of one sign
    col = cal["no baseline is the best of any cirr column"]
    assert col["holds"] and col["within_noise"] == [] and col["measured"].endswith("within noise: none")
    # a column a method wins by one query of 200 is flagged (its paired SE is 0.5 point), still held
    close = _rows(image=(2, 21, 2), text=(2, 50, 1), sum=(9, 30, 6), slerp=(9.5, 90, 12))
    row = {r["check"]: r for r in calibration(close, _per_query(close, disagree={"slerp": 7}))}
    assert row["no baseline is the best of any cirr column"]["holds"]
    assert row["no baseline is the best of any cirr column"]["within_noise"] == ["R@1", "R@10"]  # 0.5 and 1.5
    assert "R@1 slerp 9.5 vs sum 9.0 (+0.5 ±" in row["no baseline is the best of any cirr column"]["measured"]
    r1 = row["no baseline is the best of any cirr column"]["columns"]["R@1"]  # the same, as fields
    assert (r1["best"], r1["baseline"], r1["margin"]) == ("slerp", "sum", 0.5) and r1["margin"] < 2 * r1["se"]
    assert "within noise" in row["sum below slerp on cirr:R@1"]["measured"] and "se" in row["sum below slerp on cirr:R@1"]
    # a claim's margin is judged against its own paired SE: 5 points on 200 queries that mostly disagree is noise
    two = _rows(pic2word=(20, 50, 12), **{"two_stage": (25, 50, 16)})
    two["cirr"]["two-stage"] = two["cirr"].pop("two+stage")
    two["circo"]["two-stage"] = two["circo"].pop("two+stage")
    row = {r["claim"]: r for r in claims(two, {}, _per_query(two, disagree={"two-stage": 100}))}["two-stage beats pic2word"]
    assert row["holds"] and row["se"] > 0.5 and "within noise" in row["measured"] and "on circo:mAP@10" in row["measured"]
    held = {r["claim"]: r for r in claims(two, {}, _per_query(two))}["two-stage beats pic2word"]
    assert held["holds"] and "within noise" not in held["measured"]  # the same margins, nested hits: clear
