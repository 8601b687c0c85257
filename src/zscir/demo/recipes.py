"""Demo recipes: how `zscir demo` obtains each method on a world (training and caching what it needs).

A recipe is `fn(ctx) -> CompositionMethod | None`, registered in table order with `@recipe("name")`.
Recipes that train write their checkpoints under `ctx.workdir` and reuse them on the next run; they may add
extra results (sweeps, measurements) to `ctx.extras`, which `results.json` carries at top level.
Modules listed in RECIPE_MODULES are imported by the demo; a new method adds its module there."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zscir.backbones.base import Backbone
from zscir.methods import CompositionMethod, get_method_class

log = logging.getLogger(__name__)

RECIPE_MODULES: tuple[str, ...] = ("zscir.demo.recipes", "zscir.demo.isa_recipes")


@dataclass
class DemoContext:
    """Everything a recipe may use."""

    world: Any  # zscir.world.World
    backbone: Backbone
    evaluator: Any  # zscir.eval.world.WorldEvaluator
    workdir: Path
    quick: bool
    seed: int
    device: str
    extras: dict[str, Any] = field(default_factory=dict)


Recipe = Callable[[DemoContext], "CompositionMethod | None"]
_RECIPES: dict[str, Recipe] = {}


def recipe(name: str) -> Callable[[Recipe], Recipe]:
    def deco(fn: Recipe) -> Recipe:
        _RECIPES[name] = fn
        return fn

    return deco


def list_recipes() -> dict[str, Recipe]:
    import importlib

    for mod in RECIPE_MODULES:
        importlib.import_module(mod)
    return dict(_RECIPES)


# --- the training-free baselines and Slerp ---------------------------------------------------------------
@recipe("image")
def _image(ctx: DemoContext) -> CompositionMethod:
    return get_method_class("image")(ctx.backbone)


@recipe("text")
def _text(ctx: DemoContext) -> CompositionMethod:
    return get_method_class("text")(ctx.backbone)


@recipe("sum")
def _sum(ctx: DemoContext) -> CompositionMethod:
    return get_method_class("sum")(ctx.backbone)


@recipe("slerp")
def _slerp(ctx: DemoContext) -> CompositionMethod:
    return get_method_class("slerp")(ctx.backbone, alpha=0.8)
