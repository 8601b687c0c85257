"""Training the pseudo-token methods: `zscir train pic2word`, `zscir train mapping` (stage 2, `zscir train
composing`, is in zscir.train.composing).

Every tower stays frozen except where stated, so the image tower's local features (and, for stage 1, the
captions' embeddings) are computed once and cached; each step then runs only the mapper and the text tower
on a short template (the pseudo token is injected at the input, so the text tower's forward and backward
cannot be cached).

- pic2word: single-token MLP mapper on the world's *unlabelled* images; loss = symmetric InfoNCE between the
  image embedding v and the embedding p of `a photo of $` with `$` := mapper(v).
- mapping (two-stage, stage 1): the mapper also attends to the local feature map (injection); trained on the
  world's image-caption *pairs* with the contrastive term plus soft text alignment: KL(softmax(v.T/t) ||
  softmax(p.T/t)) over the batch's captions T, i.e. the pseudo sentence must reproduce the image's whole
  similarity distribution over captions, not only a one-hot match.

The helpers both stages use (`setup_training`, `SourceData`, `world_key`, `ids_digest`, `logit_scale_of`,
`TrainResult`) live here; `ComposingConfig`, `train_composing`, `select_triplets` and `grouped_batches` stay
importable from here for older code."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zscir.backbones.base import Backbone
from zscir.errors import InputError
from zscir.methods.pseudo_token import DEFAULT_TEMPLATE, check_template
from zscir.nn.mappers import MAPPER_KIND, TokenMapper, mapper_config_for, save_mapper
from zscir.objectives import info_nce
from zscir.train.data import (
    EpochSequence,
    add_source_args,
    frozen_text_embeddings,
    pooled_rows,
    source_args,
    world_image_features,
)
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
from zscir.utils.cli import add_backbone_arg, add_config_args, config_from_args, option
from zscir.utils.runtime import autocast, configure_threads, seed_everything

log = logging.getLogger(__name__)

MAPPING_TEMPLATE = "a photo of $"
#: the help of the options stage 1 and stage 2 share
WORLD_HELP = "a world folder made by `zscir world` (its images / pairs / triplets)"
TEMPLATE_HELP = "composition template (default: %(default)r)"


# --- configs ----------------------------------------------------------------------------------------------
@dataclass
class MapperTrainConfig(EngineSettings):
    """Settings shared by `train pic2word` and `train mapping` (stage 1)."""

    world: str = option("", WORLD_HELP)
    out: str = ""
    backbone: str = "default"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    hidden: int = option(512)
    n_tokens: int = option(1, "pseudo tokens per image", flag="--tokens")
    # the mapper's dropout (0: under torchrun, every process then matches one process exactly)
    dropout: float = option(0.1, "mapper dropout (default: %(default)s)")
    injection: bool = option(False, "ablation: MLP on the pooled embedding only")  # stage 1: --no-injection
    soft_weight: float = option(0.0, "weight of the soft text alignment (KL) term; 0 = contrastive only")
    # temperature of the image's target distribution; 0 = the backbone's
    soft_temperature: float = option(0.0, cli=False)
    train_template: str = option(MAPPING_TEMPLATE, cli=False)
    template: str = option(DEFAULT_TEMPLATE, TEMPLATE_HELP)  # the composition template recorded for inference
    max_images: int = option(0)  # 0 = all
    seed: int = 0
    device: str = ""
    # your own data instead of --world (zscir.train.data): a SOURCE of images / image-caption pairs
    images: str = ""
    pairs: str = ""
    image_column: str = ""
    caption_column: str = ""
    feature_cache: str = ""  # frozen-feature cache folder ("" = $ZSCIR_HOME/cache/features)
    # the engine's shared settings (see zscir.train.engine)
    epochs: float = 0.0  # > 0 and steps == 0: passes over the images instead of a step count

    def check(self) -> None:
        """Refuse impossible settings and an --out that would be destroyed, before any work."""
        if "$" not in self.train_template:
            raise InputError(f"training template {self.train_template!r} has no placeholder '$' for the pseudo token")
        check_template(self.template, "$")
        check_out_dir(self.out, MAPPER_KIND)
        check_batch_size(self.batch_size, 2)
        engine_config(self).check()


@dataclass
class TrainResult:
    path: Path
    steps: int
    seconds: float
    final_loss: float
    info: dict[str, Any] = field(default_factory=dict)


# --- shared helpers ---------------------------------------------------------------------------------------
def setup_training(cfg: Any, backbone: Backbone | None, world: Any, dist: DistInfo):
    """(seeded generator, world, backbone in eval mode on the run's device); the world is loaded from cfg.world
    unless given."""
    configure_threads()
    gen = seed_everything(cfg.seed)
    if world is None:
        if not cfg.world:
            raise InputError("no training data: give --world DIR (or the trainer's own data options)")
        from zscir.world import load_world

        world = load_world(cfg.world)
    device = device_for(dist, cfg.device)
    if backbone is None:
        from zscir.backbones import load_backbone

        backbone = load_backbone(cfg.backbone, str(device))
    elif cfg.device or dist.enabled:
        backbone = backbone.to(device)
    return gen, world, backbone.eval()


class SourceData:
    """What the trainers read of a world, for a user's SOURCE (features come from the data layer's cache)."""

    meta: dict[str, Any]

    def __init__(self, spec: str) -> None:
        self.root, self.meta, self.key = spec, {}, spec


def world_key(world: Any) -> str:
    """What identifies the training data in the checkpoint and the resume signature."""
    if isinstance(world, SourceData):
        return json.dumps({"source": world.key})
    meta = getattr(world, "meta", {}) or {}
    return json.dumps({"root": str(getattr(world, "root", "")), "seed": meta.get("seed"), "size": meta.get("size")},
                      sort_keys=True)


def logit_scale_of(backbone: Backbone) -> float:
    ls = getattr(backbone, "logit_scale", None)
    return float(ls.detach().exp()) if isinstance(ls, torch.Tensor) else 1 / 0.07


def soft_alignment_loss(pseudo: torch.Tensor, image: torch.Tensor, captions: torch.Tensor, scale: float,
                        target_scale: float | None = None) -> torch.Tensor:
    """KL(image's similarity distribution over captions || pseudo sentence's), averaged over the batch.

    pseudo (B, D), image (B, D), captions (K, D), all L2-normalised; soft targets, not one-hot."""
    target = F.softmax((target_scale or scale) * image @ captions.T, dim=-1)
    logp = F.log_softmax(scale * pseudo @ captions.T, dim=-1)
    return F.kl_div(logp, target, reduction="batchmean")


# --- pic2word and stage 1 ---------------------------------------------------------------------------------
def train_mapper(cfg: MapperTrainConfig, backbone: Backbone | None = None, world: Any = None,
                 method: str = "") -> TrainResult:
    """Train a token mapper (pic2word when injection=False and soft_weight=0 on unlabelled images; stage 1
    otherwise, on image-caption pairs) and save it to cfg.out."""
    t0 = time.time()
    cfg.check()
    method = method or ("pic2word" if not cfg.injection and cfg.soft_weight == 0 else "two-stage/mapping-only")
    with distributed(cfg.device) as dist:
        return _train_mapper(cfg, backbone, world, method, dist, t0)


def _train_mapper(cfg: MapperTrainConfig, backbone: Backbone | None, world: Any, method: str, dist: DistInfo,
                  t0: float) -> TrainResult:
    use_pairs = cfg.soft_weight > 0 or method != "pic2word"
    spec = cfg.pairs if use_pairs else (cfg.images or cfg.pairs)
    if (cfg.images or cfg.pairs) and (cfg.world or world is not None):
        raise InputError("give either --world or your own data (--images / --pairs), not both")
    if use_pairs and cfg.images and not cfg.pairs:
        raise InputError(f"{method} trains on image-caption pairs: give --pairs SOURCE, not --images")
    if spec:
        world = SourceData(spec)
    gen, world, backbone = setup_training(cfg, backbone, world, dist)
    dev = backbone.device
    # the frozen passes in the training precision (bf16 where native under "auto"); their cache keys say so
    with autocast(dev, cfg.precision):
        if spec:
            from zscir.train.data import source_image_features

            sf = source_image_features(backbone, spec, "image_tokens", image_column=cfg.image_column,
                                       caption_column=cfg.caption_column, cache=cfg.feature_cache, need_captions=use_pairs)
            n_keep = min(len(sf.keys), cfg.max_images or len(sf.keys))
            ids = sf.keys[:n_keep]
            all_captions = [str(c) for c in sf.captions] if use_pairs else []
            captions = all_captions[:n_keep]
            local: Any = sf.rows if n_keep == len(sf.keys) else type(sf.rows)(sf.rows.feats, sf.rows.rows[:n_keep])
            world.key = f"{sf.source}|{sf.rows.feats.key.digest()}"
        elif use_pairs:
            items = list(world.pairs)
            if cfg.max_images:
                items = items[: cfg.max_images]
            ids = [p["image"] for p in items]
            all_captions = [p["caption"] for p in world.pairs]
            captions = all_captions[: len(items)]
        else:
            ids = list(world.unlabelled)[: cfg.max_images or None]
            all_captions, captions = [], []
        if len(ids) < 2:
            raise InputError(f"need at least 2 training images, the data has {len(ids)}")
        if not spec:
            universe = [p["image"] for p in world.pairs] if use_pairs else list(world.unlabelled)
            local = world_image_features(backbone, world, universe, ids, cache=cfg.feature_cache)
        pooled = pooled_rows(backbone, local)
        # the kept captions as rows of the whole list (pre-training's cache key)
        cap = frozen_text_embeddings(backbone, captions, cfg.feature_cache, within=all_captions) if captions else None

    mcfg = replace(mapper_config_for(backbone, cfg.injection, n_tokens=cfg.n_tokens, hidden=cfg.hidden),
                   dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)
    mapper = TokenMapper(mcfg).to(dev)
    mapper.init_output(backbone.word_embeddings().weight.detach().mean(0))
    scale = logit_scale_of(backbone)
    target_scale = 1 / cfg.soft_temperature if cfg.soft_temperature > 0 else scale
    bs = min(cfg.batch_size, len(ids))
    if bs % dist.world_size:
        raise InputError(f"batch size {bs} does not split over {dist.world_size} processes")
    n = len(ids)
    # epoch e: the (e+1)-th permutation drawn from one generator seeded with --seed (as before the engine)
    orders = EpochSequence(lambda: torch.Generator().manual_seed(cfg.seed), lambda g: torch.randperm(n, generator=g))

    def batches(epoch: int):
        order = orders(epoch)
        return [order[s : s + bs] for s in range(0, n - bs + 1, bs)]

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        v = pooled[b].to(dev)
        loc = local[b].to(dev, torch.float32) if mcfg.injection else None
        tokens = mapper(v, loc)
        p = backbone.encode_text_with_tokens([cfg.train_template] * len(b), tokens)
        loss = info_nce(p, v, scale, a_all=ctx.gather(p), b_all=ctx.gather_frozen(v), offset=ctx.offset)
        if cfg.soft_weight > 0 and cap is not None:  # the global batch's captions (frozen: every rank has them)
            loss = loss + cfg.soft_weight * soft_alignment_loss(p, v, cap[ctx.global_batch].to(dev), scale,
                                                                target_scale)
        return loss

    sig = {**config_signature(cfg), "method": method, "data": ids_digest(world, ids)}
    task = Task(f"train {method}", mapper, batches, loss_fn, steps_per_epoch=n // bs, signature=sig)
    fit_res = fit(task, engine_config(cfg), dist)
    final = fit_res.final_loss
    if dist.is_main:
        save_mapper(cfg.out, mapper.cpu(), backbone.fingerprint(),
                    config={"method": method, "template": cfg.template, "train": asdict(cfg)},
                    trained_on={"world": world_key(world), "images": len(ids)}, final_loss=final,
                    steps=fit_res.steps)
    finish(engine_config(cfg), dist)
    secs = time.time() - t0
    if dist.is_main:
        log.info("trained %s mapper on %d images, %d steps, loss %.3f -> %s (%.0f s)", method, len(ids),
                 fit_res.steps, final, cfg.out, secs)
    return TrainResult(Path(cfg.out), fit_res.steps, secs, final,
                       {"images": len(ids), "method": method, "items_per_s": fit_res.items_per_s})


def ids_digest(world: Any, ids: Sequence[str]) -> str:
    h = hashlib.sha256(world_key(world).encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()[:16]


def pic2word_config(**kw: Any) -> MapperTrainConfig:
    """Pic2Word defaults: MLP mapper, contrastive only, unlabelled images."""
    return MapperTrainConfig(**{"injection": False, "soft_weight": 0.0, **kw})


def mapping_config(**kw: Any) -> MapperTrainConfig:
    """Two-stage stage-1 defaults: injection + soft text alignment, image-caption pairs."""
    return MapperTrainConfig(**{"injection": True, "soft_weight": 1.0, **kw})


def train_pic2word(cfg: MapperTrainConfig, backbone: Backbone | None = None, world: Any = None) -> TrainResult:
    return train_mapper(cfg, backbone, world, method="pic2word")


def train_mapping(cfg: MapperTrainConfig, backbone: Backbone | None = None, world: Any = None) -> TrainResult:
    return train_mapper(cfg, backbone, world, method="two-stage/mapping-only")


# --- CLI ------------------------------------------------------------------------------------------------
def _mapper_args(defaults: MapperTrainConfig):
    def add(p: argparse.ArgumentParser) -> None:
        add_backbone_arg(p, defaults.backbone)
        add_engine_args(p, lr=defaults.lr, batch_size=defaults.batch_size, steps=defaults.steps,
                        weight_decay=defaults.weight_decay, warmup=defaults.warmup)
        pairs_method = defaults.injection or defaults.soft_weight > 0
        add_source_args(p, images=not pairs_method, pairs=pairs_method)
        # pic2word: no --injection / --soft-weight (they are what makes it pic2word); stage 1: --no-injection
        add_config_args(p, defaults, skip=("images", "pairs") + (() if pairs_method else ("injection", "soft_weight")))

    return add


def _mapper_cfg(args: argparse.Namespace, base: MapperTrainConfig) -> MapperTrainConfig:
    cfg: MapperTrainConfig = config_from_args(base, args, **engine_args(args, min_batch=2), **source_args(args))
    return cfg


def _run_pic2word(args: argparse.Namespace) -> int:
    res = train_pic2word(_mapper_cfg(args, pic2word_config()))
    if is_main_process():
        print(f"saved {res.path}: pic2word mapper, {res.steps} steps, final loss {res.final_loss:.3f}, {res.seconds:.0f} s")
    return 0


def _run_mapping(args: argparse.Namespace) -> int:
    res = train_mapping(_mapper_cfg(args, mapping_config()))
    if is_main_process():
        print(f"saved {res.path}: stage-1 mapper, {res.steps} steps, final loss {res.final_loss:.3f}, {res.seconds:.0f} s")
    return 0


def register_trainers() -> None:
    from zscir.train.cli import register_trainer

    register_trainer("pic2word", _mapper_args(pic2word_config()), _run_pic2word,
                     help="Pic2Word-style single-token mapper on unlabelled images (towers frozen)")
    register_trainer("mapping", _mapper_args(mapping_config()), _run_mapping,
                     help="two-stage, stage 1: injection mapper with soft text alignment on image-caption pairs")


register_trainers()

#: stage 2 moved to zscir.train.composing; these names stay importable from here
_STAGE2 = ("ComposingConfig", "train_composing", "select_triplets", "grouped_batches")


def __getattr__(name: str) -> Any:
    if name in _STAGE2:
        from zscir.train import composing

        return getattr(composing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
