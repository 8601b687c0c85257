"""`zscir train isa`: train ISA's query side on unlabelled images only.

Frozen-tower outputs are computed once, into the shared on-disk feature cache (memory-mapped; read batch by
batch): the large tower's local features (B, L, C) and, for the asymmetric variant, the preprocessed pixels the
light encoder reads; the large tower's embedding of each image (the gallery-side target) is pooled from the
cached features per batch. Then:

1. (asymmetric only) a cheap warm-up distils the light CNN from the large tower: each light feature-map
   cell, through a linear probe, is pulled to the large tower's feature at the same cell (cosine).
2. The token learner (and, at a lower rate, the light CNN) trains with
   - global contrastive distillation: the query side's sentence `a photo of $` (the `$` = the M learned
     tokens) through the frozen text tower vs the large tower's embedding of the same image, InfoNCE with
     in-batch negatives (weight `w_global`);
   - local alignment: each token, through a linear probe, matches the large tower's local features pooled
     under that token's attention map (cosine; weight `w_local`).
The symmetric variant runs step 2 on the large tower's own features."""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zscir.backbones.base import Backbone
from zscir.data.sources import Source
from zscir.errors import InputError
from zscir.methods.isa import ISA, ISASymmetric, align_cells, isa_config_for
from zscir.objectives import info_nce
from zscir.train.data import FeatureRows, LazyRows, frozen_embeddings
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
    EngineSettings,
    StepContext,
    Task,
    add_engine_args,
    check_batch_size,
    check_out_dir,
    check_positive_lr,
    config_signature,
    distributed,
    engine_args,
    engine_config,
    finish,
    fit,
    is_main_process,
    param_groups,
    partial_dir,
)
from zscir.utils.cli import add_backbone_arg, add_config_args, config_from_args, option
from zscir.utils.runtime import autocast, configure_threads, pick_device, seed_everything

log = logging.getLogger(__name__)

TRAIN_TEMPLATE = "a photo of $"


@dataclass
class ISATrainConfig(EngineSettings):
    """Settings of ISA training (reproducible from these + the world + the backbone)."""

    world: str = option("", "a world folder made by `zscir world` (its unlabelled images are used)")
    out: str = ""
    # a SOURCE of unlabelled images (zscir.data) instead of the world's
    images: str = option("", "your unlabelled images: a folder, a glob, a CSV/TSV/JSONL listing or WebDataset shards",
                         metavar="SOURCE")
    image_column: str = option("", "listing column holding the image path (default: guessed)")
    feature_cache: str = option("", "frozen-feature cache folder (default: $ZSCIR_HOME/cache/features)", metavar="DIR")
    backbone: str = "default"
    mode: str = option("asymmetric", "asymmetric: light query CNN (default); symmetric: token learner on the large tower",
                       choices=("asymmetric", "symmetric"))
    n_tokens: int = option(4, "M, pseudo tokens per image (default: %(default)s)", flag="--tokens")
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    light_lr: float = option(3e-4)
    distill_epochs: int = option(40)  # light-encoder warm-up epochs (cheap: no text tower)
    distill_lr: float = option(3e-3)
    w_global: float = option(1.0, "global contrastive distillation weight")
    w_local: float = option(0.5, "local alignment regularisation weight")
    temperature: float = option(0.05)
    max_images: int = option(0)  # 0 = every unlabelled image
    seed: int = 0
    device: str = ""
    # the engine's shared settings (see zscir.train.engine)
    epochs: float = 0.0  # > 0 and steps == 0: passes over the images instead of a step count
    weight_decay: float = 1e-4
    warmup: float = 0.1

    def check(self) -> None:
        """Refuse impossible settings and an --out that would be destroyed, before any work."""
        from zscir.methods.isa import KIND

        if self.n_tokens < 1:
            raise InputError(f"--tokens must be at least 1, got {self.n_tokens}")
        if self.w_global < 0 or self.w_local < 0:
            raise InputError("loss weights must be non-negative")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        check_batch_size(self.batch_size, 2)
        for lr, what in ((self.light_lr, "--light-lr"), (self.distill_lr, "--distill-lr")):
            check_positive_lr(lr, what)
        if self.distill_epochs < 0:
            raise InputError(f"--distill-epochs must be >= 0, got {self.distill_epochs}")
        engine_config(self).check()
        check_out_dir(self.out, KIND)


@dataclass
class ISATrainResult:
    path: Path
    final_loss: float
    final_global: float
    final_local: float
    images: int
    seconds: float


def _identity(pixels: torch.Tensor) -> torch.Tensor:
    return pixels


def isa_inputs(backbone: Backbone, source: Source, cfg: ISATrainConfig, keep_pixels: bool) -> tuple[Any, Any, list[str]]:
    """(local features rows (N, L, C), pixel rows (N, 3, H, W) or None, keys), memory-mapped from the shared
    feature cache (computed once per backbone trunk and source: the two ISA variants, an M sweep and pic2word
    on the same images share the large tower's pass). Rows are in key order, the first `cfg.max_images`."""
    from zscir.data import image_features

    cache = cfg.feature_cache or None
    feats = image_features(backbone, source, "image_tokens", cache=cache)
    # key order: an entry built by several processes lists its rows in another order than one process's
    keep = sorted(range(len(feats)), key=lambda i: feats.keys[i])[: cfg.max_images or None]
    if len(keep) < 2:
        raise InputError(f"ISA training needs at least 2 readable images, the data has {len(keep)}")
    keys = [feats.keys[i] for i in keep]
    pixels = None
    if keep_pixels:
        pix = image_features(backbone, source, "pixels", cache=cache, fn=_identity, dtype=torch.float16)
        pos = {k: i for i, k in enumerate(pix.keys)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise InputError(f"{source}: {len(missing)} image(s) decoded for the features but not for the pixels "
                             f"(e.g. {missing[0]}): did the files change during training?")
        pixels = FeatureRows(pix, [pos[k] for k in keys])
    return FeatureRows(feats, keep), pixels, keys


def distill_light(method: ISA, pixels: torch.Tensor, feats: torch.Tensor | FeatureRows | LazyRows,
                  embs: torch.Tensor | LazyRows | FeatureRows, cfg: ISATrainConfig,
                  gen: torch.Generator | None, device: torch.device, dist: DistInfo | None = None) -> float:
    """Warm up the light CNN (no text tower, cheap): per-cell cosine to the large tower's local features and
    pooled cosine to its embedding, each through a linear probe. Runs on the engine (phase `isa light distill`,
    resumable from OUT.distill.partial)."""
    assert method.light is not None
    light_net = method.light
    dist = dist or DistInfo(device=device)
    probe = nn.Linear(method.light.out_dim, feats.shape[-1]).to(device)
    # and the pooled light map, through a second probe, to the large tower's embedding of the image
    emb_probe = nn.Linear(method.light.out_dim, embs.shape[-1]).to(device)
    module = nn.ModuleDict({"light": method.light, "probe": probe, "emb_probe": emb_probe})
    n = len(pixels)
    bs = min(cfg.batch_size * 2, n)
    bs -= bs % dist.world_size
    steps = max(1, cfg.distill_epochs * (n // bs))

    def batches(epoch: int):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17 * epoch + 1)
        perm = torch.randperm(n, generator=g)
        return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x = pixels[b].to(device, torch.float32)
        target = F.normalize(feats[b].to(device, torch.float32), dim=-1)
        light = light_net(x)
        pred = F.normalize(probe(light).float(), dim=-1)
        emb = F.normalize(emb_probe(light.mean(dim=1)).float(), dim=-1)
        return (1 - (pred * target).sum(-1)).mean() + (1 - (emb * embs[b].to(device)).sum(-1)).mean()

    ecfg = engine_config(cfg, steps=steps, lr=cfg.distill_lr, out=cfg.out + ".distill" if cfg.out else "")
    task = Task("isa light distill", module, batches, loss_fn, steps_per_epoch=n // bs,
                signature={**config_signature(cfg), "phase": "distill", "images": n})
    res = fit(task, ecfg, dist)
    finish(ecfg, dist)
    return res.losses[-1] if res.losses else float("nan")


def isa_losses(method: ISA, inputs: torch.Tensor, feats: torch.Tensor, target: torch.Tensor, probe: nn.Module,
               cfg: ISATrainConfig, tok_texts: list[str],
               ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(global contrastive distillation loss, local alignment loss) for one batch.

    inputs: what the query side reads (pixels for asymmetric, large local features for symmetric);
    feats: the large tower's local features (B, L, C); target: its normalised embeddings (B, D)."""
    qfeat = method.light(inputs) if method.light is not None else inputs
    tokens, attn = method.learner(qfeat)
    sent = method.text_encoder.encode_text_with_tokens(tok_texts, tokens)
    if ctx is not None and ctx.dist.enabled:  # the global batch's negatives (exact under torchrun)
        g = info_nce(sent, target, 1.0 / cfg.temperature, a_all=ctx.gather(sent), b_all=ctx.gather_frozen(target),
                     offset=ctx.offset)
    else:
        g = info_nce(sent, target, 1.0 / cfg.temperature)
    pooled = F.normalize(attn.float() @ F.normalize(feats, dim=-1), dim=-1)  # (B, M, C): large features under each map
    local = (1 - (F.normalize(probe(tokens).float(), dim=-1) * pooled).sum(-1)).mean()
    return g, local


def train_isa_on_paths(backbone: Backbone, paths: Sequence[Path | str], cfg: ISATrainConfig,
                       **meta: object) -> tuple[ISA, ISATrainResult]:
    """Train an ISA query side on the images at `paths` (no labels used) and save it to `cfg.out`."""
    if not paths:
        raise InputError("ISA training needs unlabelled images; none were given")
    from zscir.data import PathsSource

    return train_isa_on_source(backbone, PathsSource(paths), cfg, **meta)


def train_isa_on_source(backbone: Backbone, source: Source, cfg: ISATrainConfig,
                        **meta: object) -> tuple[ISA, ISATrainResult]:
    """Train an ISA query side on the images of a data-layer source (no labels used); save it to `cfg.out`."""
    t0 = time.time()
    cfg.check()
    gen = seed_everything(cfg.seed)
    # the backbone stays frozen (and in eval mode: no dropout in the text tower) while ISA trains
    frozen = [p for p in backbone.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with distributed(cfg.device) as dist:
            if dist.enabled:
                backbone = backbone.to(dist.device)
            return _train(backbone, source, cfg, gen, backbone.device, t0, meta, dist)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _train(backbone: Backbone, source: Source, cfg: ISATrainConfig, gen: torch.Generator,
           device: torch.device, t0: float, meta: dict, dist: DistInfo) -> tuple[ISA, ISATrainResult]:
    icfg = isa_config_for(backbone, cfg.mode, cfg.n_tokens)
    torch.manual_seed(cfg.seed)
    method = (ISA if cfg.mode == "asymmetric" else ISASymmetric)(backbone, icfg)
    # the frozen passes in the training precision (bf16 where native under "auto"); their cache keys say so
    with autocast(device, cfg.precision):
        feats, pixels, keys = isa_inputs(backbone, source, cfg, keep_pixels=method.light is not None)
        embs = frozen_embeddings(backbone, feats, cfg.feature_cache)  # the gallery-side target
    # the light encoder's grid may differ from the large tower's tokens (a ViT: CLS + patches of any size):
    # the per-cell targets are the large features pooled onto the light grid (identity when they match)
    local: Any = feats
    if method.light is not None and feats.shape[1] != icfg.n_cells:
        local = LazyRows(feats, lambda x: align_cells(x, icfg.n_cells), (icfg.n_cells, feats.shape[-1]))
    n = len(feats)
    bs = min(cfg.batch_size, n)
    if bs % dist.world_size:
        raise InputError(f"batch size {bs} does not split over {dist.world_size} processes")
    probe = nn.Linear(icfg.word_dim, feats.shape[-1]).to(device)
    main_state = partial_dir(cfg.out) / "state.pt" if cfg.out else None
    distill = float("nan")
    if method.light is not None and cfg.distill_epochs > 0 and not (main_state and main_state.is_file()):
        # (a resumable state of the main phase holds the distilled light encoder already)
        distill = distill_light(method, pixels, local, embs, cfg, gen, device, dist)

    module = nn.ModuleDict({"learner": method.learner, "probe": probe})
    groups = param_groups(module, cfg.weight_decay)
    if method.light is not None:
        module["light"] = method.light
        groups += [{**g, "lr_scale": cfg.light_lr / cfg.lr} for g in param_groups(method.light, cfg.weight_decay)]
    texts = [TRAIN_TEMPLATE] * bs

    def batches(epoch: int):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17 * epoch)
        perm = torch.randperm(n, generator=g)
        return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]

    last: dict[str, torch.Tensor] = {}

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        f = local[b].to(device, torch.float32)
        x = pixels[b].to(device, torch.float32) if pixels is not None else f
        g_loss, l_loss = isa_losses(method, x, f, embs[b].to(device), probe, cfg, texts[: len(b)], ctx)
        last["global"], last["local"] = g_loss.detach(), l_loss.detach()
        return cfg.w_global * g_loss + cfg.w_local * l_loss

    def train_mode() -> None:
        method.train()
        backbone.eval()

    ecfg = engine_config(cfg)
    task = Task(f"isa train ({cfg.mode}, M={cfg.n_tokens})", module, batches, loss_fn, steps_per_epoch=n // bs,
                param_groups=groups, train_mode=train_mode,
                signature={**config_signature(cfg), "images": n, "data": _keys_digest(source, keys)})
    fit(task, ecfg, dist)
    method.eval()
    seconds = time.time() - t0
    g_loss, l_loss = float(dist.mean(float(last["global"]))), float(dist.mean(float(last["local"])))
    result = ISATrainResult(Path(cfg.out), cfg.w_global * g_loss + cfg.w_local * l_loss, g_loss, l_loss, n, seconds)
    if dist.is_main:
        method.save(cfg.out, train=asdict(cfg), trained_on=meta,
                    losses={"global": result.final_global, "local": result.final_local,
                            "distill": None if math.isnan(distill) else distill},
                    seconds=round(seconds, 1))
        log.info("ISA (%s, M=%d) trained on %d unlabelled images in %.0f s -> %s (global %.3f, local %.3f)",
                 cfg.mode, cfg.n_tokens, n, seconds, cfg.out, result.final_global, result.final_local)
    finish(ecfg, dist)
    return method, result


def _keys_digest(source: Source, keys: Sequence[str]) -> str:
    import hashlib

    h = hashlib.sha256(source.fingerprint().encode())
    h.update("\n".join(keys).encode())
    return h.hexdigest()[:16]


def train_isa(cfg: ISATrainConfig, backbone: Backbone | None = None, world=None) -> tuple[ISA, ISATrainResult]:
    """Train on `cfg.world`'s unlabelled images (the only images ISA may learn from)."""
    from zscir.world import load_world

    configure_threads()
    cfg.check()
    if cfg.images and (world is not None or cfg.world):
        raise InputError("give either --world or --images SOURCE, not both")
    if world is None and not cfg.world and not cfg.images:
        raise InputError("no training images: give --images SOURCE or --world DIR")
    if backbone is None:
        from zscir.backbones import load_backbone

        backbone = load_backbone(cfg.backbone).to(pick_device(cfg.device or None))
    from zscir.data import PathsSource
    from zscir.train.data import open_training_source

    if cfg.images:
        return train_isa_on_source(backbone, open_training_source(cfg.images, cfg.image_column), cfg,
                                   images=cfg.images)
    world = world if world is not None else load_world(cfg.world)
    ids = list(world.unlabelled)
    # the same source (paths, keys) as the pseudo-token trainers' unlabelled images: one cached trunk pass
    src = PathsSource([world.image_path(i) for i in ids], keys=ids, spec=str(world.root))
    return train_isa_on_source(backbone, src, cfg, world=str(cfg.world), world_seed=world.meta.get("seed"),
                               world_size=world.meta.get("size"))


def add_args(p: argparse.ArgumentParser) -> None:
    d = ISATrainConfig()
    add_backbone_arg(p, d.backbone)
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, steps=d.steps, weight_decay=d.weight_decay, warmup=d.warmup)
    add_config_args(p, ISATrainConfig)


def run(args: argparse.Namespace) -> int:
    cfg: ISATrainConfig = config_from_args(ISATrainConfig, args, **engine_args(args, min_batch=2))
    cfg.check()
    _, res = train_isa(cfg)
    if is_main_process():
        print(f"saved {res.path}: {res.images} unlabelled images, global loss {res.final_global:.3f}, "
              f"local loss {res.final_local:.3f}, {res.seconds:.0f} s")
    return 0


def register_isa_trainer() -> None:
    from zscir.train.cli import register_trainer

    register_trainer("isa", add_args, run,
                     help="ISA: adaptive token learner + light query encoder, on unlabelled images")


register_isa_trainer()
