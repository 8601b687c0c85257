"""Recipes of the training-free methods: the baselines every paper reports (image, text, sum) and Slerp, whose
alpha is chosen on the world's CIR training triplets (zscir.eval.alpha)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from zscir.experiments.context import ExperimentContext
from zscir.experiments.recipes import recipe
from zscir.methods import CompositionMethod, build_method, get_method_class

if TYPE_CHECKING:
    from zscir.methods.slerp import Slerp


@recipe("image", order=10)
def _image(ctx: ExperimentContext) -> CompositionMethod:
    return build_method("image", ctx.backbone)


@recipe("text", order=20)
def _text(ctx: ExperimentContext) -> CompositionMethod:
    return build_method("text", ctx.backbone)


@recipe("sum", order=30)
def _sum(ctx: ExperimentContext) -> CompositionMethod:
    return build_method("sum", ctx.backbone)


def choose_alpha(ctx: ExperimentContext, make, key: str) -> float:
    """Slerp's alpha for method `key`, chosen on training triplets and recorded in the results."""
    from zscir.eval.alpha import select_alpha

    n = int(ctx.settings.table("alpha_selection").get("triplets", 1000))
    choice = select_alpha(ctx.world, make, n, precision=ctx.evaluator.precision)
    ctx.extras.setdefault("alpha_selection", {})[key] = choice.record()
    return choice.alpha


@recipe("slerp", order=40)
def _slerp(ctx: ExperimentContext) -> CompositionMethod:
    cls = cast("type[Slerp]", get_method_class("slerp"))
    return build_method("slerp", ctx.backbone, alpha=choose_alpha(ctx, lambda a: cls(ctx.backbone, alpha=a), "slerp"))
