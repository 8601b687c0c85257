"""Claims and calibration checks on measured rows: a claim holds only when every compared number says so, and
a claim whose rows were not run is left out."""

from zscir.eval.claims import calibration, claims, format_checks


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
