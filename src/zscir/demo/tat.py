"""Demo recipe `slerp+tat`: train (or reuse) TAT adapters on the world's pairs, measure the modality gap
before/after, and sweep Slerp's alpha (0.0..1.0) for both `slerp` and `slerp+tat`.

Extras written to results.json: "modality_gap" {"before", "after", ...} and "sweeps" {"slerp": [...],
"slerp+tat": [...]}, each sweep a list of {"alpha", "cirr": {R@1..}, "circo": {mAP@..}}."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from zscir.demo.recipes import DemoContext, recipe
from zscir.methods import CompositionMethod, get_method_class

log = logging.getLogger(__name__)

SWEEP_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_ALPHA = 0.8


def demo_tat_config(ctx: DemoContext, out: Path):
    """The demo's TAT settings (shared with the TAT benchmarks, so they train and cache the same adapters)."""
    from zscir.train.tat import TATConfig

    # ~one epoch (published); the quick world is small, so a few passes there.
    return TATConfig(out=str(out), world=str(ctx.world.root),
                     epochs=3.0 if ctx.quick else 1.0, batch_size=128, lr=5e-4, seed=ctx.seed,
                     device=ctx.device, progress=True)


@recipe("slerp+tat")
def _slerp_tat(ctx: DemoContext) -> CompositionMethod:
    from zscir.methods.tat import load_tat_backbone
    from zscir.train.tat import PairSet, measure_gap, split_val, train_tat

    world = ctx.world
    pairs = PairSet([Path(world.image_path(p["image"])) for p in world.pairs], [p["caption"] for p in world.pairs],
                    source="world")
    out = ctx.workdir / "tat"
    cfg = demo_tat_config(ctx, out)
    sig_file = ctx.workdir / "tat.signature.json"
    sig = json.dumps({**cfg.signature(), "world": world.meta.get("seed"), "size": world.meta.get("size"),
                      "backbone": ctx.backbone.fingerprint()}, sort_keys=True)
    gap_after: dict = {}
    if not (out / "config.json").is_file() or not sig_file.is_file() or sig_file.read_text() != sig:
        res = train_tat(cfg, backbone=ctx.backbone, pairs=pairs)
        sig_file.write_text(sig)
        log.info("TAT: %d of %d parameters trainable (%.3f%%), %d steps, %.0f img/s, %.0f s",
                 res.trainable, res.total, 100 * res.trainable_fraction, res.steps, res.images_per_s, res.seconds)
        ctx.extras["tat_training"] = {"trainable_parameters": res.trainable, "total_parameters": res.total,
                                      "trainable_percent": round(100 * res.trainable_fraction, 4),
                                      "trainable_percent_of_image_tower": round(100 * res.trainable / res.image_tower_total, 3),
                                      "steps": res.steps, "images_per_s": round(res.images_per_s, 1),
                                      "final_loss": round(res.final_loss, 4), "seconds": round(res.seconds, 1)}
        gap_before, gap_after = res.gap_before, res.gap_after
    tuned = load_tat_backbone(ctx.backbone, out)
    if not gap_after:
        _, val = split_val(len(pairs.paths), cfg)
        vp, vc = [pairs.paths[i] for i in val.tolist()], [pairs.captions[i] for i in val.tolist()]
        gap_before, gap_after = measure_gap(ctx.backbone, vp, vc), measure_gap(tuned, vp, vc)
    ctx.extras["modality_gap"] = {"before": gap_before, "after": gap_after,
                                  "measured_on": "held-out image-caption pairs (not trained on)"}
    print(f"modality gap (held-out pairs): matched cosine {gap_before['matched_cosine']:.3f} -> "
          f"{gap_after['matched_cosine']:.3f}, centroid distance {gap_before['centroid_distance']:.3f} -> "
          f"{gap_after['centroid_distance']:.3f}")

    from zscir.demo.recipes import select_alpha

    # Same rule as the `slerp` recipe: alpha chosen on the world's CIR *training* triplets, never on evaluation.
    cls = get_method_class("slerp+tat")
    alpha = select_alpha(ctx, lambda a: cls(ctx.backbone, tat=tuned, alpha=a), "slerp+tat")
    from zscir.methods import build_method

    method = build_method("slerp+tat", ctx.backbone, [out], alpha=alpha)
    base_method = get_method_class("slerp")(ctx.backbone, alpha=DEFAULT_ALPHA)  # the sweep sets alpha itself
    ctx.extras["sweeps"] = {"alphas": list(SWEEP_ALPHAS),
                            "slerp": alpha_sweep(ctx, base_method), "slerp+tat": alpha_sweep(ctx, method)}
    for name in ("slerp", "slerp+tat"):
        row = " ".join(f"{r['alpha']:.1f}:{r['cirr']['R@1']:.1f}/{r['circo']['mAP@10']:.1f}" for r in ctx.extras["sweeps"][name])
        print(f"alpha sweep {name:10s} (CIRR-like R@1 / CIRCO-like mAP@10): {row}")
    return method


@torch.inference_mode()
def alpha_sweep(ctx: DemoContext, method, alphas=SWEEP_ALPHAS) -> list[dict]:
    """Metrics of a Slerp-type method at each alpha. The gallery and text embeddings are computed once; only
    the interpolation is redone per alpha."""
    from zscir.methods.slerp import slerp

    ev = ctx.evaluator
    keep = {"cirr": None, "circo": ("mAP",)}
    per_split: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in ("cirr", "circo"):
        s = ev.splits[split]
        gallery = ev.gallery_embeddings(method, split)
        refs = gallery[[s.index[q["reference"]] for q in s.queries]]
        texts = [q["modification"] for q in s.queries]
        w = torch.cat([method.backbone.encode_text(texts[i : i + 256]).float().cpu() for i in range(0, len(texts), 256)])
        per_split[split] = (refs, w)
    rows = []
    for a in alphas:
        row: dict = {"alpha": a}
        for split, (refs, w) in per_split.items():
            q = slerp(refs, w, a)
            res = ev.evaluate_cirr(method, q) if split == "cirr" else ev.evaluate_circo(method, q)
            prefix = keep[split]
            row[split] = {k: round(v, 2) for k, v in res.metrics.items() if prefix is None or k.startswith(prefix)}
        rows.append(row)
    return rows
