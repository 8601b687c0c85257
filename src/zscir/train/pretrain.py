"""`zscir pretrain`: join the embedded default's towers with CLIP-style contrastive pre-training.

Both towers stay frozen (their features are computed once); the attention-pooling image head, the residual
text head and a learnable temperature are trained from scratch with symmetric InfoNCE on the world's
image-caption pairs. CLIP's geometry (Liang et al. 2022, "Mind the Gap": matched image-caption cosine about 0.3,
the two modalities in separate cones) comes from two things here, as in CLIP: each head starts in its own cone
(`modality_cone`: the head's normalised output plus a cone vector per modality, frozen here), and the temperature is low
enough that the contrastive loss does not pull the cones together (it starts at 0.02, learnable, clamped at
0.01; from 0.07 the heads learn to cancel the cones within the first steps). TAT can then close the gap."""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zscir.backbones.default import DefaultBackbone, DefaultBackboneConfig
from zscir.errors import InputError
from zscir.objectives import info_nce
from zscir.train.data import EpochSequence
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
    EngineSettings,
    StepContext,
    Task,
    add_engine_args,
    check_batch_size,
    check_out_dir,
    config_signature,
    device_for,
    distributed,
    engine_args,
    engine_config,
    finish,
    fit,
    is_main_process,
)
from zscir.utils.cli import add_config_args, config_from_args, option
from zscir.utils.runtime import autocast, configure_threads, seed_everything

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class PretrainConfig(EngineSettings):
    """Settings of the contrastive pre-training (every run is reproducible from these + the world)."""

    world: str = option("", "world folder made by `zscir world` (its image-caption pairs)")
    out: str = ""
    pairs: str = ""  # a SOURCE of image-caption pairs (zscir.data) instead of the world's
    image_column: str = ""
    caption_column: str = ""
    feature_cache: str = ""  # frozen-feature cache folder for --pairs ("" = $ZSCIR_HOME/cache/features)
    epochs: float = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    # The learnable temperature starts here (clamped at 0.01, CLIP's end value). With the heads' modality cones,
    # 0.02 keeps a CLIP-like gap between the image and text cones (Liang et al. 2022), the regime the published
    # composition methods (Slerp, TAT) were designed for; 0.07 (CLIP's start) lets the heads close it within
    # the demo's few hundred steps, 0.01 from the start stalls the heads (measured: docs/world.md).
    init_temperature: float = option(0.02, "starting value of the learnable temperature, clamped at 0.01 "
                                           "(default: %(default)s)")
    # Length of the per-modality cone vector at the end of each head (DefaultBackboneConfig.modality_cone), used
    # when no architecture is given; 0 = the pre-v2 heads (no gap). Frozen here, movable by TAT's adapters.
    modality_cone: float = option(1.4, "length of each head's modality cone vector, the start of CLIP's modality "
                                       "gap; frozen by pre-training, TAT can move the image one (0: none; "
                                       "default: %(default)s)")
    # Share of a fixed random view of the text trunk's features in the text embedding
    # (DefaultBackboneConfig.text_detail), used when no architecture is given; 0 = none. At 3 the text-image
    # similarities are compressed next to image-image ones as in CLIP, so Slerp's best alpha moves towards the
    # text (0.6-0.7) and the plain sum (alpha 0.5) falls behind it (docs/world.md).
    text_detail: float = option(3.0, "share of the text trunk's own (image-free) description kept in the text "
                                     "embedding, CLIP's text-image compression (0: none; default: %(default)s)")
    val_fraction: float = option(0.05, cli=False)
    seed: int = 0
    device: str = ""
    # the engine's shared settings (see zscir.train.engine)
    steps: int = 0  # > 0: this many steps instead of `epochs` passes
    warmup: float = 0.1

    def architecture(self) -> DefaultBackboneConfig:
        """The heads' architecture this pre-training builds when none is given."""
        return DefaultBackboneConfig(modality_cone=self.modality_cone, text_detail=self.text_detail)

    def check(self) -> None:
        """Refuse impossible settings and an --out that would be destroyed, before any work."""
        from zscir.backbones.default import KIND

        if not 0.01 <= self.init_temperature <= 1.0:
            raise InputError(f"init_temperature {self.init_temperature} is outside [0.01, 1] (the logit scale is capped at 100)")
        try:  # the architecture's own bounds (modality_cone, text_detail), checked by the config that owns them
            self.architecture().validate()
        except ValueError as e:
            raise InputError(str(e)) from e
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check_batch_size(self.batch_size, 2)
        engine_config(self).check()
        check_out_dir(self.out, KIND)
        if bool(self.world) == bool(self.pairs):
            raise InputError("give the training pairs: --world DIR or --pairs SOURCE (one of them)")


@dataclass
class PretrainResult:
    path: Path
    val_t2i_r1: float
    val_i2t_r1: float
    matched_cosine: float
    logit_scale: float
    seconds: float


def pretrain(cfg: PretrainConfig, arch: DefaultBackboneConfig | None = None) -> PretrainResult:
    """Train the default backbone's heads on `cfg.world`'s pairs and save the checkpoint to `cfg.out`."""
    cfg.check()
    t0 = time.time()
    configure_threads()
    seed_everything(cfg.seed)
    with distributed(cfg.device) as dist:
        return _pretrain(cfg, arch, dist, t0)


def _pretrain(cfg: PretrainConfig, arch: DefaultBackboneConfig | None, dist: DistInfo, t0: float) -> PretrainResult:
    from zscir.world import load_world

    device = device_for(dist, cfg.device)
    if arch is None:
        arch = cfg.architecture()
    model = DefaultBackbone(arch).to(device)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / cfg.init_temperature))
    img: Any
    txt: Any
    # the frozen passes in the training precision (bf16 where native under "auto"); the cache keys say so
    with autocast(device, cfg.precision):
        if cfg.pairs:  # the user's pairs: frozen features streamed into the memory-mapped cache, read per batch
            from zscir.data import text_features
            from zscir.train.data import FeatureRows, source_image_features

            sf = source_image_features(model, cfg.pairs, "image_tokens", image_column=cfg.image_column,
                                       caption_column=cfg.caption_column, cache=cfg.feature_cache, need_captions=True)
            img = sf.rows
            txt = FeatureRows(text_features(model, [str(c) for c in sf.captions], "text_trunk",
                                            cache=cfg.feature_cache or None))  # DDP-safe: rank 0 builds, all read
            n = len(img)
            trained_on = {"pairs": cfg.pairs, "items": n, "skipped": sf.failures}
        else:
            from zscir.data import text_features
            from zscir.train.data import FeatureRows, world_image_features

            world = load_world(cfg.world)
            pairs = world.pairs
            ids = [p["image"] for p in pairs]
            # the frozen trunks' outputs, in the shared feature cache: the pseudo-token trainers read the same pairs
            # through the same trunk later (keyed by the trunk, not by these heads), so the pass is not repeated
            img = world_image_features(model, world, ids, ids, cache=cfg.feature_cache)
            txt = FeatureRows(text_features(model, [p["caption"] for p in pairs], "text_trunk",
                                            cache=cfg.feature_cache or None))
            n = len(pairs)
            trained_on = {"world": str(cfg.world), "world_seed": world.meta.get("seed"), "world_size": world.meta.get("size")}
    if n < 3:
        raise InputError(f"pre-training needs at least 3 pairs, got {n}")

    split_gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=split_gen)
    n_val = max(1, int(n * cfg.val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    bs = min(cfg.batch_size, len(train_idx))
    if bs % dist.world_size:
        raise InputError(f"batch size {bs} does not split over {dist.world_size} processes")
    steps_per_epoch = max(1, len(train_idx) // bs)

    def make_gen() -> torch.Generator:  # the generator as it stands after the validation split
        g = torch.Generator().manual_seed(cfg.seed)
        torch.randperm(n, generator=g)
        return g

    orders = EpochSequence(make_gen, lambda g: train_idx[torch.randperm(len(train_idx), generator=g)])

    def batches(epoch: int):
        order = orders(epoch)
        return [order[s * bs : (s + 1) * bs] for s in range(steps_per_epoch)]

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        v = F.normalize(model.image_head(img[b].to(device, torch.float32)), dim=-1)
        w = F.normalize(model.text_head(txt[b].to(device)), dim=-1)
        return info_nce(v, w, model.logit_scale.exp(), a_all=ctx.gather(v), b_all=ctx.gather(w), offset=ctx.offset)

    def clamp() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    ecfg = engine_config(cfg, epochs=float(cfg.epochs))
    sig = {**config_signature(cfg), "arch": asdict(arch) if arch else None, "n_pairs": n, **trained_on}
    task = Task("pretrain", model, batches, loss_fn, steps_per_epoch=steps_per_epoch, after_step=clamp, signature=sig)
    fit(task, ecfg, dist)
    model.eval()
    with torch.no_grad():
        v = F.normalize(model.image_head(img[val_idx].to(device, torch.float32)), dim=-1)
        w = F.normalize(model.text_head(txt[val_idx].to(device)), dim=-1)
        sim = w @ v.T
        gt = torch.arange(len(val_idx), device=device)
        t2i = (sim.argmax(1) == gt).float().mean().item() * 100
        i2t = (sim.argmax(0) == gt).float().mean().item() * 100
        matched = (v * w).sum(-1).mean().item()
        centroid = (v.mean(0) - w.mean(0)).norm().item()
    result = PretrainResult(
        path=Path(cfg.out), val_t2i_r1=t2i, val_i2t_r1=i2t, matched_cosine=matched,
        logit_scale=model.logit_scale.exp().item(), seconds=time.time() - t0,
    )
    if dist.is_main:
        model.save(cfg.out, trained_on=trained_on,
                   pretrain=asdict(cfg), val={"t2i_R@1": t2i, "i2t_R@1": i2t, "matched_cosine": matched,
                                               "centroid_distance": centroid, "pairs": len(val_idx)})
        log.info("pre-trained default backbone -> %s (held-out t2i R@1 %.1f, i2t R@1 %.1f, matched cosine %.3f, %.0f s)",
                 cfg.out, t2i, i2t, matched, result.seconds)
    finish(ecfg, dist)
    return result


def register(sub: argparse._SubParsersAction) -> None:
    from zscir.backbones import own_default_path

    p = sub.add_parser(
        "pretrain",
        help="pre-train the embedded default backbone's heads on a world's image-caption pairs",
        description="Contrastive (symmetric InfoNCE, learnable temperature) pre-training of the embedded "
        "default backbone: frozen EfficientNet-Lite0 + all-MiniLM-L6-v2, trained heads. Writes a checkpoint "
        "folder (model.safetensors + config.json with a fingerprint).",
    )
    from zscir.train.data import add_source_args, source_args

    add_source_args(p, pairs=True)  # --pairs SOURCE, its columns and the feature cache, as every trainer has them
    d = PretrainConfig()
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, epochs=d.epochs, weight_decay=d.weight_decay, warmup=d.warmup,
                    out_help="checkpoint folder", out_default=str(own_default_path()))
    add_config_args(p, PretrainConfig)  # --world, --init-temperature, --modality-cone

    def run(args: argparse.Namespace) -> int:
        res = pretrain(config_from_args(PretrainConfig, args, **engine_args(args, min_batch=2), **source_args(args)))
        if is_main_process():
            print(f"saved {res.path}: held-out text->image R@1 {res.val_t2i_r1:.1f}, image->text R@1 "
                  f"{res.val_i2t_r1:.1f}, matched cosine {res.matched_cosine:.3f}, {res.seconds:.0f} s")
        return 0

    p.set_defaults(func=run)
