"""Why the deep CIRR-like columns favour reference-heavy queries on world v2, and what would change it.

    python benchmarks/modification_context.py [--size default] [--seed 1] [--out benchmarks/results]

World v2's modification texts name only what changes (`the pentagon should be orange instead`), so the text
alone cannot say which part of the gallery (which reference's cluster of near copies) a target lies in, and at
depth (R@5-R@50) a query does best by keeping the image's weight: `sum` (Slerp at alpha 0.5) can lead R@50.
CIRR's texts often also name what stays. This probe evaluates the demo's methods (cached under $ZSCIR_HOME, as
`zscir demo` trained them; nothing is retrained) on the CIRR-like queries twice: with the modification texts as
they are, and with one clause of context appended where the target keeps an object of the reference
(`..., with a big yellow pentagon in the top left corner`). Evaluation only: the training data is unchanged, so
this measures the protocol, not a new world. Writes modification_context_<size>_s<seed>.json and .md.

This probe is what led to world version 3, whose CIRR-like and cir_train texts carry the clause
(zscir.world.generate.context_clause); it runs on a version-2 world (a $ZSCIR_HOME made before v3) only.
Its results in benchmarks/results/ are world v2's."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from zscir.experiments import build_context
from zscir.experiments.recipes import method_from_recipe
from zscir.methods import build_method
from zscir.utils.runtime import configure_threads
from zscir.world.generate import context_clause

KS = ("R@1", "R@5", "R@10", "R@50", "Rs@1")
BASELINES = ("image", "text", "sum")
TRAINED = ("slerp", "pic2word", "two-stage", "two-stage+rtd")


def with_context(world, queries: list[dict], rng: random.Random) -> list[str]:
    """Each query's modification plus world v3's clause naming an object the target keeps from the reference
    (unchanged: a query whose target keeps none)."""
    return [q["modification"] + context_clause(rng, world.scene(q["reference"]), world.scene(q["target"]))
            for q in queries]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default", choices=("quick", "default", "large"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    configure_threads()
    t0 = time.time()
    ctx = build_context(args.size, args.seed, args.device, progress=False)
    if ctx.world.meta.get("version") != 2:
        raise SystemExit(f"this probe adds world v3's clause to a version-2 world's texts; the world here is "
                         f"version {ctx.world.meta.get('version')}, whose texts carry it already")
    ev = ctx.evaluator
    queries = ev.splits["cirr"].queries
    texts = with_context(ctx.world, queries, random.Random(args.seed))
    changed = sum(t != q["modification"] for t, q in zip(texts, queries))
    methods = {name: build_method(name, ctx.backbone) for name in BASELINES}
    for name in TRAINED:
        m = method_from_recipe(ctx, name)
        if m is not None:
            methods[name] = m
    rows: list[dict[str, Any]] = []
    for name, m in methods.items():
        plain = ev.evaluate_cirr(m).metrics
        ctxed = ev.evaluate_cirr(m, ev.query_embeddings(m, "cirr", texts)).metrics
        label = f"slerp (alpha {m.alpha:g}, chosen on training triplets)" if name == "slerp" else name
        rows.append({"method": label, "baseline": name in BASELINES,
                     "as_is": {k: round(plain[k], 1) for k in KS}, "with_context": {k: round(ctxed[k], 1) for k in KS}})
        print(json.dumps(rows[-1]), flush=True)

    def leaders(key: str) -> list[str]:
        """The columns a baseline leads (a tie counts for the baseline, as in zscir.eval.claims)."""
        return [k for k in KS if max(r[key][k] for r in rows if r["baseline"]) >= max(r[key][k] for r in rows)]

    doc = {"benchmark": "modification_context", "size": args.size, "seed": args.seed,
           "queries": len(queries), "queries_with_context": changed, "example": texts[0],
           "evaluation_precision": ev.precision, "rows": rows,
           "baseline_leads": {"as_is": leaders("as_is"), "with_context": leaders("with_context")},
           "seconds": round(time.time() - t0)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"modification_context_{args.size}_s{args.seed}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# CIRR-like columns with and without context in the modification ({args.size} world, seed {args.seed})",
             "", f"{changed} of {len(queries)} queries got a clause. Columns a baseline leads: as is "
             f"{', '.join(doc['baseline_leads']['as_is']) or 'none'}; with context "
             f"{', '.join(doc['baseline_leads']['with_context']) or 'none'}.", "",
             "| method | " + " | ".join(KS) + " | with context: " + " | ".join(KS) + " |",
             "|---" * (2 * len(KS) + 1) + "|"]
    lines += [f"| {r['method']} | " + " | ".join(f"{r['as_is'][k]:.1f}" for k in KS) + " | "
              + " | ".join(f"{r['with_context'][k]:.1f}" for k in KS) + " |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / stem}.json ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
