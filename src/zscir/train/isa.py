"""`zscir train isa`: train ISA's query side on unlabelled images only.

Frozen-tower outputs are computed once: the large tower's local features (B, L, C) and its embedding of each
image (the gallery-side target), and, for the asymmetric variant, the preprocessed pixels the light encoder
reads. Then:

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zscir.backbones.base import Backbone
from zscir.errors import InputError
from zscir.data.stream import iter_pixel_batches
from zscir.methods.isa import ISA, ISASymmetric, align_cells, isa_config_for, load_isa
from zscir.objectives import info_nce
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
    StepContext, Task, add_engine_args, check_batch_size, check_out_dir, check_positive_lr, config_signature,
    distributed, engine_args, engine_config, finish, fit, is_main_process, param_groups, partial_dir,
)
from zscir.utils.runtime import configure_threads, pick_device, seed_everything

log = logging.getLogger(__name__)

TRAIN_TEMPLATE = "a photo of $"
# the last cache_inputs result, keyed by (backbone fingerprint, device, image paths)
_CACHE: dict[str, object] = {}


@dataclass
class ISATrainConfig:
    """Settings of ISA training (reproducible from these + the world + the backbone)."""

    world: str = ""
    out: str = ""
    images: str = ""  # a SOURCE of unlabelled images (zscir.data) instead of the world's
    image_column: str = ""
    backbone: str = "default"
    mode: str = "asymmetric"
    n_tokens: int = 4
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    light_lr: float = 3e-4
    distill_epochs: int = 40  # light-encoder warm-up epochs (cheap: no text tower)
    distill_lr: float = 3e-3
    w_global: float = 1.0
    w_local: float = 0.5
    temperature: float = 0.05
    max_images: int = 0  # 0 = every unlabelled image
    seed: int = 0
    device: str = ""
    # the engine's shared settings (see zscir.train.engine)
    epochs: float = 0.0  # > 0 and steps == 0: passes over the images instead of a step count
    weight_decay: float = 1e-4
    warmup: float = 0.1
    grad_clip: float = 0.0
    precision: str = "fp32"
    save_every: int = 0
    resume: bool = False
    progress: bool = True


@dataclass
class ISATrainResult:
    path: Path
    final_loss: float
    final_global: float
    final_local: float
    images: int
    seconds: float


@torch.inference_mode()
def cache_inputs(backbone: Backbone, paths: Sequence[Path | str], keep_pixels: bool, batch_size: int = 64):
    """(local features (N, L, C) fp16, gallery embeddings (N, D) fp32, pixels (N, 3, H, W) fp16 or None)."""
    feats, embs, pix = [], [], []
    for px in tqdm(iter_pixel_batches(paths, backbone.preprocess_config, batch_size), desc="isa cache",
                   total=(len(paths) + batch_size - 1) // batch_size, leave=False):
        px = px.to(backbone.device)
        tok = backbone.image_tokens(px)
        feats.append(tok.to("cpu", torch.float16))
        embs.append(F.normalize(backbone.image_head(tok), dim=-1).float().cpu())
        if keep_pixels:
            pix.append(px.to("cpu", torch.float16))
    return torch.cat(feats), torch.cat(embs), (torch.cat(pix) if keep_pixels else None)


def distill_light(method: ISA, pixels: torch.Tensor, feats: torch.Tensor, embs: torch.Tensor, cfg: ISATrainConfig,
                  gen: torch.Generator | None, device: torch.device, dist: DistInfo | None = None) -> float:
    """Warm up the light CNN (no text tower, cheap): per-cell cosine to the large tower's local features and
    pooled cosine to its embedding, each through a linear probe. Runs on the engine (phase `isa light distill`,
    resumable from OUT.distill.partial)."""
    assert method.light is not None
    dist = dist or DistInfo(device=device)
    probe = nn.Linear(method.light.out_dim, feats.shape[-1]).to(device)
    # and the pooled light map, through a second probe, to the large tower's embedding of the image
    emb_probe = nn.Linear(method.light.out_dim, embs.shape[-1]).to(device)
    module = nn.ModuleDict({"light": method.light, "probe": probe, "emb_probe": emb_probe})
    n = len(pixels)
    bs = min(cfg.batch_size * 2, n)
    bs -= bs % dist.world
    steps = max(1, cfg.distill_epochs * (n // bs))

    def batches(epoch: int):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17 * epoch + 1)
        perm = torch.randperm(n, generator=g)
        return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x = pixels[b].to(device, torch.float32)
        target = F.normalize(feats[b].to(device, torch.float32), dim=-1)
        light = method.light(x)
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
    t0 = time.time()
    if not paths:
        raise InputError("ISA training needs unlabelled images; none were given")
    _check(cfg)
    gen = seed_everything(cfg.seed)
    # the backbone stays frozen (and in eval mode: no dropout in the text tower) while ISA trains
    frozen = [p for p in backbone.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with distributed(cfg.device) as dist:
            if dist.enabled:
                backbone = backbone.to(dist.device)
            return _train(backbone, paths, cfg, gen, backbone.device, t0, meta, dist)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _check(cfg: ISATrainConfig) -> None:
    """Refuse impossible settings and an --out that would be destroyed, before any work."""
    from zscir.methods.isa import KIND

    if cfg.n_tokens < 1:
        raise InputError(f"--tokens must be at least 1, got {cfg.n_tokens}")
    if cfg.w_global < 0 or cfg.w_local < 0:
        raise InputError("loss weights must be non-negative")
    if cfg.temperature <= 0:
        raise InputError(f"temperature must be > 0, got {cfg.temperature}")
    check_batch_size(cfg.batch_size, 2)
    for lr, what in ((cfg.light_lr, "--light-lr"), (cfg.distill_lr, "--distill-lr")):
        check_positive_lr(lr, what)
    if cfg.distill_epochs < 0:
        raise InputError(f"--distill-epochs must be >= 0, got {cfg.distill_epochs}")
    engine_config(cfg).check()
    check_out_dir(cfg.out, KIND)


def _train(backbone: Backbone, paths: Sequence[Path | str], cfg: ISATrainConfig, gen: torch.Generator,
           device: torch.device, t0: float, meta: dict, dist: DistInfo) -> tuple[ISA, ISATrainResult]:
    if cfg.max_images:
        paths = list(paths)[: cfg.max_images]
    icfg = isa_config_for(backbone, cfg.mode, cfg.n_tokens)
    torch.manual_seed(cfg.seed)
    method = (ISA if cfg.mode == "asymmetric" else ISASymmetric)(backbone, icfg)
    key = (backbone.fingerprint(), str(device), tuple(str(p) for p in paths))
    if _CACHE.get("key") != key:  # the two variants (and an M sweep) share one pass of the large tower
        _CACHE.clear()
        _CACHE["key"], _CACHE["tensors"] = key, cache_inputs(backbone, paths, keep_pixels=True)
    feats, embs, pixels = _CACHE["tensors"]
    if cfg.mode != "asymmetric":
        pixels = None
    # the light encoder's grid may differ from the large tower's tokens (a ViT: CLS + patches of any size):
    # the per-cell targets are the large features pooled onto the light grid (identity when they match)
    local = align_cells(feats, icfg.n_cells) if method.light is not None else feats
    n = len(feats)
    bs = min(cfg.batch_size, n)
    if bs % dist.world:
        raise InputError(f"batch size {bs} does not split over {dist.world} processes")
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
                signature={**config_signature(cfg), "images": n, "paths": _paths_digest(paths)})
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


def _paths_digest(paths: Sequence[Path | str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]


def train_isa(cfg: ISATrainConfig, backbone: Backbone | None = None, world=None) -> tuple[ISA, ISATrainResult]:
    """Train on `cfg.world`'s unlabelled images (the only images ISA may learn from)."""
    from zscir.world import load_world

    configure_threads()
    _check(cfg)
    if cfg.images and (world is not None or cfg.world):
        raise InputError("give either --world or --images SOURCE, not both")
    if world is None and not cfg.world and not cfg.images:
        raise InputError("no training images: give --images SOURCE or --world DIR")
    if backbone is None:
        from zscir.backbones import load_backbone

        backbone = load_backbone(cfg.backbone).to(pick_device(cfg.device or None))
    if cfg.images:
        from zscir.train.data import Location, source_locations

        locs, _ = source_locations(cfg.images, cfg.image_column)
        return train_isa_on_paths(backbone, [Location(x) for x in locs], cfg, images=cfg.images)
    world = world if world is not None else load_world(cfg.world)
    paths = [world.image_path(i) for i in world.unlabelled]
    return train_isa_on_paths(backbone, paths, cfg, world=str(cfg.world), world_seed=world.meta.get("seed"),
                              world_size=world.meta.get("size"))


def _settings(train: dict) -> dict:
    """The training settings that change the result (not where it is written or run)."""
    light_only = ("distill_epochs", "distill_lr", "light_lr") if train.get("mode") == "symmetric" else ()
    skip = ("out", "device", "world", "backbone", "progress", "save_every", "resume", *light_only)
    return {k: v for k, v in train.items() if k not in skip}


def ensure_isa(backbone: Backbone, world, path: Path, cfg: ISATrainConfig) -> ISA:
    """Load the ISA checkpoint at `path` if it fits `backbone`, else train it there."""
    from zscir.checkpoint import read_checkpoint_config
    from zscir.errors import CheckpointError

    if (path / "config.json").is_file():
        try:
            method = load_isa(path, backbone)
            recorded = read_checkpoint_config(path).get("train", {})
            if _settings(recorded) == _settings(asdict(cfg)):
                return method
            log.info("retraining ISA at %s: its training settings differ", path)
        except CheckpointError as e:
            log.info("retraining ISA: %s", e)
    cfg.out = str(path)
    method, _ = train_isa(cfg, backbone=backbone, world=world)
    return method


def add_args(p: argparse.ArgumentParser) -> None:
    d = ISATrainConfig()
    p.add_argument("--world", default="", help="a world folder made by `zscir world` (its unlabelled images are used)")
    p.add_argument("--images", default="", metavar="SOURCE",
                   help="your unlabelled images: a folder, a glob, a CSV/TSV/JSONL listing or WebDataset shards")
    p.add_argument("--image-column", default="", help="listing column holding the image path (default: guessed)")
    p.add_argument("--backbone", default=d.backbone, help="backbone spec (default: %(default)s)")
    p.add_argument("--mode", choices=("asymmetric", "symmetric"), default=d.mode,
                   help="asymmetric: light query CNN (default); symmetric: token learner on the large tower")
    p.add_argument("--tokens", type=int, default=d.n_tokens, help="M, pseudo tokens per image (default: %(default)s)")
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, steps=d.steps, weight_decay=d.weight_decay, warmup=d.warmup)
    p.add_argument("--light-lr", type=float, default=d.light_lr)
    p.add_argument("--distill-epochs", type=int, default=d.distill_epochs)
    p.add_argument("--distill-lr", type=float, default=d.distill_lr)
    p.add_argument("--w-global", type=float, default=d.w_global, help="global contrastive distillation weight")
    p.add_argument("--w-local", type=float, default=d.w_local, help="local alignment regularisation weight")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--max-images", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> ISATrainConfig:
    return ISATrainConfig(
        **engine_args(args, min_batch=2), world=args.world, images=args.images, image_column=args.image_column,
        backbone=args.backbone, mode=args.mode,
        n_tokens=args.tokens, light_lr=args.light_lr, distill_epochs=args.distill_epochs, distill_lr=args.distill_lr,
        w_global=args.w_global, w_local=args.w_local, temperature=args.temperature, max_images=args.max_images,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    _check(cfg)
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
