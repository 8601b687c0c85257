"""Training the pseudo-token methods: `zscir train pic2word`, `zscir train mapping`, `zscir train composing`.

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
- composing (two-stage, stage 2): the stage-1 mapper frozen, LoRA adapters on the text tower, trained on the
  world's `cir_train` triplets (never the evaluation sets): the composed query `a photo of $ that {mod}` must
  retrieve its target among the batch's targets *and references* (the reference is the hardest negative),
  with batches grouped so several triplets share a reference (same pseudo token, different texts).
  `fraction` keeps a share of the triplets, `noise` shuffles that share of their modification texts."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zscir.backbones.base import Backbone
from zscir.errors import InputError
from zscir.methods.mapped import TWO_STAGE_KIND
from zscir.methods.pseudo_token import DEFAULT_TEMPLATE, check_template
from zscir.methods.tuned_text import load_rtd_text_encoder, lora_text_encoder
from zscir.nn.lora import LoRAConfig, count_parameters, lora_state_dict
from zscir.nn.mappers import MAPPER_KIND, TokenMapper, load_mapper, mapper_config_for, save_mapper
from zscir.objectives import info_nce
from zscir.train.data import EpochSequence, add_source_args, pooled_rows, source_args, world_image_features
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
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
    total_steps,
)
from zscir.utils.cli import add_backbone_arg
from zscir.utils.runtime import configure_threads, seed_everything

log = logging.getLogger(__name__)

MAPPING_TEMPLATE = "a photo of $"


# --- configs ----------------------------------------------------------------------------------------------
@dataclass
class MapperTrainConfig:
    """Settings shared by `train pic2word` and `train mapping` (stage 1)."""

    world: str = ""
    out: str = ""
    backbone: str = "default"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    hidden: int = 512
    n_tokens: int = 1
    dropout: float = 0.1  # the mapper's dropout (0: under torchrun, every process then matches one process exactly)
    injection: bool = False
    soft_weight: float = 0.0  # soft text alignment (KL) weight; 0 = contrastive only
    soft_temperature: float = 0.0  # temperature of the image's target distribution; 0 = the backbone's
    train_template: str = MAPPING_TEMPLATE
    template: str = DEFAULT_TEMPLATE  # the composition template recorded for inference
    max_images: int = 0  # 0 = all
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
    precision: str = "fp32"
    grad_clip: float = 0.0
    save_every: int = 0
    resume: bool = False
    progress: bool = True


@dataclass
class ComposingConfig:
    """Settings of `train composing` (two-stage, stage 2)."""

    world: str = ""
    mapper: str = ""  # stage-1 checkpoint folder
    out: str = ""
    backbone: str = "default"
    steps: int = 150
    batch_size: int = 48
    per_reference: int = 3  # triplets sharing a reference in one batch (hard negatives)
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: float = 0.1
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    fraction: float = 1.0  # share of the world's training triplets used
    # At most this many passes over the (selected) triplets, 0 = no cap: with 1% or 10% of the triplets a
    # fixed step count means tens to hundreds of passes, and the adapters memorise them (benchmarks/
    # pseudo_token_ablations.py measures both).
    max_epochs: float = 0.0
    noise: float = 0.0  # share of the used triplets whose modification text is shuffled
    reference_negatives: bool = True
    # An RTD checkpoint (`zscir train rtd`) whose tuned text tower stage 2 starts from, instead of the
    # backbone's: how RTD plugs into two-stage (`two-stage+rtd`), so that stage 2's image-triplet tuning,
    # not RTD's caption anchor, has the last word on the text tower.
    text_init: str = ""
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    device: str = ""
    cir_triplets: str = ""  # JSONL of {reference, modification, target} image paths, instead of --world
    feature_cache: str = ""  # frozen-feature cache folder ("" = $ZSCIR_HOME/cache/features)
    epochs: float = 0.0  # > 0 and steps == 0: passes over the triplets instead of a step count
    precision: str = "fp32"
    grad_clip: float = 0.0
    save_every: int = 0
    resume: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    path: Path
    steps: int
    seconds: float
    final_loss: float
    info: dict[str, Any] = field(default_factory=dict)


# --- shared helpers ---------------------------------------------------------------------------------------
def _setup(cfg: Any, backbone: Backbone | None, world: Any, dist: DistInfo):
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


def _check_common(cfg: Any, kind: str) -> None:
    """Refuse impossible settings and an --out that would be destroyed, before any work."""
    check_out_dir(cfg.out, kind)
    check_batch_size(cfg.batch_size, 2)
    engine_config(cfg).check()


class _SourceData:
    """What the trainers read of a world, for a user's SOURCE (features come from the data layer's cache)."""

    meta: dict[str, Any]

    def __init__(self, spec: str) -> None:
        self.root, self.meta, self.key = spec, {}, spec


def _world_key(world: Any) -> str:
    if isinstance(world, _SourceData):
        return json.dumps({"source": world.key})
    meta = getattr(world, "meta", {}) or {}
    return json.dumps({"root": str(getattr(world, "root", "")), "seed": meta.get("seed"), "size": meta.get("size")},
                      sort_keys=True)


@torch.inference_mode()
def _text_embeddings(backbone: Backbone, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([backbone.encode_text(list(texts[i : i + batch])).float().cpu() for i in range(0, len(texts), batch)])


def _logit_scale(backbone: Backbone) -> float:
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
    if "$" not in cfg.train_template:
        raise InputError(f"training template {cfg.train_template!r} has no placeholder '$' for the pseudo token")
    check_template(cfg.template, "$")
    method = method or ("pic2word" if not cfg.injection and cfg.soft_weight == 0 else "two-stage/mapping-only")
    _check_common(cfg, MAPPER_KIND)
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
        world = _SourceData(spec)
    gen, world, backbone = _setup(cfg, backbone, world, dist)
    dev = backbone.device
    if spec:
        from zscir.train.data import source_image_features

        sf = source_image_features(backbone, spec, "image_tokens", image_column=cfg.image_column,
                                   caption_column=cfg.caption_column, cache=cfg.feature_cache, need_captions=use_pairs)
        n_keep = min(len(sf.keys), cfg.max_images or len(sf.keys))
        ids = sf.keys[:n_keep]
        captions = [str(c) for c in sf.captions[:n_keep]] if use_pairs else []
        local: Any = sf.rows if n_keep == len(sf.keys) else type(sf.rows)(sf.rows.feats, sf.rows.rows[:n_keep])
        world.key = f"{sf.source}|{sf.rows.feats.key.digest()}"
    elif use_pairs:
        items = list(world.pairs)
        if cfg.max_images:
            items = items[: cfg.max_images]
        ids = [p["image"] for p in items]
        captions = [p["caption"] for p in items]
    else:
        ids = list(world.unlabelled)[: cfg.max_images or None]
        captions = []
    if len(ids) < 2:
        raise InputError(f"need at least 2 training images, the data has {len(ids)}")
    if not spec:
        universe = [p["image"] for p in world.pairs] if use_pairs else list(world.unlabelled)
        local = world_image_features(backbone, world, universe, ids, cache=cfg.feature_cache)
    pooled = pooled_rows(backbone, local)
    cap = _text_embeddings(backbone, captions) if captions else None

    mcfg = replace(mapper_config_for(backbone, cfg.injection, n_tokens=cfg.n_tokens, hidden=cfg.hidden),
                   dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)
    mapper = TokenMapper(mcfg).to(dev)
    mapper.init_output(backbone.word_embeddings().weight.detach().mean(0))
    scale = _logit_scale(backbone)
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

    sig = {**config_signature(cfg), "method": method, "data": _ids_digest(world, ids)}
    task = Task(f"train {method}", mapper, batches, loss_fn, steps_per_epoch=n // bs, signature=sig)
    fit_res = fit(task, engine_config(cfg), dist)
    final = fit_res.final_loss
    if dist.is_main:
        save_mapper(cfg.out, mapper.cpu(), backbone.fingerprint(),
                    config={"method": method, "template": cfg.template, "train": asdict(cfg)},
                    trained_on={"world": _world_key(world), "images": len(ids)}, final_loss=final,
                    steps=fit_res.steps)
    finish(engine_config(cfg), dist)
    secs = time.time() - t0
    if dist.is_main:
        log.info("trained %s mapper on %d images, %d steps, loss %.3f -> %s (%.0f s)", method, len(ids),
                 fit_res.steps, final, cfg.out, secs)
    return TrainResult(Path(cfg.out), fit_res.steps, secs, final,
                       {"images": len(ids), "method": method, "items_per_s": fit_res.items_per_s})


def _ids_digest(world: Any, ids: Sequence[str]) -> str:
    h = hashlib.sha256(_world_key(world).encode())
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


# --- stage 2 ----------------------------------------------------------------------------------------------
def select_triplets(triplets: Sequence[dict], fraction: float, noise: float, gen: torch.Generator) -> list[dict]:
    """A seeded `fraction` of the triplets; then `noise` of them get another triplet's modification text."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    if not 0 <= noise <= 1:
        raise InputError(f"noise must be in [0, 1], got {noise}")
    n = max(2, round(len(triplets) * fraction))
    if len(triplets) < 2:
        raise InputError(f"need at least 2 training triplets, got {len(triplets)}")
    keep = torch.randperm(len(triplets), generator=gen)[: min(n, len(triplets))].tolist()
    out = [dict(triplets[i]) for i in keep]
    k = round(len(out) * noise)
    if k >= 2:
        victims = torch.randperm(len(out), generator=gen)[:k].tolist()
        mods = [out[i]["modification"] for i in victims]
        shift = int(torch.randint(1, k, (1,), generator=gen).item())  # a derangement: every victim changes text
        for j, i in enumerate(victims):
            out[i]["modification"] = mods[(j + shift) % k]
    return out


def grouped_batches(refs: Sequence[str], batch_size: int, per_reference: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches in which triplets sharing a reference sit together (up to per_reference)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        groups.setdefault(r, []).append(i)
    chunks: list[list[int]] = []
    for members in groups.values():
        perm = [members[j] for j in torch.randperm(len(members), generator=gen).tolist()]
        chunks += [perm[k : k + max(1, per_reference)] for k in range(0, len(perm), max(1, per_reference))]
    chunks = [chunks[j] for j in torch.randperm(len(chunks), generator=gen).tolist()]
    batches, cur = [], []
    for c in chunks:
        cur += c
        if len(cur) >= batch_size:
            batches.append(cur[:batch_size])
            cur = cur[batch_size:]
    if len(cur) >= 2:
        batches.append(cur)
    return batches


def train_composing(cfg: ComposingConfig, backbone: Backbone | None = None, world: Any = None) -> TrainResult:
    """Stage 2: LoRA on the text tower over the world's CIR training triplets; the stage-1 mapper frozen."""
    t0 = time.time()
    check_template(cfg.template, "$")
    _check_common(cfg, TWO_STAGE_KIND)
    if not cfg.mapper:
        raise InputError("stage 2 needs the stage-1 mapper checkpoint (--mapper)")
    with distributed(cfg.device) as dist:
        return _train_composing(cfg, backbone, world, dist, t0)


def _train_composing(cfg: ComposingConfig, backbone: Backbone | None, world: Any, dist: DistInfo,
                     t0: float) -> TrainResult:
    if cfg.cir_triplets and (cfg.world or world is not None):
        raise InputError("give either --world or --cir-triplets, not both")
    if cfg.cir_triplets:
        from zscir.data import read_cir_triplets

        world = _SourceData(cfg.cir_triplets)
        world.cir_train = [{"reference": t.reference, "modification": t.modification, "target": t.target}
                           for t in read_cir_triplets(cfg.cir_triplets)]
    gen, world, backbone = _setup(cfg, backbone, world, dist)
    mapper, _ = load_mapper(cfg.mapper, backbone.fingerprint(), kind=("zscir.token-mapper", TWO_STAGE_KIND))
    dev = backbone.device
    mapper = mapper.to(dev).eval()
    triplets = select_triplets(list(world.cir_train), cfg.fraction, cfg.noise, gen)
    after_select = gen.get_state()
    image_ids = sorted({t["reference"] for t in triplets} | {t["target"] for t in triplets})
    if cfg.cir_triplets:
        from zscir.data import PathsSource, image_features
        from zscir.train.data import FeatureRows

        feats = image_features(backbone, PathsSource(image_ids, keys=image_ids, spec=cfg.cir_triplets),
                               "image_tokens", cache=cfg.feature_cache or None)
        pos = {k: i for i, k in enumerate(feats.keys)}
        unreadable = [i for i in image_ids if i not in pos]
        if unreadable:  # the data layer reported them; their triplets cannot be used
            triplets = [t for t in triplets if t["reference"] in pos and t["target"] in pos]
            log.warning("%d triplet images unreadable (e.g. %s); %d triplets left", len(unreadable), unreadable[0],
                        len(triplets))
            if len(triplets) < 2:
                raise InputError(f"{cfg.cir_triplets}: fewer than 2 triplets with readable images")
            image_ids = sorted({t["reference"] for t in triplets} | {t["target"] for t in triplets})
        local: Any = FeatureRows(feats, [pos[i] for i in image_ids])
        world.key = f"{cfg.cir_triplets}|{feats.key.digest()}"
    else:
        universe = sorted({t["reference"] for t in world.cir_train} | {t["target"] for t in world.cir_train})
        local = world_image_features(backbone, world, universe, image_ids, cache=cfg.feature_cache)
    col = {i: k for k, i in enumerate(image_ids)}
    pooled = pooled_rows(backbone, local)
    ref_idx = torch.tensor([col[t["reference"]] for t in triplets])
    tgt_idx = torch.tensor([col[t["target"]] for t in triplets])
    with torch.inference_mode():  # the mapper is frozen: every reference's pseudo token is computed once
        uniq = ref_idx.unique()
        toks = torch.zeros(len(image_ids), mapper.cfg.n_tokens, mapper.cfg.word_dim)
        for i in range(0, len(uniq), 256):
            u = uniq[i : i + 256]
            loc = local[u].to(dev, torch.float32) if mapper.uses_local else None
            toks[u] = mapper(pooled[u].to(dev), loc).float().cpu()

    lcfg = LoRAConfig(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout)
    start, text_init = backbone, None
    if cfg.text_init:
        start = load_rtd_text_encoder(cfg.text_init, backbone)
        text_init = {"path": str(cfg.text_init), "fingerprint": start.tuning("rtd")["fingerprint"]}
    enc, wrapped = lora_text_encoder(start, lcfg)
    trainable, total = count_parameters(enc.text_tower)
    batch = min(cfg.batch_size, len(triplets))
    if batch < dist.world_size:
        raise InputError(f"batch size {batch} is too small for {dist.world_size} processes")
    scale = _logit_scale(backbone)
    mods = [t["modification"] for t in triplets]
    refs = [t["reference"] for t in triplets]

    def make_gen() -> torch.Generator:
        g = torch.Generator()
        g.set_state(after_select)
        return g

    # epoch e: the (e+1)-th grouping drawn after the triplet selection, consumed last batch first (as before)
    groupings = EpochSequence(make_gen, lambda g: grouped_batches(refs, batch, cfg.per_reference, g)[::-1])

    def batches(epoch: int):
        return [torch.tensor(b) for b in groupings(epoch)]

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        prompts = [cfg.template.replace("{text}", mods[i].strip()) for i in b.tolist()]
        q = enc.encode_text_with_tokens(prompts, toks[ref_idx[b]].to(dev))
        gb = ctx.global_batch  # the gallery columns of the whole global batch (frozen: every rank has them)
        cols = torch.cat([tgt_idx[gb], ref_idx[gb]]) if cfg.reference_negatives else tgt_idx[gb]
        cols = cols.unique()
        g = pooled[cols].to(dev)
        labels = torch.searchsorted(cols, tgt_idx[b]).to(dev)
        return ctx.batch_mean(F.cross_entropy(scale * q @ g.T, labels, reduction="none"))

    per_epoch = len(batches(0))
    ecfg = engine_config(cfg)
    steps = total_steps(ecfg, per_epoch)
    if cfg.max_epochs > 0:
        steps = min(steps, max(1, math.ceil(cfg.max_epochs * len(triplets) / batch)))
    ecfg = engine_config(cfg, steps=steps)
    sig = {**config_signature(cfg), "data": _ids_digest(world, image_ids), "triplets": len(triplets)}
    # the engine trains the copy's own text tower (its image tower is the backbone's, shared)
    task = Task("train composing", enc.text_tower, batches, loss_fn, steps_per_epoch=per_epoch, signature=sig)
    fit_res = fit(task, ecfg, dist)
    final = fit_res.final_loss
    if dist.is_main:
        extra = {f"text.{k}": v for k, v in lora_state_dict(enc.text_tower).items()}
        save_mapper(cfg.out, mapper.cpu(), backbone.fingerprint(), kind=TWO_STAGE_KIND, extra_tensors=extra,
                    config={"method": "two-stage", "template": cfg.template, "lora": asdict(lcfg),
                            "lora_targets": len(wrapped), "train": asdict(cfg), "text_init": text_init},
                    trained_on={"world": _world_key(world), "triplets": len(triplets)}, final_loss=final,
                    trainable_text_parameters=trainable, total_text_parameters=total, steps=fit_res.steps)
    finish(ecfg, dist)
    secs = time.time() - t0
    if dist.is_main:
        log.info("stage 2: LoRA on %d text-tower layers (%d / %d parameters trainable), %d triplets, %d steps, "
                 "loss %.3f -> %s (%.0f s)", len(wrapped), trainable, total, len(triplets), fit_res.steps, final,
                 cfg.out, secs)
    return TrainResult(Path(cfg.out), fit_res.steps, secs, final,
                       {"triplets": len(triplets), "trainable": trainable, "total": total,
                        "items_per_s": fit_res.items_per_s})


# --- CLI ------------------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--world", default="", help="a world folder made by `zscir world` (its images / pairs / triplets)")
    add_backbone_arg(p, d.backbone)
    p.add_argument("--template", default=d.template, help="composition template (default: %(default)r)")
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, steps=d.steps, weight_decay=d.weight_decay, warmup=d.warmup)


def _mapper_args(defaults: MapperTrainConfig):
    def add(p: argparse.ArgumentParser) -> None:
        _add_common(p, defaults)
        pairs_method = defaults.injection or defaults.soft_weight > 0
        add_source_args(p, images=not pairs_method, pairs=pairs_method)
        p.add_argument("--hidden", type=int, default=defaults.hidden)
        p.add_argument("--tokens", type=int, default=defaults.n_tokens, help="pseudo tokens per image")
        p.add_argument("--dropout", type=float, default=defaults.dropout, help="mapper dropout (default: %(default)s)")
        p.add_argument("--max-images", type=int, default=0)
        if defaults.injection or defaults.soft_weight:
            p.add_argument("--no-injection", action="store_true", help="ablation: MLP on the pooled embedding only")
            p.add_argument("--soft-weight", type=float, default=defaults.soft_weight,
                           help="weight of the soft text alignment (KL) term; 0 = contrastive only")

    return add


def _mapper_cfg(args: argparse.Namespace, base: MapperTrainConfig) -> MapperTrainConfig:
    return MapperTrainConfig(
        **engine_args(args, min_batch=2), **source_args(args), world=args.world, backbone=args.backbone,
        template=args.template, hidden=args.hidden, n_tokens=args.tokens,
        max_images=args.max_images, dropout=args.dropout, injection=base.injection and not getattr(args, "no_injection", False),
        soft_weight=getattr(args, "soft_weight", base.soft_weight),
    )


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


def _add_composing(p: argparse.ArgumentParser) -> None:
    d = ComposingConfig()
    _add_common(p, d)
    p.add_argument("--mapper", required=True, help="stage-1 checkpoint made by `zscir train mapping`")
    p.add_argument("--cir-triplets", default="", metavar="FILE",
                   help="JSONL of {reference, modification, target} image paths (relative to the file), e.g. made "
                        "from your pairs by `zscir data make-triplets`")
    p.add_argument("--feature-cache", default="", metavar="DIR",
                   help="frozen-feature cache folder (default: $ZSCIR_HOME/cache/features)")
    p.add_argument("--fraction", type=float, default=d.fraction, help="share of the training triplets used")
    p.add_argument("--noise", type=float, default=d.noise, help="share of modification texts shuffled")
    p.add_argument("--max-epochs", type=float, default=d.max_epochs,
                   help="at most this many passes over the triplets, whatever --steps says (0: no cap; default: %(default)s)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    p.add_argument("--dropout", type=float, default=d.dropout, help="LoRA dropout (default: %(default)s)")
    p.add_argument("--per-reference", type=int, default=d.per_reference,
                   help="triplets sharing a reference per batch (hard negatives)")
    p.add_argument("--no-reference-negatives", action="store_true", help="do not score the references as negatives")
    p.add_argument("--text-init", default="", metavar="RTD_CKPT",
                   help="start from this RTD-tuned text tower (`zscir train rtd --mapper STAGE1`): two-stage+rtd")


def _run_composing(args: argparse.Namespace) -> int:
    res = train_composing(ComposingConfig(
        **engine_args(args, min_batch=2), world=args.world, mapper=args.mapper, backbone=args.backbone,
        template=args.template, fraction=args.fraction, noise=args.noise, rank=args.rank,
        dropout=args.dropout, per_reference=args.per_reference, reference_negatives=not args.no_reference_negatives,
        text_init=args.text_init, max_epochs=args.max_epochs, cir_triplets=args.cir_triplets,
        feature_cache=args.feature_cache,
    ))
    if is_main_process():
        print(f"saved {res.path}: two-stage (stage 2) on {res.info['triplets']} triplets, LoRA {res.info['trainable']} / "
              f"{res.info['total']} text parameters trainable, final loss {res.final_loss:.3f}, {res.seconds:.0f} s")
    return 0


def register_trainers() -> None:
    from zscir.train.cli import register_trainer

    register_trainer("pic2word", _mapper_args(pic2word_config()), _run_pic2word,
                     help="Pic2Word-style single-token mapper on unlabelled images (towers frozen)")
    register_trainer("mapping", _mapper_args(mapping_config()), _run_mapping,
                     help="two-stage, stage 1: injection mapper with soft text alignment on image-caption pairs")
    register_trainer("composing", _add_composing, _run_composing,
                     help="two-stage, stage 2: LoRA on the text tower over synthetic CIR triplets, mapper frozen")


register_trainers()
