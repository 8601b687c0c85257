"""Recipe `lincir`: the mapper trained on the world's captions alone (LinCIR, docs/lincir.md), with the same
backbone, world and seed as pic2word, which it is compared against."""

from __future__ import annotations

from dataclasses import replace

from zscir.experiments.context import ExperimentContext
from zscir.experiments.recipes import recipe
from zscir.methods import CompositionMethod, build_method


@recipe("lincir", order=65)
def _lincir(ctx: ExperimentContext) -> CompositionMethod:
    from zscir.train.lincir import LinCIRConfig, train_lincir

    cfg = ctx.settings.config("lincir", LinCIRConfig, world=str(ctx.world.root))
    path = ctx.artifact("lincir", cfg, lambda out: train_lincir(replace(cfg, out=str(out)), backbone=ctx.backbone))
    return build_method("lincir", ctx.backbone, [path])
