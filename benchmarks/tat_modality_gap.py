"""Does TAT help Slerp once there is a modality gap to close? Pre-train the embedded default with the learnable
temperature starting at several values (CLIP starts at 0.07 and ends near 0.01; a low temperature keeps the
image and text cones apart, Liang et al. 2022), then, in each space, evaluate the baselines, Slerp and
Slerp+TAT (the demo's placement, and with the head's output projection adapted too), all with alpha chosen
on the world's CIR *training* triplets like the demo.

    python benchmarks/tat_modality_gap.py [--size quick] [--temperatures 0.07 0.01] [--out benchmarks/results]

The 0.07 row is the demo's own pre-trained default (shared cache under $ZSCIR_HOME). Each other temperature
pre-trains its own default (cached as models/default-<size>-s<seed>-T<t>). Writes tat_modality_gap_<size>.json and
a Markdown table: per space the learned temperature, the gap (held-out matched cosine, centroid distance)
before and after TAT, and CIRR-like R@1 / R@10, CIRCO-like mAP@10 per method."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

ROWS = ("image", "text", "sum", "slerp")
TAT_VARIANTS = {"slerp+tat": {}, "slerp+tat (head.out)": {"head_out": True}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="quick", help="world size (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.07, 0.01],
                    help="starting temperatures of the pre-training (default: %(default)s)")
    ap.add_argument("--long-epochs", type=float, default=0.0,
                    help="also a row with head.out adapted and this many TAT epochs (0: no such row)")
    ap.add_argument("--device", default="")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from zscir.eval.alpha import select_alpha
    from zscir.experiments import build_context, list_recipes
    from zscir.experiments.recipes.tat import tat_checkpoint, tat_config
    from zscir.methods import get_method_class
    from zscir.methods.tat import load_tat_backbone
    from zscir.train.pretrain import PretrainConfig
    from zscir.train.tat import measure_gap, split_val
    from zscir.utils.io import write_json, write_text
    from zscir.utils.runtime import configure_threads, seed_everything

    t0 = time.time()
    configure_threads()
    recipes = list_recipes()
    spaces: dict[str, dict] = {}
    lines = ["| start T | learned T | method | alpha | CIRR R@1 | CIRR R@10 | CIRCO mAP@10 | matched cos | centroid dist |",
             "|---|---|---|---|---|---|---|---|---|"]

    def score(ctx, method) -> dict[str, float]:
        method.eval()
        res = ctx.evaluator.evaluate(method)
        return {"cirr:R@1": round(res["cirr"].metrics["R@1"], 2), "cirr:R@10": round(res["cirr"].metrics["R@10"], 2),
                "circo:mAP@10": round(res["circo"].metrics["mAP@10"], 2)}

    for temp in args.temperatures:
        seed_everything(args.seed)
        # the demo's own default for its starting temperature, a pre-training variant for any other
        variant = None if abs(temp - PretrainConfig().init_temperature) < 1e-9 else temp
        ctx = build_context(args.size, args.seed, args.device, progress=False, init_temperature=variant)
        world = ctx.world
        cfg0 = tat_config(ctx)
        _, val = split_val(len(world.pairs), cfg0)
        vp = [Path(world.image_path(world.pairs[i]["image"])) for i in val.tolist()]
        vc = [world.pairs[i]["caption"] for i in val.tolist()]
        gap_base = measure_gap(ctx.backbone, vp, vc)
        learned = round(1.0 / float(ctx.backbone.logit_scale.exp()), 4)
        rows: dict[str, dict] = {}
        for name in ROWS:
            m = recipes[name](ctx)
            rows[name] = {"scores": score(ctx, m), "alpha": getattr(m, "alpha", None), "gap": gap_base}
        variants = dict(TAT_VARIANTS)
        if args.long_epochs:
            variants[f"slerp+tat (head.out, {args.long_epochs:g} epochs)"] = {"head_out": True, "epochs": args.long_epochs}
        for name, extra in variants.items():
            out = tat_checkpoint(ctx, replace(cfg0, **extra))
            tuned = load_tat_backbone(ctx.backbone, out)
            cls = get_method_class("slerp+tat")
            n = int(ctx.settings.table("alpha_selection").get("triplets", 1000))
            alpha = select_alpha(world, lambda a, cls=cls, ctx=ctx, tuned=tuned: cls(ctx.backbone, tat=tuned, alpha=a), n).alpha
            rows[name] = {"scores": score(ctx, cls(ctx.backbone, tat=tuned, alpha=alpha)), "alpha": alpha,
                          "gap": measure_gap(tuned, vp, vc)}
            del tuned
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        spaces[f"{temp:g}"] = {"start_temperature": temp, "learned_temperature": learned, "rows": rows}
        for name, r in rows.items():
            s, g = r["scores"], r["gap"]
            a = "" if r["alpha"] is None else f"{r['alpha']:.1f}"
            lines.append(f"| {temp:g} | {learned:.3f} | {name} | {a} | {s['cirr:R@1']:.1f} | {s['cirr:R@10']:.1f} | "
                         f"{s['circo:mAP@10']:.1f} | {g['matched_cosine']:.3f} | {g['centroid_distance']:.3f} |")
        print("\n".join(lines[-len(rows):]), file=sys.stderr)

    table = "\n".join(lines)
    out = Path(args.out) / f"tat_modality_gap_{args.size}.json"
    write_json(out, {"size": args.size, "seed": args.seed, "spaces": spaces, "table": table,
                     "gap_measured_on": "held-out image-caption pairs (TAT's validation split)",
                     "seconds": round(time.time() - t0, 1)})
    write_text(out.with_suffix(".md"), table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
