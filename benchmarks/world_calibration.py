"""World v2 calibration: do the evaluation protocols rank the baselines below the methods, as the real ones do,
on every seed? And does the embedded default have CLIP's modality gap?

For each seed: generate (or reuse) the world under $ZSCIR_HOME, pre-train (or reuse) the demo's default backbone
on it, evaluate the training-free rows (image, text, sum, slerp with alpha chosen on the world's CIR *training*
triplets, exactly as `zscir demo` does) and, with --trained, pic2word through its demo recipe, on both
protocols. Also measured: the base space's modality gap on the held-out pairs the demo's TAT recipe measures it
on, and the pre-training's held-out text-to-image R@1.

    python benchmarks/world_calibration.py [--size quick] [--seeds 0 1 2] [--trained pic2word] [--out benchmarks/results]

Writes world_calibration_<size>.json and world_calibration_<size>.md. The checks (docs/world.md, issue 16):
image and text each <= 1/2 of the best row on CIRR-like R@1 and CIRCO-like mAP@10; image-only Rs@1 near chance
(20%); sum below slerp; no baseline best on any column; matched cosine <= 0.45 and centroid distance >= 0.5."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

BASELINES = ("image", "text", "sum")
ROWS = ("image", "text", "sum", "slerp")
CIRR_COLS = ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3")
CIRCO_COLS = ("mAP@5", "mAP@10", "mAP@25", "mAP@50")


def measure_seed(size: str, seed: int, trained: list[str], device: str = "",
                 settings_file: str | None = None) -> dict:
    import torch

    from zscir.experiments.context import build_context
    from zscir.experiments.recipes import list_recipes
    from zscir.experiments.recipes.tat import tat_config
    from zscir.train.tat import measure_gap, split_val
    from zscir.utils.io import read_json

    t0 = time.time()
    ctx = build_context(size, seed, device, progress=False, settings_file=settings_file)
    t_ctx = time.time() - t0
    recipes = list_recipes()
    protocols: dict[str, dict] = {"cirr": {}, "circo": {}}
    timings = {"world+pretrain": round(t_ctx, 1)}
    for name in list(ROWS) + trained:
        t = time.time()
        method = recipes[name](ctx)
        if method is None:
            continue
        method.eval()
        res = ctx.evaluator.evaluate(method)
        protocols["cirr"][name] = {k: round(res["cirr"].metrics[k], 2) for k in CIRR_COLS}
        protocols["circo"][name] = {k: round(res["circo"].metrics[k], 2) for k in CIRCO_COLS}
        timings[name] = round(time.time() - t, 1)
        logging.info("seed %d %s: R@1 %.1f Rs@1 %.1f mAP@10 %.1f", seed, name, protocols["cirr"][name]["R@1"],
                     protocols["cirr"][name]["Rs@1"], protocols["circo"][name]["mAP@10"])
    world = ctx.world
    pairs = world.pairs
    _, val = split_val(len(pairs), tat_config(ctx))
    with torch.inference_mode():
        gap = measure_gap(ctx.backbone, [world.image_path(pairs[i]["image"]) for i in val.tolist()],
                          [pairs[i]["caption"] for i in val.tolist()])
    model_cfg = read_json(Path(ctx.backbone.spec.split(":", 1)[1]) / "config.json")
    return {
        "seed": seed, "size": size, "counts": world.meta["counts"], "world_version": world.meta["version"],
        "protocols": protocols, "alpha": ctx.extras.get("alpha_selection", {}).get("slerp", {}).get("chosen"),
        "modality_gap": gap, "pretrain_val": model_cfg.get("val"),
        "logit_scale": float(ctx.backbone.logit_scale.exp()),
        "checks": checks(protocols, gap), "timings_s": timings,
    }


def checks(protocols: dict, gap: dict) -> dict:
    cirr, circo = protocols["cirr"], protocols["circo"]
    best_r1 = max(v["R@1"] for v in cirr.values())
    best_map = max(v["mAP@10"] for v in circo.values())
    out = {
        "image_R@1_ratio": round(cirr["image"]["R@1"] / max(best_r1, 1e-9), 3),
        "text_R@1_ratio": round(cirr["text"]["R@1"] / max(best_r1, 1e-9), 3),
        "image_mAP@10_ratio": round(circo["image"]["mAP@10"] / max(best_map, 1e-9), 3),
        "text_mAP@10_ratio": round(circo["text"]["mAP@10"] / max(best_map, 1e-9), 3),
        "image_Rs@1": cirr["image"]["Rs@1"],
        "sum_below_slerp": cirr["sum"]["R@1"] < cirr["slerp"]["R@1"] and circo["sum"]["mAP@10"] < circo["slerp"]["mAP@10"],
    }
    out["ratios_ok"] = all(out[k] <= 0.5 for k in ("image_R@1_ratio", "text_R@1_ratio", "image_mAP@10_ratio",
                                                    "text_mAP@10_ratio"))
    out["image_Rs@1_near_chance"] = abs(out["image_Rs@1"] - 20.0) <= 7.5
    best_by_baseline = []
    for table, cols in ((cirr, CIRR_COLS), (circo, CIRCO_COLS)):
        for c in cols:
            top = max(table.values(), key=lambda v: v[c])[c]
            leaders = [m for m in table if table[m][c] == top]
            if all(m in BASELINES for m in leaders):
                best_by_baseline.append(f"{c}: {','.join(leaders)}")
    out["columns_led_by_a_baseline"] = best_by_baseline
    out["gap_ok"] = gap["matched_cosine"] <= 0.45 and gap["centroid_distance"] >= 0.5
    out["all_ok"] = (out["ratios_ok"] and out["image_Rs@1_near_chance"] and out["sum_below_slerp"]
                     and not best_by_baseline and out["gap_ok"])
    return out


def markdown(runs: list[dict]) -> str:
    lines = ["| seed | method | CIRR R@1 | R@10 | Rs@1 | CIRCO mAP@5 | mAP@10 |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        for m in r["protocols"]["cirr"]:
            a, b = r["protocols"]["cirr"][m], r["protocols"]["circo"][m]
            label = f"{m} (alpha {r['alpha']:.1f})" if m == "slerp" and r["alpha"] is not None else m
            lines.append(f"| {r['seed']} | {label} "
                         f"| {a['R@1']:.1f} | {a['R@10']:.1f} | {a['Rs@1']:.1f} | {b['mAP@5']:.1f} | {b['mAP@10']:.1f} |")
    lines += ["", "| seed | image/best R@1 | text/best R@1 | image/best mAP@10 | text/best mAP@10 | sum<slerp | "
              "baseline-led columns | matched cos | centroid dist | pretrain t2i R@1 | all ok |", "|---" * 11 + "|"]
    for r in runs:
        c, g = r["checks"], r["modality_gap"]
        t2i = (r.get("pretrain_val") or {}).get("t2i_R@1")
        lines.append(f"| {r['seed']} | {c['image_R@1_ratio']:.2f} | {c['text_R@1_ratio']:.2f} | {c['image_mAP@10_ratio']:.2f} "
                     f"| {c['text_mAP@10_ratio']:.2f} | {c['sum_below_slerp']} | {'; '.join(c['columns_led_by_a_baseline']) or '-'} "
                     f"| {g['matched_cosine']:.3f} | {g['centroid_distance']:.3f} | {t2i if t2i is None else round(t2i, 1)} "
                     f"| {c['all_ok']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trained", nargs="*", default=[], help="demo recipes of trained methods to add (e.g. pic2word)")
    ap.add_argument("--device", default="")
    ap.add_argument("--settings", default=None, help="experiment settings TOML (overrides, as `zscir demo --settings`)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from zscir.utils.runtime import configure_threads

    configure_threads()
    runs = [measure_seed(args.size, s, list(args.trained), args.device, args.settings) for s in args.seeds]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"world_calibration_{args.size}{args.tag}"
    (out / f"{stem}.json").write_text(json.dumps({"benchmark": "world_calibration", "runs": runs}, indent=1))
    md = markdown(runs)
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
