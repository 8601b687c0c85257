"""Demo recipes of the pseudo-token methods: `pic2word`, `two-stage/mapping-only`, `two-stage`.

Each trains on the demo's world (cached under ctx.workdir, keyed by the backbone fingerprint and the
settings, so a changed backbone or setting retrains and an unchanged one is reused) and returns the method.
`pseudo_token_variant` is shared with benchmarks/pseudo_token_ablations.py."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from zscir.demo.recipes import DemoContext, recipe
from zscir.methods import build_method
from zscir.methods.mapped import Pic2Word, TwoStage, TwoStageMappingOnly

log = logging.getLogger(__name__)


def default_settings(quick: bool, seed: int = 0, device: str = "") -> dict[str, Any]:
    """Trainer configs of the demo (quick: CI-sized)."""
    from zscir.train.pseudo_token import ComposingConfig, mapping_config, pic2word_config

    common = {"seed": seed, "device": device}
    if quick:
        return {
            "pic2word": pic2word_config(steps=40, batch_size=64, lr=2e-3, **common),
            "mapping": mapping_config(steps=40, batch_size=64, lr=2e-3, max_images=500, **common),
            "composing": ComposingConfig(steps=40, batch_size=48, **common),
        }
    return {
        "pic2word": pic2word_config(steps=175, batch_size=64, lr=1e-3, **common),
        "mapping": mapping_config(steps=175, batch_size=64, lr=1e-3, **common),
        "composing": ComposingConfig(steps=200, batch_size=48, **common),
    }


def _key(backbone_fp: str, cfg: Any, parent: str = "") -> str:
    doc = {k: v for k, v in asdict(cfg).items() if k not in ("world", "out", "mapper", "feature_cache", "device")}
    h = hashlib.sha256(json.dumps([backbone_fp, doc, parent], sort_keys=True).encode()).hexdigest()[:10]
    return f"{backbone_fp[:8]}-{h}"


def pseudo_token_variant(ctx: DemoContext, name: str, pic2word: Any = None, mapping: Any = None,
                         composing: Any = None) -> Path:
    """Train (or reuse) one checkpoint: pic2word, a stage-1 mapper, or stage 2 on top of a stage-1 mapper.
    Exactly one of the three configs is given; a composing config trains its stage 1 from `mapping`."""
    from zscir.train.pseudo_token import train_composing, train_mapping, train_pic2word

    fp = ctx.backbone.fingerprint()
    if pic2word is not None:
        out = ctx.workdir / f"pic2word-{_key(fp, pic2word)}"
        if not (out / "config.json").is_file():
            train_pic2word(replace(pic2word, out=str(out)), backbone=ctx.backbone, world=ctx.world)
        return out
    if composing is None:
        out = ctx.workdir / f"mapping-{_key(fp, mapping)}"
        if not (out / "config.json").is_file():
            train_mapping(replace(mapping, out=str(out)), backbone=ctx.backbone, world=ctx.world)
        return out
    stage1 = pseudo_token_variant(ctx, name, mapping=mapping)
    out = ctx.workdir / f"two-stage-{_key(fp, composing, stage1.name)}"
    if not (out / "config.json").is_file():
        train_composing(replace(composing, mapper=str(stage1), out=str(out)),
                        backbone=ctx.backbone, world=ctx.world)
    return out


@recipe("pic2word")
def _pic2word(ctx: DemoContext) -> Pic2Word:
    s = default_settings(ctx.quick, ctx.seed, ctx.device)
    return build_method("pic2word", ctx.backbone, [pseudo_token_variant(ctx, "pic2word", pic2word=s["pic2word"])])


@recipe("two-stage/mapping-only")
def _mapping_only(ctx: DemoContext) -> TwoStageMappingOnly:
    s = default_settings(ctx.quick, ctx.seed, ctx.device)
    return build_method("two-stage/mapping-only", ctx.backbone,
                        [pseudo_token_variant(ctx, "mapping", mapping=s["mapping"])])


@recipe("two-stage")
def _two_stage(ctx: DemoContext) -> TwoStage:
    s = default_settings(ctx.quick, ctx.seed, ctx.device)
    path = pseudo_token_variant(ctx, "two-stage", mapping=s["mapping"], composing=s["composing"])
    return build_method("two-stage", ctx.backbone, [path])
