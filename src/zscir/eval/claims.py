"""The published claims and the proxy benchmark's calibration, checked on measured rows.

`claims(protocols, extras)` turns a demo's results (CIRR-like and CIRCO-like metrics per method, plus the
modality gap and ISA's costs) into one row per claim: what was compared, the numbers, and whether it holds.
`calibration(protocols)` checks the world against what makes the real benchmarks hard: each baseline at most
half of the best method on the headline metrics, image-only Recall_subset@1 near chance, `sum` below `slerp`,
no baseline the best of any column. A claim whose rows were not run is left out, never reported as held.

Given each method's per-query values (`per_query`, from `ProtocolResult.per_query`), every comparison also
reports the standard error of its paired difference (`paired_se`: the same queries, so what both methods get
right or wrong together cancels), and a margin under two of them is labelled "within noise"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import sqrt
from typing import Any

PerQuery = Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]  # protocol -> method -> column -> values

BASELINES = ("image", "text", "sum")
NOISE_POINTS = 1.0  # without per-query values: smaller wins are reported as within noise (200-1000 queries)
NOISE_SE = 2.0  # with per-query values: a margin under this many standard errors of the difference is noise
GAP_NARROWING = 0.10  # TAT "narrows the gap" when the centroid distance drops by at least 10%
HEADLINE = {"cirr": "R@1", "circo": "mAP@10"}


def paired_se(a: Sequence[float], b: Sequence[float]) -> float:
    """Standard error of mean(a) - mean(b) for two methods' per-query values on the same queries (sample
    standard deviation of the per-query differences over sqrt(n); 0 for fewer than two queries)."""
    if len(a) != len(b):
        raise ValueError(f"per-query values of {len(a)} and {len(b)} queries: not the same queries")
    n = len(a)
    if n < 2:
        return 0.0
    d = [x - y for x, y in zip(a, b)]
    mu = sum(d) / n
    return sqrt(sum((x - mu) ** 2 for x in d) / (n - 1) / n)


def _se(per_query: PerQuery | None, protocol: str, column: str, a: str, b: str) -> float | None:
    """The paired standard error of a - b on one column, or None where either method's values are missing."""
    rows = (per_query or {}).get(protocol, {})
    if a not in rows or b not in rows or column not in rows[a] or column not in rows[b]:
        return None
    return paired_se(rows[a][column], rows[b][column])


def within_noise(margin: float, se: float | None) -> bool:
    """Whether a margin is within noise: under NOISE_SE standard errors, or NOISE_POINTS without them. No margin
    at all is noise too, even with a zero error (the same per-query values: nothing tells the two apart)."""
    if se is None:
        return abs(margin) < NOISE_POINTS
    return abs(margin) < NOISE_SE * se or margin == 0


def _pair(protocols: dict, a: str, b: str) -> list[tuple[str, str, float, float]] | None:
    """(protocol, metric, a's value, b's value) on both headline metrics, or None if either row is missing."""
    if any(m not in protocols[p] for p in HEADLINE for m in (a, b)):
        return None
    return [(p, k, protocols[p][a][k], protocols[p][b][k]) for p, k in HEADLINE.items()]


def _beats(protocols: dict, a: str, b: str, claim: str, per_query: PerQuery | None = None) -> dict[str, Any] | None:
    rows = _pair(protocols, a, b)
    if rows is None:
        return None
    p, k, x, y = min(rows, key=lambda r: r[2] - r[3])  # the binding metric: the smallest margin
    margin = x - y
    se = _se(per_query, p, k, a, b)
    measured = "; ".join(f"{p_}:{k_} {x_:.1f} vs {y_:.1f}" for p_, k_, x_, y_ in rows)
    # a win this small is within the noise of these query counts; with a standard error, so is a loss this
    # small (the rows then say nothing either way)
    if (margin > 0 or se is not None) and within_noise(margin, se):
        measured += (f" (margin {margin:.1f} point: within noise)" if se is None else
                     f" (margin {margin:+.1f} ± {se:.1f} on {p}:{k}: within noise)")
    row = {"claim": claim, "measured": measured, "holds": margin > 0, "margin": round(margin, 2)}
    if se is not None:
        row["se"] = round(se, 2)
    return row


def claims(protocols: dict[str, dict[str, dict[str, float]]], extras: dict[str, Any],
           per_query: PerQuery | None = None) -> list[dict[str, Any]]:
    """One row per published claim that the measured rows can check (`per_query`: see the module docstring)."""
    out: list[dict[str, Any] | None] = [
        _beats(protocols, "slerp", b, f"slerp beats {b}", per_query) for b in BASELINES
    ]
    gap = extras.get("modality_gap", {})
    if gap.get("before") and gap.get("after"):
        before, after = gap["before"], gap["after"]
        out.append({"claim": "TAT narrows the modality gap",
                    "measured": f"matched cosine {before['matched_cosine']:.3f} -> {after['matched_cosine']:.3f}, "
                                f"centroid distance {before['centroid_distance']:.3f} -> {after['centroid_distance']:.3f}",
                    "holds": after["centroid_distance"] <= (1 - GAP_NARROWING) * before["centroid_distance"]})
    out += [_beats(protocols, a, b, claim, per_query) for a, b, claim in (
        ("slerp+tat", "slerp", "slerp+tat beats slerp (both protocols)"),
        ("two-stage", "pic2word", "two-stage beats pic2word"),
        ("pic2word+rtd", "pic2word", "pic2word+rtd beats pic2word"),
        ("two-stage+rtd", "two-stage", "two-stage+rtd beats two-stage"),
        ("lincir", "pic2word", "lincir beats pic2word (same backbone and data)"))]
    isa = extras.get("isa", {}).get("asymmetric_vs_symmetric")
    if isa:
        out.append({"claim": "isa keeps >= 90% of isa/symmetric's R@10 at <= 1/5 of its query FLOPs",
                    "measured": f"R@10 ratio {isa['r10_ratio']:.2f}, FLOPs ratio {isa['flops_ratio']:.3f}",
                    "holds": bool(isa["passed"])})
    return [c for c in out if c is not None]


def calibration(protocols: dict[str, dict[str, dict[str, float]]],
                per_query: PerQuery | None = None) -> list[dict[str, Any]]:
    """The world's calibration checks (see the module docstring) on the measured rows. With `per_query`, the
    comparisons of `sum` with `slerp` and of the best method with the best baseline per column carry the paired
    standard error of their difference, and the columns whose margin is within noise are listed. The "no
    baseline is the best" rows give, per column, the best method, the best baseline and the margin (`columns`,
    with the paired standard error where `per_query` is given)."""
    rows: list[dict[str, Any]] = []
    methods = [m for m in protocols["cirr"] if m not in BASELINES]
    if not methods:
        return rows
    for p, k in HEADLINE.items():
        best = max(methods, key=lambda m: protocols[p][m][k])
        top = protocols[p][best][k]
        for b in ("image", "text"):
            if b in protocols[p]:
                v = protocols[p][b][k]
                rows.append({"check": f"{b} <= half of the best on {p}:{k}",
                             "measured": f"{v:.1f} vs {best} {top:.1f} (ratio {v / max(top, 1e-9):.2f})",
                             "holds": v <= top / 2})
    if "image" in protocols["cirr"] and "Rs@1" in protocols["cirr"]["image"]:
        v = protocols["cirr"]["image"]["Rs@1"]
        rows.append({"check": "image-only Rs@1 near chance (20%)", "measured": f"{v:.1f}", "holds": v <= 30.0})
    for p, k in HEADLINE.items():
        if "sum" in protocols[p] and "slerp" in protocols[p]:
            v_sum, v_slerp = protocols[p]["sum"][k], protocols[p]["slerp"][k]
            se = _se(per_query, p, k, "slerp", "sum")
            rows.append({"check": f"sum below slerp on {p}:{k}",
                         "measured": f"{v_sum:.1f} vs {v_slerp:.1f}" + _margin_note(v_slerp - v_sum, se),
                         "holds": v_sum < v_slerp, **({} if se is None else {"se": round(se, 2)})})
    for p in protocols:
        cols = list(next(iter(protocols[p].values())))
        won, noisy, notes = [], [], []
        per_column: dict[str, dict[str, Any]] = {}
        bases = [b for b in BASELINES if b in protocols[p]]
        for c in cols if bases else []:
            best = max(methods, key=lambda m: protocols[p][m][c])
            base = max(bases, key=lambda b: protocols[p][b][c])
            margin = protocols[p][best][c] - protocols[p][base][c]
            se = _se(per_query, p, c, best, base)
            per_column[c] = {"best": best, "baseline": base, "margin": round(margin, 2),
                             **({} if se is None else {"se": round(se, 2)})}
            if margin <= 0:  # ties go to the baseline: the world must let a method win the column
                won.append(c)
            if se is not None and within_noise(margin, se):
                noisy.append(c)
                notes.append(f"{c} {best} {protocols[p][best][c]:.1f} vs {base} {protocols[p][base][c]:.1f} "
                             f"({margin:+.1f} ± {se:.1f})")
        measured = "baseline best on: " + (", ".join(won) if won else "none")
        if per_query:
            measured += "; within noise: " + ("; ".join(notes) if notes else "none")
        row: dict[str, Any] = {"check": f"no baseline is the best of any {p} column", "measured": measured,
                               "holds": not won, "columns": per_column}
        if per_query:
            row["within_noise"] = noisy
        rows.append(row)
    return rows


def _margin_note(margin: float, se: float | None) -> str:
    """" (+m ± se: within noise)" for a margin within noise, else ""; nothing without a standard error."""
    return f" ({margin:+.1f} ± {se:.1f}: within noise)" if se is not None and within_noise(margin, se) else ""


def format_checks(rows: list[dict[str, Any]], key: str = "claim") -> str:
    """A Markdown table of claim or calibration rows."""
    lines = [f"| {key} | measured | holds |", "|---|---|---|"]
    lines += [f"| {r[key]} | {r['measured']} | {'yes' if r['holds'] else 'no'} |" for r in rows]
    return "\n".join(lines)
