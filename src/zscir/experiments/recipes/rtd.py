"""Recipes of the RTD plug-in: `pic2word+rtd` and `two-stage+rtd`.

`pic2word+rtd` takes pic2word from its own recipe (so the base checkpoint is the very one reported next to it),
tunes the text tower with RTD on the world's text triplets and builds `pic2word+rtd` from the RTD checkpoint.
`two-stage+rtd` tunes the text tower with RTD for the stage-1 mapper first and runs stage 2 on that tower.

Sizing (2 CPU cores): full fine-tuning of MiniLM costs a forward + backward of the whole text tower per step,
so the experiments run far fewer steps than a real RTD run, with a raised learning rate (settings/*.toml)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from zscir.experiments.artifacts import recorded_key
from zscir.experiments.context import ExperimentContext
from zscir.experiments.recipes import method_from_recipe, recipe
from zscir.methods import build_method
from zscir.methods.base import CompositionMethod

log = logging.getLogger(__name__)


def rtd_config(ctx: ExperimentContext):
    """The experiment's RTD settings."""
    from zscir.train.rtd import RTDConfig

    return ctx.settings.config("rtd", RTDConfig)


def rtd_checkpoint_for(ctx: ExperimentContext, base: CompositionMethod, cfg=None) -> Path:
    """Train (or reuse) RTD for `base`'s mapper on the world's text triplets, starting from `base`'s text side;
    the RTD checkpoint folder, keyed by the base checkpoint and the settings."""
    from zscir.methods.mapped import MappedTokenMethod
    from zscir.train.rtd import train_rtd
    from zscir.train.triplets import triplets_from_dicts

    assert isinstance(base, MappedTokenMethod)  # pic2word, two-stage/mapping-only: a mapper and a text side
    cfg = cfg or rtd_config(ctx)
    base_ckpt = Path(str(getattr(base, "checkpoint_path", "")))

    def build(out: Path) -> None:
        start = base.text_encoder if base.text_encoder is not base.backbone else None
        trips = triplets_from_dicts(ctx.world.text_triplets)
        res = train_rtd(replace(cfg, out=str(out)), ctx.backbone, base.mapper, trips, text_encoder=start,
                        meta={"triplet_source": "world", "mapper": {"method": base.name, "path": str(base_ckpt),
                                                                     "artifact": recorded_key(base_ckpt)}})
        ctx.extras.setdefault("rtd_training", {})[f"{base.name}+rtd"] = {
            "steps": res.steps, "triplets": len(trips), "loss_first": round(res.losses[0], 4),
            "loss_last": round(res.final_loss, 4), "seconds": round(res.seconds, 1), "trainable": res.trainable}

    return ctx.artifact(f"rtd-{base.name.replace('/', '_')}", cfg, build,
                        inputs={"base": base.name, "base_artifact": recorded_key(base_ckpt)})


@recipe("pic2word+rtd", order=90)
def _pic2word_rtd(ctx: ExperimentContext) -> CompositionMethod | None:
    base = method_from_recipe(ctx, "pic2word")
    if base is None:
        return None
    return build_method("pic2word+rtd", ctx.backbone, [rtd_checkpoint_for(ctx, base)])


@recipe("two-stage+rtd", order=100)
def _two_stage_rtd(ctx: ExperimentContext) -> CompositionMethod | None:
    """RTD plugged into two-stage: RTD tunes the original text tower for the stage-1 mapper, then stage 2 trains
    its LoRA adapters on that tower (same settings as `two-stage`). RTD goes first because two-stage tunes the
    text tower itself: tuning after stage 2 would anchor its image-triplet-tuned tower back to caption space
    (measured in docs/rtd.md)."""
    from zscir.experiments.recipes.pseudo_token import pseudo_token_settings, pseudo_token_variant

    stage1 = method_from_recipe(ctx, "two-stage/mapping-only")  # the very stage-1 mapper `two-stage` is built on
    if stage1 is None:
        return None
    rtd = rtd_checkpoint_for(ctx, stage1)
    s = pseudo_token_settings(ctx)
    path = pseudo_token_variant(ctx, mapping=s["mapping"], composing=replace(s["composing"], text_init=str(rtd)))
    # a stage-2 checkpoint trained on an RTD tower records it (`text_init`): it is a two-stage+rtd checkpoint
    return build_method("two-stage+rtd", ctx.backbone, [path])
