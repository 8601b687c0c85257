"""How Slerp's alpha choice depends on the selection score and on the selection gallery.

    python benchmarks/alpha_selection.py [--size quick] [--seeds 0,1,2] [--out benchmarks/results]

On the demo's world and pre-trained default backbone of each seed (built or reused under $ZSCIR_HOME, as
`zscir demo`), Slerp (no training) is ranked on the first `[alpha_selection] triplets` CIR training triplets at
every alpha of the grid, over two galleries:

  training   the images of those triplets (references, targets, the reference's twins): what
             `zscir.eval.alpha.select_alpha` ranks
  padded     the same, padded with the world's unlabelled and pair images (never evaluation images) up to as
             many images per query as the CIRR-like evaluation gallery holds

and alpha is chosen by two scores: `r1_r10` = (R@1 + R@10) / 2 (the score before world v4's re-measurement)
and `mean4` = the mean of R@1, R@5, R@10 and R@50 (the shipped one). For each choice the CIRR-like evaluation's
R@1 / R@10 / R@50 and the CIRCO-like mAP@10 at that alpha are reported beside `sum`'s, so one can see which
choice keeps every column above the baseline. Writes alpha_selection_<size>.json and .md into --out."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SCORES = {"r1_r10": (1, 10), "mean4": (1, 5, 10, 50)}


def padding(ctx: Any, n_triplets: int) -> list[str]:
    """Unlabelled and pair images (never evaluation images) that bring the ranking of the first `n_triplets`
    training triplets to as many images per query as the CIRR-like evaluation gallery holds."""
    w = ctx.world
    trip = w.cir_train[:n_triplets]
    own = {t[k] for t in trip for k in ("reference", "target")} | {n for t in trip for n in t.get("negatives", ())}
    pool = sorted(set(w.unlabelled) | {p["image"] for p in w.pairs} - own)
    random.Random(w.seed).shuffle(pool)
    density = len(w.cirr["gallery"]) / len(w.cirr["queries"])
    return pool[: max(0, round(density * len(trip)) - len(own))]


def measure(size: str, seed: int) -> dict:
    from zscir.eval.alpha import alpha_sweep, best_alpha, training_recalls
    from zscir.experiments.context import build_context
    from zscir.methods import build_method

    ctx = build_context(size, seed, progress=False)
    sweep = {row["alpha"]: row for row in alpha_sweep(ctx.evaluator, build_method("slerp", ctx.backbone, alpha=0.5))}

    def at(a: float) -> dict[str, float]:
        c, o = sweep[a]["cirr"], sweep[a]["circo"]
        return {"R@1": c["R@1"], "R@10": c["R@10"], "R@50": c["R@50"], "mAP@10": o["mAP@10"]}

    res: dict[str, Any] = {"seed": seed, "sum": at(0.5), "choices": {}}  # sum = Slerp at 0.5 (normalised)
    n = int(ctx.settings.table("alpha_selection").get("triplets", 1000))
    for gal in ("training", "padded"):
        rows = training_recalls(ctx.world, lambda a: build_method("slerp", ctx.backbone, alpha=a), n,
                                precision=ctx.evaluator.precision, pad=padding(ctx, n) if gal == "padded" else ())
        res[f"{gal}_ranking"] = {str(a): {k: round(v, 2) for k, v in r.items()} for a, r in rows.items()}
        for name, ks in SCORES.items():
            a, _ = best_alpha(rows, ks)
            res["choices"][f"{gal}/{name}"] = {"alpha": a, "evaluation": at(a)}
    return res


def markdown(size: str, runs: list[dict]) -> str:
    lines = [f"Slerp's alpha on the {size} world: chosen alpha -> evaluation R@1 / R@10 / R@50 / mAP@10 "
             "(`sum` in the last column; **bold**: a column where `sum` is ahead)", "",
             "| seed | " + " | ".join(f"{k}" for k in runs[0]["choices"]) + " | sum |",
             "|---" * (len(runs[0]["choices"]) + 2) + "|"]
    for r in runs:
        s = r["sum"]
        cells = []
        for c in r["choices"].values():
            e = c["evaluation"]
            vals = [f"**{e[k]:.1f}**" if s[k] > e[k] else f"{e[k]:.1f}" for k in ("R@1", "R@10", "R@50", "mAP@10")]
            cells.append(f"{c['alpha']:.1f} -> " + " / ".join(vals))
        lines.append(f"| {r['seed']} | " + " | ".join(cells)
                     + f" | {s['R@1']:.1f} / {s['R@10']:.1f} / {s['R@50']:.1f} / {s['mAP@10']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="quick", choices=("tiny", "quick", "default", "large"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    runs = [measure(args.size, int(s)) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"alpha_selection_{args.size}.json").write_text(json.dumps(runs, indent=1))
    md = markdown(args.size, runs)
    (out / f"alpha_selection_{args.size}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
