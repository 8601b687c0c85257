"""RTD ablations on the synthetic world, one command: JSON + a table.

    PYTHONPATH=src python benchmarks/rtd_ablations.py --quick --out benchmarks/results/rtd_ablations.json

Rows (all on the same frozen pic2word mapper, same steps, same seed; only the named setting changes):
    base                 pic2word without RTD
    rtd                  the published recipe: anchor, hard negatives, noise 0.5, world triplets, template concat
    no-anchor            keys (targets) embedded by the tower being tuned, not the frozen original
    no-hard-negatives    plain random batches, no (`a photo of $`, reference caption) pairs
    noise-0 / noise-1    noise scale 0 and 1.0 on the mapper's input (0.5 is the default row `rtd`)
    rules                triplets from the rule-based generator on the world's captions, not the world's own
    concat-prefix/suffix the other concatenation schemes (`$ {mod}`, `{mod} $`)
    lora                 LoRA (rank 16) instead of full fine-tuning (lr 1e-4)
Reported: CIRR-like R@1 / R@10 / Rs@1 (Recall_subset) and CIRCO-like mAP@10 on the world's held-out queries.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

VARIANTS = ("rtd", "no-anchor", "no-hard-negatives", "noise-0", "noise-1", "rules", "concat-prefix",
            "concat-suffix", "lora")
METRICS = (("cirr", "R@1"), ("cirr", "R@10"), ("cirr", "Rs@1"), ("circo", "mAP@10"))


def variant_config(name: str, base):
    cfg = copy.deepcopy(base)
    if name == "no-anchor":
        cfg.anchor = False
    elif name == "no-hard-negatives":
        cfg.hard_negatives = False
    elif name == "noise-0":
        cfg.noise = 0.0
    elif name == "noise-1":
        cfg.noise = 1.0
    elif name == "concat-prefix":
        cfg.concat = "prefix"
    elif name == "concat-suffix":
        cfg.concat = "suffix"
    elif name == "lora":
        cfg.tune, cfg.lr = "lora", 1e-4
    elif name not in ("rtd", "rules"):
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quick world and the quick demo's step count")
    ap.add_argument("--size", default="", help="world size (default: quick with --quick, else default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0, help="RTD steps per row (default: the demo's)")
    ap.add_argument("--batch-size", type=int, default=0, help="triplets per batch (default: the demo's)")
    ap.add_argument("--base", default="pic2word", help="the pseudo-token method to plug into (pic2word, two-stage)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    ap.add_argument("--device", default="")
    ap.add_argument("--out", default="benchmarks/results/rtd_ablations.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from zscir.experiments import build_context, method_from_recipe
    from zscir.experiments.recipes.rtd import rtd_config
    from zscir.methods.rtd import RTDMethod
    from zscir.train.rtd import train_rtd
    from zscir.train.triplets import generate_triplets, triplets_from_dicts
    from zscir.utils.io import write_json, write_text
    from zscir.utils.runtime import configure_threads, seed_everything

    t0 = time.time()
    configure_threads()
    seed_everything(args.seed)
    size = args.size or ("quick" if args.quick else "default")
    ctx = build_context(size, args.seed, args.device)
    world, backbone, evaluator, device = ctx.world, ctx.backbone, ctx.evaluator, ctx.device
    world_path = world.root
    base = method_from_recipe(ctx, args.base)
    if base is None:
        raise SystemExit(f"base method {args.base!r} is not available")
    base.eval()
    start = base.text_encoder if base.text_encoder is not base.backbone else None
    base_encoder = base.text_encoder

    def scores(method) -> dict[str, float]:
        method.eval()
        res = evaluator.evaluate(method)
        return {f"{p}:{m}": round(float(res[p].metrics[m]), 2) for p, m in METRICS}

    world_trips = triplets_from_dicts(world.text_triplets)
    rule_trips = generate_triplets([p["caption"] for p in world.pairs], per_caption=2, seed=args.seed)
    cfg0 = rtd_config(ctx)
    if args.steps:
        cfg0.steps = args.steps
    if args.batch_size:
        cfg0.batch_size = args.batch_size
    rows: dict[str, dict] = {"base": {"scores": scores(base), "settings": {"method": args.base}}}
    print(f"base ({args.base}): {rows['base']['scores']}", file=sys.stderr)
    def write() -> str:
        cols = [f"{p}:{m}" for p, m in METRICS]
        head = "| row | " + " | ".join(c.replace("cirr:", "CIRR ").replace("circo:", "CIRCO ") for c in cols) + " | train s |"
        lines = [head, "|" + "---|" * (len(cols) + 2)]
        for name, r in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{r['scores'][c]:.2f}" for c in cols)
                         + f" | {r.get('seconds', '')} |")
        table = "\n".join(lines)
        doc = {"base": args.base, "world": {"size": size, "seed": args.seed, "path": str(world_path)},
               "backbone_fingerprint": backbone.fingerprint(), "steps": cfg0.steps, "batch_size": cfg0.batch_size,
               "lr_full": cfg0.resolved_lr(), "device": str(device), "rows": rows, "table": table,
               "seconds": round(time.time() - t0, 1)}
        out = Path(args.out)
        write_json(out, doc)
        write_text(out.with_suffix(".md"), table + "\n")
        return table

    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        cfg = variant_config(name, cfg0)
        trips = rule_trips if name == "rules" else world_trips
        cfg.max_triplets = len(world_trips)  # same amount of data for both sources
        res = train_rtd(cfg, backbone, base.mapper, trips, text_encoder=start, progress=False)
        res.student.eval()
        res.student.freeze()  # its own (text) parameters; the shared image tower is the backbone's
        method = RTDMethod(base, res.student)
        rows[name] = {"scores": scores(method), "loss_first": round(res.losses[0], 4),
                      "loss_last": round(res.final_loss, 4), "seconds": round(res.seconds, 1),
                      "triplets": min(len(trips), cfg.max_triplets), "trainable": res.trainable,
                      "settings": {k: v for k, v in asdict(cfg).items() if k not in ("out", "device")}}
        base.text_encoder = base_encoder  # RTDMethod swapped it in; restore for the next row
        print(f"{name}: {rows[name]['scores']} ({res.seconds:.0f} s)", file=sys.stderr)
        del res, method
        write()  # partial results survive an interrupted run

    table = write()
    out = Path(args.out)

    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
