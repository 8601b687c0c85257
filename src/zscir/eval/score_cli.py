"""`zscir score`: score a predictions file made by other code against the official annotations (CIRR val,
CIRCO val, FashionIQ val) with exactly the metrics of `zscir eval`; prints the standard table, writes JSON.
File formats: zscir/eval/score.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from zscir.datasets import list_benchmarks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score rankings made by other code on CIRR / CIRCO / FashionIQ val (same metrics as `zscir eval`)",
        description="Score a predictions file ({query id: [ranked image ids]}) against the official val "
        "annotations. CIRR: pairid -> ranked image names (reference left out), with --subset-predictions for the "
        "group ranking (else it is the global list filtered to the group); CIRCO: query id -> ranked gallery ids; "
        "FashionIQ: '<category>-<i>' -> ranked ids (i = index in cap.<category>.val.json).",
    )
    p.add_argument("--benchmark", required=True, choices=list_benchmarks(scorable=True))
    p.add_argument("--root", required=True, type=Path, help="the benchmark's folder (annotations; images not needed "
                   "for CIRR and CIRCO)")
    p.add_argument("--predictions", required=True, type=Path, help="JSON {query id: [ranked image ids]}")
    p.add_argument("--subset-predictions", type=Path, default=None,
                   help="CIRR: JSON {pairid: [group members, best first]} (the server's recall_subset file)")
    p.add_argument("--subsets", nargs="+", default=None, help="FashionIQ categories (default: all three)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: <predictions>.scores.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zscir.eval.benchmarks import format_table
    from zscir.eval.score import score
    from zscir.utils.io import write_json

    doc = score(args.benchmark, args.root, args.predictions, args.subset_predictions, args.subsets)
    print(format_table(doc))
    out = args.out or args.predictions.with_suffix(".scores.json")
    write_json(out, doc)
    print(f"results: {out}")
    return 0
