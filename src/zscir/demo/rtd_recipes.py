"""Demo recipes for the RTD plug-in: `pic2word+rtd` and `two-stage+rtd`.

`pic2word+rtd` takes pic2word from its own recipe (so the base checkpoint is the very one reported next to
it), tunes the text tower with RTD on the world's text triplets (cached under ctx.workdir, keyed by the base
checkpoint and the RTD settings) and returns pic2word with the tuned text side. `two-stage+rtd` tunes the
text tower with RTD for the stage-1 mapper first and runs stage 2 on that tower (see its recipe).

Demo sizing (2 CPU cores): full fine-tuning of MiniLM costs about a forward + backward of the whole text tower
per step, so the demo runs far fewer steps than a real RTD run (one epoch over many thousand triplets): see
`demo_rtd_config`. The learning rate is raised above the published 1e-5 for the same reason (few steps)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from zscir.demo.recipes import DemoContext, list_recipes, recipe
from zscir.methods.base import CompositionMethod

log = logging.getLogger(__name__)


def demo_rtd_config(quick: bool, seed: int):
    """The demo's RTD settings (published recipe except the step count and lr, see the module docstring)."""
    from zscir.train.rtd import RTDConfig

    # quick: 16 steps x 16 triplets (+16 reference pairs); full: 60 x 32. Each step is a forward + backward of
    # the whole MiniLM on ~2x batch short texts; 6 steps x 16 already move pic2word (benchmarks/rtd_ablations.py).
    return RTDConfig(steps=16 if quick else 60, batch_size=16 if quick else 32, lr=3e-5, noise=0.5,
                     concat="template", tune="full", seed=seed)


def _base_method(ctx: DemoContext, name: str) -> CompositionMethod | None:
    """The base method as its own recipe builds it (its training is cached, so this is cheap after the first)."""
    recipes = list_recipes()
    fn = recipes.get(name)
    return fn(ctx) if fn is not None else None


def _ckpt_fingerprint(path: str) -> str:
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("fingerprint", "")
    except (OSError, ValueError):
        return ""


def rtd_checkpoint_for(ctx: DemoContext, base: CompositionMethod, cfg=None) -> Path:
    """Train (or reuse) RTD for `base`'s mapper on the world's text triplets, starting from `base`'s text side;
    returns the RTD checkpoint folder (cached under ctx.workdir, keyed by the base checkpoint and the settings)."""
    from zscir.train.rtd import train_rtd
    from zscir.train.triplets import triplets_from_dicts

    cfg = cfg or demo_rtd_config(ctx.quick, ctx.seed)
    cfg.device = ctx.device
    base_ckpt = str(getattr(base, "checkpoint_path", ""))
    key = hashlib.sha256(json.dumps({"base": base.name, "ckpt": _ckpt_fingerprint(base_ckpt),
                                     "backbone": ctx.backbone.fingerprint(), "rtd": {**asdict(cfg), "out": ""}},
                                    sort_keys=True).encode()).hexdigest()[:12]
    out = Path(ctx.workdir) / f"rtd-{base.name.replace('/', '_')}-{key}"
    if not (out / "config.json").is_file():
        cfg.out = str(out)
        start = base.text_encoder if base.text_encoder is not base.backbone else None
        trips = triplets_from_dicts(ctx.world.text_triplets)
        res = train_rtd(cfg, ctx.backbone, base.mapper, trips, text_encoder=start,
                        meta={"triplet_source": "world", "mapper": {"method": base.name, "path": base_ckpt,
                                                                     "fingerprint": _ckpt_fingerprint(base_ckpt)}})
        ctx.extras.setdefault("rtd_training", {})[f"{base.name}+rtd"] = {
            "steps": res.steps, "triplets": len(trips), "loss_first": round(res.losses[0], 4),
            "loss_last": round(res.final_loss, 4), "seconds": round(res.seconds, 1), "trainable": res.trainable}
    return out


def rtd_for(ctx: DemoContext, base: CompositionMethod, cfg=None) -> CompositionMethod:
    """`base` with its text side replaced by the RTD-tuned tower (trained or reused): `<base>+rtd`. A registered
    `<base>+rtd` is built from the RTD checkpoint alone (it records its mapper), as every command builds it."""
    from zscir.methods import build_method, list_methods
    from zscir.methods.rtd import with_rtd

    path = rtd_checkpoint_for(ctx, base, cfg)
    if f"{base.name}+rtd" in list_methods():
        return build_method(f"{base.name}+rtd", ctx.backbone, [path])
    return with_rtd(base, path)


def _rtd_recipe(ctx: DemoContext, name: str) -> CompositionMethod | None:
    base = _base_method(ctx, name)
    if base is None or not hasattr(base, "mapper"):
        log.info("RTD: base method %s not available, %s+rtd skipped", name, name)
        return None
    return rtd_for(ctx, base)


@recipe("pic2word+rtd")
def _pic2word_rtd(ctx: DemoContext) -> CompositionMethod | None:
    return _rtd_recipe(ctx, "pic2word")


@recipe("two-stage+rtd")
def _two_stage_rtd(ctx: DemoContext) -> CompositionMethod | None:
    """RTD plugged into two-stage: RTD tunes the original text tower for the stage-1 mapper, then stage 2 trains
    its LoRA adapters on that tower (same settings as `two-stage`). RTD goes first because two-stage tunes the
    text tower itself: tuning after stage 2 would anchor its image-triplet-tuned tower back to caption space
    (measured in docs/rtd.md)."""
    from dataclasses import replace

    from zscir.demo.pseudo_token import default_settings, pseudo_token_variant
    from zscir.methods import build_method

    stage1 = _base_method(ctx, "two-stage/mapping-only")  # the very stage-1 mapper `two-stage` is built on
    if stage1 is None:
        log.info("RTD: two-stage/mapping-only not available, two-stage+rtd skipped")
        return None
    rtd = rtd_checkpoint_for(ctx, stage1)
    s = default_settings(ctx.quick, ctx.seed, ctx.device)
    path = pseudo_token_variant(ctx, "two-stage", mapping=s["mapping"],
                                composing=replace(s["composing"], text_init=str(rtd)))
    # a stage-2 checkpoint trained on an RTD tower records it (`text_init`): it is a two-stage+rtd checkpoint
    return build_method("two-stage+rtd", ctx.backbone, [path])
