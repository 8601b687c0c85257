"""Experiments on the synthetic world: every method obtained by a recipe, its trained artefacts cached by their
settings and inputs, settings as data (one TOML per world size); `zscir demo` is a thin composition of it.

    artifacts.py   cached_artifact: one cache for every trained artefact (key = settings + inputs' fingerprints)
    settings.py    load_settings(size): settings/<size>.toml, one table per trainer
    context.py     ExperimentContext (world, pre-trained default, evaluator, settings, workdir), build_context
    recipes/       one module per family of methods, discovered automatically (`@recipe(name, order=...)`)
    demo.py        `zscir demo`

The benchmark scripts use this public API (build_context, list_recipes, method_from_recipe and each recipe
module's config helpers)."""

from zscir.experiments.artifacts import artifact_key, cached_artifact
from zscir.experiments.context import ExperimentContext, build_context, ensure_default_model, ensure_world
from zscir.experiments.recipes import list_recipes, method_from_recipe, recipe
from zscir.experiments.settings import Settings, load_settings

__all__ = ["ExperimentContext", "Settings", "artifact_key", "build_context", "cached_artifact",
           "ensure_default_model", "ensure_world", "list_recipes", "load_settings", "method_from_recipe", "recipe"]
