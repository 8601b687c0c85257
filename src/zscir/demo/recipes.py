"""Demo recipes: how `zscir demo` obtains each method on a world (training and caching what it needs).

A recipe is `fn(ctx) -> CompositionMethod | None`, registered in table order with `@recipe("name")`. Recipes
train (or reuse) what a method needs, then build it with `zscir.methods.build_method` from the checkpoint
folder, exactly as `zscir eval --checkpoint DIR` does.
Recipes that train write their checkpoints under `ctx.workdir` and reuse them on the next run; they may add
extra results (sweeps, measurements) to `ctx.extras`, which `results.json` carries at top level.
Modules listed in RECIPE_MODULES are imported by the demo; a new method adds its module there."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir.backbones.base import Backbone
from zscir.methods import CompositionMethod, build_method, get_method_class

log = logging.getLogger(__name__)

RECIPE_MODULES: tuple[str, ...] = (
    "zscir.demo.recipes",
    "zscir.demo.tat",
    "zscir.demo.pseudo_token",
    "zscir.demo.rtd_recipes",
    "zscir.demo.isa_recipes",
)


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
    return build_method("image", ctx.backbone)


@recipe("text")
def _text(ctx: DemoContext) -> CompositionMethod:
    return build_method("text", ctx.backbone)


@recipe("sum")
def _sum(ctx: DemoContext) -> CompositionMethod:
    return build_method("sum", ctx.backbone)


ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def select_alpha(ctx: DemoContext, make: Callable[[float], CompositionMethod], key: str) -> float:
    """For a Slerp-type method (`make(alpha)` builds one), choose an interpolation weight on the world's CIR *training* triplets (never the evaluation sets):
    a CIRR-style ranking (reference removed) over the triplets' images, best mean of R@1 and R@10 over
    ALPHA_GRID. Published Slerp defaults (0.8-0.9) were tuned for CLIP's wide modality gap; a space with a
    narrower gap wants a smaller weight, and picking it on training data keeps the evaluation honest."""
    import torch

    from zscir.eval.engine import embed_images
    from zscir.eval.protocols import cirr_protocol
    from zscir.methods.slerp import slerp

    triplets = ctx.world.cir_train[: 400 if ctx.quick else 1000]
    ids = list(dict.fromkeys([t["reference"] for t in triplets] + [t["target"] for t in triplets]))
    index = {i: n for n, i in enumerate(ids)}
    probe = make(ALPHA_GRID[0])
    gallery = embed_images(probe.encode_gallery, [ctx.world.image_path(i) for i in ids],
                           ctx.backbone.preprocess_config, ctx.backbone.device, desc="alpha selection")
    refs = gallery[[index[t["reference"]] for t in triplets]]
    texts = [t["modification"] for t in triplets]
    scores: dict[float, float] = {}
    with torch.inference_mode():
        # Slerp-type methods share the (frozen) text tower: encode the texts once, interpolate per alpha.
        words = torch.cat([probe.backbone.encode_text(texts[i : i + 256]).float().cpu() for i in range(0, len(texts), 256)])
        for a in ALPHA_GRID:
            q = slerp(refs.float(), words, a)
            m = cirr_protocol(q, gallery, [index[t["reference"]] for t in triplets],
                              [index[t["target"]] for t in triplets], [[] for _ in triplets], ks=(1, 10), subset_ks=()).metrics
            scores[a] = round((m["R@1"] + m["R@10"]) / 2, 2)
    best = max(ALPHA_GRID, key=lambda a: (scores[a], -abs(a - 0.8)))
    ctx.extras.setdefault("alpha_selection", {})[key] = {"chosen": best, "validation": "world cir_train triplets",
                                                         "score_(R@1+R@10)/2": {str(a): v for a, v in scores.items()}}
    log.info("%s: alpha %.1f chosen on %d training triplets", key, best, len(triplets))
    return best


@recipe("slerp")
def _slerp(ctx: DemoContext) -> CompositionMethod:
    cls = get_method_class("slerp")
    return build_method("slerp", ctx.backbone, alpha=select_alpha(ctx, lambda a: cls(ctx.backbone, alpha=a), "slerp"))
