"""Recipe `slerp+tat`: train (or reuse) TAT adapters on the world's pairs, measure the modality gap before and
after, choose Slerp's alpha on training triplets, and sweep alpha (0.0..1.0) for both `slerp` and `slerp+tat`.

Extras written to results.json: "modality_gap" {"before", "after", ...}, "tat_training" and "sweeps"
{"slerp": [...], "slerp+tat": [...]}, each sweep a list of {"alpha", "cirr": {R@1..}, "circo": {mAP@..}}."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from zscir.experiments.context import ExperimentContext
from zscir.experiments.recipes import recipe
from zscir.methods import CompositionMethod, build_method, get_method_class

if TYPE_CHECKING:
    from zscir.methods.slerp import Slerp
    from zscir.methods.tat import SlerpTAT

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.8  # the published default; the sweep sets alpha itself


def tat_config(ctx: ExperimentContext):
    """The experiment's TAT settings (shared with the TAT benchmarks, so they train and cache the same adapters)."""
    from zscir.train.tat import TATConfig

    return ctx.settings.config("tat", TATConfig, world=str(ctx.world.root))


def tat_checkpoint(ctx: ExperimentContext, cfg=None) -> Path:
    """Train (or reuse) TAT adapters on the world's pairs; the training record goes to ctx.extras."""
    from zscir.train.tat import train_tat

    cfg = cfg or tat_config(ctx)

    def build(out: Path) -> None:
        res = train_tat(replace(cfg, out=str(out)), backbone=ctx.backbone)
        log.info("TAT: %d of %d parameters trainable (%.3f%%), %d steps, %.0f img/s, %.0f s",
                 res.trainable, res.total, 100 * res.trainable_fraction, res.steps, res.images_per_s, res.seconds)
        ctx.extras["tat_training"] = {
            "trainable_parameters": res.trainable, "total_parameters": res.total,
            "trainable_percent": round(100 * res.trainable_fraction, 4),
            "trainable_percent_of_image_tower": round(100 * res.trainable / res.image_tower_total, 3),
            "steps": res.steps, "images_per_s": round(res.images_per_s, 1), "final_loss": round(res.final_loss, 4),
            "seconds": round(res.seconds, 1)}

    return ctx.artifact("tat", cfg, build)


@recipe("slerp+tat", order=50)
def _slerp_tat(ctx: ExperimentContext) -> CompositionMethod:
    from zscir.eval.alpha import alpha_sweep
    from zscir.experiments.recipes.baselines import choose_alpha
    from zscir.methods.tat import load_tat_backbone
    from zscir.train.tat import measure_gap, split_val

    cfg = tat_config(ctx)
    out = tat_checkpoint(ctx, cfg)
    tuned = load_tat_backbone(ctx.backbone, out)
    pairs = ctx.world.pairs
    _, val = split_val(len(pairs), cfg)
    vp = [Path(ctx.world.image_path(pairs[i]["image"])) for i in val.tolist()]
    vc = [pairs[i]["caption"] for i in val.tolist()]
    gap_before, gap_after = measure_gap(ctx.backbone, vp, vc), measure_gap(tuned, vp, vc)
    ctx.extras["modality_gap"] = {"before": gap_before, "after": gap_after,
                                  "measured_on": "held-out image-caption pairs (not trained on)"}
    print(f"modality gap (held-out pairs): matched cosine {gap_before['matched_cosine']:.3f} -> "
          f"{gap_after['matched_cosine']:.3f}, centroid distance {gap_before['centroid_distance']:.3f} -> "
          f"{gap_after['centroid_distance']:.3f}")

    # the `slerp` recipe's rule: alpha chosen on the world's CIR *training* triplets, never on evaluation
    cls = cast("type[SlerpTAT]", get_method_class("slerp+tat"))
    alpha = choose_alpha(ctx, lambda a: cls(ctx.backbone, tat=tuned, alpha=a), "slerp+tat")
    method = build_method("slerp+tat", ctx.backbone, [out], alpha=alpha)
    base = cast("type[Slerp]", get_method_class("slerp"))(ctx.backbone, alpha=DEFAULT_ALPHA)
    from zscir.eval.alpha import ALPHA_GRID

    ctx.extras["sweeps"] = {"alphas": list(ALPHA_GRID), "slerp": alpha_sweep(ctx.evaluator, base),
                            "slerp+tat": alpha_sweep(ctx.evaluator, method)}
    for name in ("slerp", "slerp+tat"):
        row = " ".join(f"{r['alpha']:.1f}:{r['cirr']['R@1']:.1f}/{r['circo']['mAP@10']:.1f}"
                       for r in ctx.extras["sweeps"][name])
        print(f"alpha sweep {name:10s} (CIRR-like R@1 / CIRCO-like mAP@10): {row}")
    return method
