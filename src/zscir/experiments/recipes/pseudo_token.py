"""Recipes of the pseudo-token methods: `pic2word`, `two-stage/mapping-only`, `two-stage`.

Each trains on the experiment's world through `ctx.artifact` (keyed by the settings, the backbone, the world and,
for stage 2, the stage-1 checkpoint it starts from) and returns the method. `pseudo_token_variant` is shared with
benchmarks/pseudo_token_ablations.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from zscir.experiments.artifacts import recorded_key
from zscir.experiments.context import ExperimentContext
from zscir.experiments.recipes import recipe
from zscir.methods import CompositionMethod, build_method


def pseudo_token_settings(ctx: ExperimentContext) -> dict[str, Any]:
    """The experiment's trainer configs: {"pic2word", "mapping", "composing"}."""
    from zscir.train.composing import ComposingConfig
    from zscir.train.pseudo_token import MapperTrainConfig, mapping_config, pic2word_config

    return {
        "pic2word": ctx.settings.config("pic2word", MapperTrainConfig, **_fields_of(pic2word_config())),
        "mapping": ctx.settings.config("mapping", MapperTrainConfig, **_fields_of(mapping_config())),
        "composing": ctx.settings.config("composing", ComposingConfig),
    }


def _fields_of(base: Any) -> dict[str, Any]:
    # what distinguishes pic2word from stage 1 (injection, soft alignment): fixed by the method, not a setting
    return {"injection": base.injection, "soft_weight": base.soft_weight}


def pseudo_token_variant(ctx: ExperimentContext, pic2word: Any = None, mapping: Any = None,
                         composing: Any = None) -> Path:
    """Train (or reuse) one checkpoint: pic2word, a stage-1 mapper, or stage 2 on top of a stage-1 mapper.
    Exactly one of pic2word / mapping is given, plus `composing` for stage 2 (its stage 1 is `mapping`)."""
    from zscir.train.composing import train_composing
    from zscir.train.pseudo_token import train_mapping, train_pic2word

    if pic2word is not None:
        return ctx.artifact("pic2word", pic2word, lambda out: train_pic2word(
            replace(pic2word, out=str(out)), backbone=ctx.backbone, world=ctx.world))
    stage1 = ctx.artifact("mapping", mapping, lambda out: train_mapping(
        replace(mapping, out=str(out)), backbone=ctx.backbone, world=ctx.world))
    if composing is None:
        return stage1
    inputs = {"stage1": recorded_key(stage1)}
    if composing.text_init:
        inputs["text_init"] = recorded_key(Path(composing.text_init))
    return ctx.artifact("two-stage", composing, lambda out: train_composing(
        replace(composing, mapper=str(stage1), out=str(out)), backbone=ctx.backbone, world=ctx.world),
        inputs=inputs)


@recipe("pic2word", order=60)
def _pic2word(ctx: ExperimentContext) -> CompositionMethod:
    s = pseudo_token_settings(ctx)
    return build_method("pic2word", ctx.backbone, [pseudo_token_variant(ctx, pic2word=s["pic2word"])])


@recipe("two-stage/mapping-only", order=70)
def _mapping_only(ctx: ExperimentContext) -> CompositionMethod:
    s = pseudo_token_settings(ctx)
    return build_method("two-stage/mapping-only", ctx.backbone, [pseudo_token_variant(ctx, mapping=s["mapping"])])


@recipe("two-stage", order=80)
def _two_stage(ctx: ExperimentContext) -> CompositionMethod:
    s = pseudo_token_settings(ctx)
    return build_method("two-stage", ctx.backbone,
                        [pseudo_token_variant(ctx, mapping=s["mapping"], composing=s["composing"])])
