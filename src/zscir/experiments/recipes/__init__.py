"""Recipes: how an experiment obtains each method on the world (training and caching what it needs).

A recipe is `fn(ctx) -> CompositionMethod | None`, registered with `@recipe("name", order=...)`; `order` is its
row in tables and reports. Every module of this package is imported when the recipes are listed, so a new
method adds one module here and nothing else. Recipes train through `ctx.artifact(...)` (cached by settings and
inputs) and build the method with `zscir.methods.build_method` from the checkpoint folder, exactly as
`zscir eval --checkpoint DIR` does."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zscir.experiments.context import ExperimentContext
    from zscir.methods.base import CompositionMethod

Recipe = Callable[["ExperimentContext"], "CompositionMethod | None"]


@dataclass(frozen=True)
class _Entry:
    name: str
    fn: Recipe
    order: float


_RECIPES: dict[str, _Entry] = {}


def recipe(name: str, order: float = 100.0) -> Callable[[Recipe], Recipe]:
    """Register `fn` as the recipe of method `name` (`order`: its row in tables; lower first)."""

    def deco(fn: Recipe) -> Recipe:
        _RECIPES[name] = _Entry(name, fn, order)
        return fn

    return deco


def list_recipes() -> dict[str, Recipe]:
    """Every recipe, in table order (importing every module of this package first)."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return {e.name: e.fn for e in sorted(_RECIPES.values(), key=lambda e: (e.order, e.name))}


def method_from_recipe(ctx: ExperimentContext, name: str) -> CompositionMethod | None:
    """Method `name` as its own recipe builds it (its training is cached, so this is cheap after the first):
    how a recipe builds on another one (an +rtd variant on its base)."""
    fn = list_recipes().get(name)
    return fn(ctx) if fn is not None else None
