"""Ablations and data sweeps of the two-stage pseudo-token method ("From Mapping to Composing"), against
the Pic2Word-style baseline, on the synthetic world's two held-out protocols.

    PYTHONPATH=src python benchmarks/pseudo_token_ablations.py [--quick] [--size quick|default] [--seed 0]
        [--out benchmarks/results] [--only name,name]

Rows:
    pic2word                     MLP mapper, contrastive, unlabelled images
    two-stage                    injection + soft alignment (stage 1) + LoRA text tower on 100% triplets
    w/o stage 2                  = two-stage/mapping-only
    w/o injection                stage 1 MLP mapper (soft alignment kept) + stage 2
    w/o soft alignment           stage 1 contrastive only (injection kept) + stage 2
    w/o reference negatives      stage 2 without the reference as a hard negative
    stage 2 @ 1% / 10%           stage 2 on that share of the training triplets (the same step count)
    ..., <= 8 epochs             the same, with at most 8 passes over that share (--max-epochs)
    stage 2, 30% noisy           stage 2 with 30% of the modification texts shuffled

Checkpoints are cached under $ZSCIR_HOME/models/experiments-<size>-s<seed> (shared with `zscir demo`), so a rerun
only evaluates. Writes pseudo_token_ablations_<size>.json and prints a table (CIRR-like R@1/R@10/Rs@1, CIRCO-like
mAP@10)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path


def variants(s: dict) -> dict[str, dict]:
    m, c = s["mapping"], s["composing"]
    return {
        "pic2word": {"pic2word": s["pic2word"]},
        "two-stage": {"mapping": m, "composing": c},
        "w/o stage 2 (mapping-only)": {"mapping": m},
        "w/o injection": {"mapping": replace(m, injection=False), "composing": c},
        "w/o soft alignment": {"mapping": replace(m, soft_weight=0.0), "composing": c},
        "w/o reference negatives": {"mapping": m, "composing": replace(c, reference_negatives=False)},
        "stage 2 @ 1% triplets": {"mapping": m, "composing": replace(c, fraction=0.01)},
        "stage 2 @ 10% triplets": {"mapping": m, "composing": replace(c, fraction=0.10)},
        "stage 2 @ 1%, <= 8 epochs": {"mapping": m, "composing": replace(c, fraction=0.01, max_epochs=8)},
        "stage 2 @ 10%, <= 8 epochs": {"mapping": m, "composing": replace(c, fraction=0.10, max_epochs=8)},
        "stage 2 @ 100%, 30% noisy": {"mapping": m, "composing": replace(c, noise=0.3)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized training (the quick demo's settings)")
    ap.add_argument("--size", default="", help="world size (default: quick with --quick, else default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="")
    ap.add_argument("--only", default="", help="comma-separated subset of rows")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from zscir.experiments import build_context
    from zscir.experiments.recipes.pseudo_token import pseudo_token_settings, pseudo_token_variant
    from zscir.methods.mapped import load_mapped_method
    from zscir.utils.runtime import configure_threads, seed_everything

    t0 = time.time()
    configure_threads()
    seed_everything(args.seed)
    size = args.size or ("quick" if args.quick else "default")
    ctx = build_context(size, args.seed, args.device, progress=False)
    world, backbone, evaluator = ctx.world, ctx.backbone, ctx.evaluator
    world_path = world.root
    settings = pseudo_token_settings(ctx)
    rows = variants(settings)
    if args.only:
        wanted = [r.strip() for r in args.only.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in rows]
        if unknown:
            print(f"unknown rows {unknown}; available: {list(rows)}", file=sys.stderr)
            return 2
        rows = {k: rows[k] for k in wanted}

    results: dict[str, dict] = {}
    for name, spec in rows.items():
        t = time.time()
        path = pseudo_token_variant(ctx, **spec)
        method = load_mapped_method(backbone, path).eval()  # the checkpoint says which method it is
        res = evaluator.evaluate(method)
        results[name] = {
            "cirr": {k: round(v, 2) for k, v in res["cirr"].metrics.items()},
            "circo": {k: round(v, 2) for k, v in res["circo"].metrics.items() if k.startswith("mAP")},
            "checkpoint": str(path), "seconds": round(time.time() - t, 1),
        }
        print(f"{name}: CIRR R@1 {results[name]['cirr']['R@1']:.1f}, CIRCO mAP@10 {results[name]['circo']['mAP@10']:.1f}",
              flush=True)

    cols = [("cirr", "R@1"), ("cirr", "R@10"), ("cirr", "Rs@1"), ("circo", "mAP@10")]
    width = max(len(n) for n in results) + 2
    lines = ["row".ljust(width) + "".join(f"{p.upper()} {k}".rjust(14) for p, k in cols), "-" * (width + 14 * len(cols))]
    for name, r in results.items():
        lines.append(name.ljust(width) + "".join(f"{r[p][k]:14.1f}" for p, k in cols))
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"world": {"path": str(world_path), "size": size, "seed": args.seed,
                     "cir_train_triplets": len(world.cir_train)},
           "backbone_fingerprint": backbone.fingerprint(), "quick": args.quick,
           "settings": {k: vars(v) for k, v in settings.items()}, "rows": results, "table": table,
           "seconds": round(time.time() - t0, 1)}
    dest = out / f"pseudo_token_ablations_{size}.json"
    dest.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(table)
    print(f"\nwrote {dest} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
