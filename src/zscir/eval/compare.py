"""`zscir compare A.json B.json`: is one method better than another on the same benchmark, or within noise?

Two `zscir eval` results files of the same benchmark and split hold each query's value of every metric
(`results[subset]["per_query"]`). The difference of two methods' means, query by query, has a standard error
(zscir.eval.claims.paired_se) that is far smaller than either method's own when both get the same queries right
or wrong; a difference under two of them is reported as within noise. Subsets (FashionIQ's categories, GeneCIS's
tasks) are disjoint query sets, so the average row's standard error combines theirs as independent."""

from __future__ import annotations

import argparse
import json
from math import sqrt
from pathlib import Path
from typing import Any

from zscir.errors import InputError
from zscir.eval.claims import NOISE_SE, paired_se, within_noise


def _label(doc: dict[str, Any], path: str) -> str:
    """"<method> [checkpoint <folder>] on <backbone> (<file>)", and a warning when the file is not the full split."""
    m = doc.get("method", {})
    ck = m.get("checkpoint")
    ck_path = ck.get("path") if isinstance(ck, dict) else ck
    label = f"{m.get('name', '?')}{f' checkpoint {ck_path}' if ck_path else ''}"
    label += f" on {doc.get('backbone', {}).get('spec', '?')} ({path})"
    if not doc.get("complete", True):
        label += "; not the full official split"
    return label


def _per_query(doc: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    if doc.get("submission_files"):
        raise InputError(f"{path}: a test-split run (server files, no answers): nothing to compare")
    out = {k: r["per_query"] for k, r in doc.get("results", {}).items() if "per_query" in r}
    if not out:
        raise InputError(f"{path}: no per-query values (written by an older zscir eval?); run `zscir eval` again")
    return out


def compare_docs(a: dict[str, Any], b: dict[str, Any], a_path: str = "A", b_path: str = "B") -> list[dict[str, Any]]:
    """One row per (subset, metric) both files hold: A's and B's means, A - B, its paired standard error and
    whether it is within noise; plus an "average" row per metric over several subsets."""
    for key in ("benchmark", "split"):
        if a.get(key) != b.get(key):
            raise InputError(f"{a_path} and {b_path} are of different {key}s ({a.get(key)} and {b.get(key)})")
    pa, pb = _per_query(a, a_path), _per_query(b, b_path)
    common = [s for s in pa if s in pb]
    if not common:
        raise InputError(f"{a_path} and {b_path} share no subset ({', '.join(pa)} against {', '.join(pb)})")
    rows: list[dict[str, Any]] = []
    for s in common:
        qa, qb = pa[s], pb[s]
        if set(qa["qids"]) != set(qb["qids"]):
            raise InputError(f"{s or a.get('benchmark')}: the two files answer different queries "
                             f"({len(qa['qids'])} and {len(qb['qids'])}); compare runs on the same split files")
        order = {q: i for i, q in enumerate(qb["qids"])}
        idx = [order[q] for q in qa["qids"]]  # B's values in A's query order
        for metric, va in qa["values"].items():
            if metric not in qb["values"]:
                continue
            vb = [qb["values"][metric][i] for i in idx]
            ma, mb = sum(va) / len(va), sum(vb) / len(vb)
            rows.append(_row(s, metric, ma, mb, paired_se(va, vb), len(va)))
    if len(common) > 1:  # the benchmark's average over subsets (FashionIQ, GeneCIS): independent query sets
        for metric in dict.fromkeys(r["metric"] for r in rows):
            rs = [r for r in rows if r["metric"] == metric]
            if len(rs) == len(common):
                k = len(rs)
                rows.append(_row("average", metric, sum(r["a"] for r in rs) / k, sum(r["b"] for r in rs) / k,
                                 sqrt(sum(r["se"] ** 2 for r in rs)) / k, sum(r["queries"] for r in rs)))
    return rows


def _row(subset: str, metric: str, a: float, b: float, se: float, n: int) -> dict[str, Any]:
    d = a - b
    return {"subset": subset, "metric": metric, "a": a, "b": b, "difference": d, "se": se, "queries": n,
            "within_noise": within_noise(d, se)}


def format_rows(rows: list[dict[str, Any]], a_label: str, b_label: str) -> str:
    lines = [f"A = {a_label}", f"B = {b_label}",
             f"{'subset':<12}{'metric':<14}{'A':>8}{'B':>8}{'A-B':>9}{'± SE':>8}  verdict"]
    for r in rows:
        if r["within_noise"]:
            verdict = "within noise"
        else:
            verdict = "A better" if r["difference"] > 0 else "B better"
        lines.append(f"{(r['subset'] or '-'):<12}{r['metric']:<14}{r['a']:>8.2f}{r['b']:>8.2f}"
                     f"{r['difference']:>+9.2f}{r['se']:>8.2f}  {verdict}")
    lines.append(f"(paired over the same queries; within noise = under {NOISE_SE:g} standard errors)")
    return "\n".join(lines)


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such results file")
    try:
        doc = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a JSON results file ({e})") from None
    if not isinstance(doc, dict) or "benchmark" not in doc:
        raise InputError(f"{path}: not a `zscir eval` results file (no 'benchmark')")
    return doc


def _run(args: argparse.Namespace) -> int:
    a, b = _load(args.a), _load(args.b)
    rows = compare_docs(a, b, args.a, args.b)
    print(format_rows(rows, _label(a, args.a), _label(b, args.b)))
    if args.json:
        from zscir.utils.io import write_json

        write_json(Path(args.json), {"a": args.a, "b": args.b, "benchmark": a["benchmark"], "split": a["split"],
                                     "rows": rows})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="two `zscir eval` results of one benchmark: each metric's difference and its paired error",
        description="Compare two `zscir eval --out` results files of the same benchmark and split, query by query: "
        "for every subset and metric, A's and B's means, A - B and the standard error of that paired difference; "
        f"a difference under {NOISE_SE:g} standard errors is reported as within noise.")
    p.add_argument("a", help="results JSON of method A (zscir eval --out)")
    p.add_argument("b", help="results JSON of method B, same benchmark and split")
    p.add_argument("--json", default="", metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(func=_run)
