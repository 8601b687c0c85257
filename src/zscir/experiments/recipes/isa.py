"""Recipes of ISA: `isa` (light query encoder, asymmetric) and `isa/symmetric` (token learner on the large
tower), both trained on the world's unlabelled images through `ctx.artifact`.

`results.json` gets an `isa` section: the query-side cost table (params, FLOPs, CPU latency of the gallery tower
and of the light query side) and each variant's query-side FLOPs; the demo compares the variants' R@10 once both
are evaluated (experiments.demo)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zscir.experiments.context import ExperimentContext
from zscir.experiments.recipes import recipe
from zscir.methods import CompositionMethod, build_method

if TYPE_CHECKING:
    from zscir.methods.isa import ISA


def isa_config(ctx: ExperimentContext, mode: str):
    from zscir.train.isa import ISATrainConfig

    return ctx.settings.config("isa", ISATrainConfig, mode=mode)


def isa_checkpoint(ctx: ExperimentContext, mode: str) -> Path:
    from zscir.train.isa import train_isa

    cfg = isa_config(ctx, mode)
    return ctx.artifact(f"isa-{mode}", cfg, lambda out: train_isa(replace(cfg, out=str(out)), backbone=ctx.backbone,
                                                                   world=ctx.world))


def _record_flops(ctx: ExperimentContext, name: str, method: ISA) -> None:
    from zscir.utils.profiling import count_flops

    size = ctx.backbone.preprocess_config.size
    x = torch.zeros(1, 3, size, size, device=ctx.backbone.device)
    ctx.extras.setdefault("isa", {}).setdefault("query_flops", {})[name] = count_flops(method.pseudo_tokens, x)


@recipe("isa", order=110)
def _isa_asymmetric(ctx: ExperimentContext) -> CompositionMethod:
    from zscir.eval.costs import query_side_costs
    from zscir.methods.isa import ISA

    method = build_method("isa", ctx.backbone, [isa_checkpoint(ctx, "asymmetric")])
    assert isinstance(method, ISA)
    section = ctx.extras.setdefault("isa", {})
    section["n_tokens"] = method.config.n_tokens
    repeats = int(ctx.settings.table("isa_costs").get("repeats", 20))
    section["query_side_costs"] = query_side_costs(ctx.backbone, method, repeats=repeats)
    _record_flops(ctx, "isa", method)
    return method


@recipe("isa/symmetric", order=120)
def _isa_symmetric(ctx: ExperimentContext) -> CompositionMethod:
    from zscir.methods.isa import ISA

    method = build_method("isa/symmetric", ctx.backbone, [isa_checkpoint(ctx, "symmetric")])
    assert isinstance(method, ISA)  # ISASymmetric
    _record_flops(ctx, "isa/symmetric", method)
    return method
