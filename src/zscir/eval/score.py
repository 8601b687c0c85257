"""Score rankings made by other code against the official annotations, with exactly the metrics `zscir eval`
uses (zscir.eval.metrics), so numbers from any implementation are comparable with ours.

Predictions files (JSON objects; a "version" / "metric" key, as in server files, is ignored), for the
benchmarks whose module implements `score_subset` (zscir.datasets.registry):

    CIRR val       {pairid: [image names, best first]}  the reference left out (removed if present);
                   the subset ranking either from `subset_predictions` ({pairid: [members, best first]}, the
                   CIRR server's recall_subset file) or, without it, the global list filtered to the group's
                   members (a target not in the list then counts as ranked last in its group)
    CIRCO val      {query id: [gallery ids, best first]}  the server submission format; mAP@K on the top 50
    FashionIQ val  {"<category>-<i>": [image ids, best first]}  i = the query's index in cap.<category>.val.json

Every query needs a list (at least as long as the largest K: 50), without duplicates, of gallery ids; anything
else is refused naming the query. A target missing from a list is a miss at every K.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zscir
from zscir.datasets import get_benchmark, list_benchmarks
from zscir.errors import InputError
from zscir.eval.rankings import read_predictions


def score(benchmark: str, root: str | Path, predictions: str | Path, subset_predictions: str | Path | None = None,
          subsets: Sequence[str] | None = None, split: str = "val") -> dict[str, Any]:
    """A results document shaped like `zscir eval`'s, for rankings read from `predictions`."""
    scorable = list_benchmarks(scorable=True)
    if benchmark not in scorable:
        raise InputError(f"zscir score reads rankings for {', '.join(scorable)}; {benchmark!r} is not one of them")
    if split != "val":
        raise InputError("only the val splits have public annotations to score against; test goes to the server")
    bench = get_benchmark(benchmark)
    preds = read_predictions(predictions)
    name = Path(predictions).name
    if subset_predictions is not None and not bench.subset_predictions:
        takers = [get_benchmark(n).title for n in scorable if get_benchmark(n).subset_predictions]
        raise InputError(f"--subset-predictions is for {' / '.join(takers)} only")
    # --subsets narrows a benchmark evaluated in parts; a one-part benchmark has nothing to narrow
    chosen = list(subsets) if subsets and len(bench.subsets) > 1 else list(bench.subsets)
    one, many = bench.subset_noun
    bad = [s for s in chosen if s not in bench.subsets]
    if bad:
        raise InputError(f"{benchmark}: unknown {many} {bad}; expected some of {', '.join(bench.subsets)}")
    splits = {s: bench.load(root, s, "val", check_images=False) for s in chosen}
    sub = read_predictions(subset_predictions) if subset_predictions else None
    other = sorted(k for k in preds if bench.prediction_subset(k) not in chosen)
    if other:
        raise InputError(f"{name}: rankings for queries of no scored {one} (first: {other[0]})")
    per = {s or benchmark: bench.score_subset(sp, {k: v for k, v in preds.items() if bench.prediction_subset(k) == s},
                                              sub, name)
           for s, sp in splits.items()}
    partial = sorted(chosen) != sorted(bench.subsets)
    summary: dict[str, Any] = bench.aggregate(per)
    if partial:
        summary["partial"] = True
        summary["subsets"] = list(per)
    return {
        "benchmark": benchmark, "split": split, "root": str(root),
        "complete": all(sp.complete for sp in splits.values()) and not partial, "results": per,
        "summary": summary, "method": {"name": f"predictions:{name}", "settings": {}},
        "predictions": str(predictions), "backbone": {"spec": None}, "preprocess": {"mode": "-"},
        "zscir_version": zscir.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
