"""`zscir train tat`: Text-Anchored Tuning of the image tower against the frozen text tower.

LoRA adapters (rank/alpha/dropout 16/16/0.1 by default) on the image tower, trained with the symmetric
image-text InfoNCE loss at a fixed temperature (0.07) on image-caption pairs, for about one epoch. The text
tower is frozen and never handed to the optimiser: its tensors stay bit-identical (a test hashes them).

Speed on a CPU: the backbone says which layers take adapters and what its image stages are; the frozen
stages before the first adapted one are run once per image and their output is cached (on the embedded
default only the last EfficientNet blocks, the head conv and the head carry adapters). The text side is
frozen too, so caption embeddings are computed once. A training step then only runs the adapted stages. When
every block is adapted (Hugging Face ViTs) the whole tower runs every step.

Under `torchrun --nproc_per_node=N` the same command runs DDP (gloo on CPU, nccl on GPU); the contrastive
negatives are the global batch (gathered across processes with gradient). Resumable: state is saved to
`OUT.partial/` every --save-every steps and picked up by the next run with the same settings.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zscir.backbones.base import Backbone
from zscir.backbones.tuned import TunedBackbone
from zscir.checkpoint import save_checkpoint
from zscir.data.stream import ImageRef, iter_pixel_batches
from zscir.errors import InputError
from zscir.methods.tat import (
    ADAPTERS_KIND,
    MERGED_KIND,
    TATAdapterConfig,
    add_tat_adapters,
    load_tat_backbone,
    tat_copy,
    trainable_parameters,
)
from zscir.nn.lora import lora_state_dict, merge_lora
from zscir.objectives import info_nce
from zscir.train.data import frozen_text_embeddings
from zscir.train.distributed import DistInfo, global_batches
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
from zscir.utils.io import read_jsonl_objects
from zscir.utils.runtime import autocast, configure_threads, seed_everything

log = logging.getLogger(__name__)



@dataclass
class TATConfig(EngineSettings):
    """Settings of one TAT run (saved in the checkpoint; a resumed run must match them)."""

    backbone: str = "default"
    world: str = option("", "train on this world's image-caption pairs")
    images: str = option("", "image folder (with --captions)")
    captions: str = option("", "JSONL ({'image','caption'} per line) or CSV (image,caption) file")
    # a SOURCE of image-caption pairs (zscir.data: listing, folder, WebDataset shards)
    pairs: str = option("", "image-caption pairs through the data layer: a CSV/TSV/JSONL listing (see --image-column, "
                            "--caption-column), a folder or WebDataset shards with .txt captions", metavar="SOURCE")
    image_column: str = option("", "listing column holding the image path (default: guessed)")
    caption_column: str = option("", "listing column holding the caption (default: guessed)")
    out: str = ""
    rank: int = option(16)
    alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)")
    dropout: float = option(0.1)
    trunk_blocks: int = option(2, "adapt the trunk's last N blocks (default backbone; ViTs adapt every layer) "
                                  "(default: %(default)s)")
    head: bool = option(True, "default backbone: leave the pooling head untouched")  # --no-head
    head_out: bool = option(False, "default backbone: also adapt the head's output projection (0.53%% trainable)")
    temperature: float = option(0.07, "fixed InfoNCE temperature")
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: float = 0.05
    epochs: float = 1.0
    batch_size: int = 128  # global batch (split over DDP processes)
    seed: int = 0
    device: str = ""
    max_missing: float = option(0.05, "refuse if more than this fraction of caption rows point at missing images")
    val_fraction: float = option(0.05, cli=False)
    max_val: int = option(1000, cli=False)
    save_every: int = 50
    merge: bool = option(False, "also write OUT/merged: the tower with adapters folded in")
    # the engine's shared settings (see zscir.train.engine)
    steps: int = 0  # > 0: this many steps instead of `epochs` passes

    @property
    def adapters(self) -> TATAdapterConfig:
        return TATAdapterConfig(self.rank, self.alpha, self.dropout, self.trunk_blocks, self.head, self.head_out)

    def check(self) -> None:
        """Refuse impossible settings and an --out that would be destroyed, before any work."""
        if not self.out:
            raise InputError("--out is required")
        if not 0 < self.temperature:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        check_batch_size(self.batch_size, 2)
        engine_config(self).check()
        check_out_dir(self.out, ADAPTERS_KIND)

    def signature(self) -> dict:
        """What must match for a resumed run to continue the same training."""
        keep = ("backbone", "world", "images", "captions", "pairs", "image_column", "caption_column", "rank", "alpha", "dropout", "trunk_blocks", "head", "head_out",
                "temperature", "lr", "weight_decay", "warmup", "epochs", "batch_size", "seed", "val_fraction", "max_val")
        return {k: getattr(self, k) for k in keep}


@dataclass
class PairSet:
    """Image paths + captions; `missing` lists rows skipped because their image was not found."""

    paths: Sequence[ImageRef]  # files, or data-layer locations (train.data.Location)
    captions: list[str]
    missing: list[str] = field(default_factory=list)
    source: str = ""


@dataclass
class TATResult:
    path: Path
    trainable: int
    total: int
    image_tower_total: int
    steps: int
    images_per_s: float
    final_loss: float
    gap_before: dict
    gap_after: dict
    seconds: float

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / max(1, self.total)


# --- data --------------------------------------------------------------------------------------------------
def read_caption_file(captions: str | Path, images: str | Path, max_missing: float = 0.05) -> PairSet:
    """Rows of (image, caption) from a JSONL (`{"image": ..., "caption": ...}`) or CSV (header with `image`
    and `caption` columns) file; image paths are relative to `images`. Rows whose image does not exist are
    listed and skipped; if more than `max_missing` of the rows are missing the run is refused."""
    captions, images = Path(captions), Path(images)
    if not captions.is_file():
        raise InputError(f"{captions}: captions file not found")
    if not images.is_dir():
        raise InputError(f"{images}: image folder not found")
    rows: list[tuple[str, str]] = []
    if captions.suffix.lower() == ".csv":
        with open(captions, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            img_col = fields.get("image") or fields.get("file") or fields.get("path")
            cap_col = fields.get("caption") or fields.get("text")
            if not img_col or not cap_col:
                raise InputError(f"{captions}: CSV needs 'image' and 'caption' columns, has {reader.fieldnames}")
            for r in reader:
                rows.append(((r.get(img_col) or "").strip(), (r.get(cap_col) or "").strip()))
    else:
        for _, r in read_jsonl_objects(captions, "with 'image' and 'caption'"):
            img = r.get("image", r.get("file", r.get("path", "")))
            cap = r.get("caption", r.get("text", ""))
            rows.append((str(img).strip(), str(cap).strip()))
    if not rows:
        raise InputError(f"{captions}: no rows")
    paths, caps, missing = [], [], []
    for img, cap in rows:
        p = images / img
        if not cap:
            missing.append(f"{img or '<empty>'} (empty caption)")
            continue
        if not img or not p.is_file():
            missing.append(img or "<empty image field>")
            continue
        paths.append(p)
        caps.append(cap)
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        log.warning("%d of %d caption rows skipped (image missing or caption empty): %s", len(missing), len(rows), shown)
        if len(missing) > max_missing * len(rows):
            raise InputError(
                f"{captions}: {len(missing)} of {len(rows)} rows ({100 * len(missing) / len(rows):.1f}%) point at "
                f"missing images or have empty captions, more than the allowed {100 * max_missing:.1f}% "
                f"(--max-missing); first: {shown}"
            )
    return PairSet(paths, caps, missing, source=str(captions))


def load_pairs(cfg: TATConfig) -> PairSet:
    if sum(bool(x) for x in (cfg.world, cfg.images or cfg.captions, cfg.pairs)) > 1:
        raise InputError("give one of --world, --pairs SOURCE, or --images + --captions")
    if cfg.pairs:
        from zscir.train.data import Location, source_locations

        locs, caps = source_locations(cfg.pairs, cfg.image_column, cfg.caption_column, need_captions=True)
        return PairSet([Location(x) for x in locs], [str(c) for c in caps], source=str(cfg.pairs))
    if cfg.world:
        from zscir.world import load_world

        world = load_world(cfg.world)
        return PairSet([Path(world.image_path(p["image"])) for p in world.pairs], [p["caption"] for p in world.pairs],
                       source=str(cfg.world))
    if cfg.images and cfg.captions:
        return read_caption_file(cfg.captions, cfg.images, cfg.max_missing)
    raise InputError("no training data: give --pairs SOURCE, --world DIR, or --images DIR --captions FILE.jsonl|.csv")


def split_val(n: int, cfg: TATConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices: a seeded held-out slice for measuring the modality gap."""
    g = torch.Generator()
    g.manual_seed(cfg.seed + 7)
    perm = torch.randperm(n, generator=g)
    n_val = min(cfg.max_val, int(n * cfg.val_fraction)) if n >= 20 else 0
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# --- the tower, split into a frozen (cacheable) prefix and an adapted suffix ---------------------------------
class _AdaptedSuffix(nn.Module):
    """The image path from the input of stage `start` (pixels when 0) to the normalised embedding. Only the
    tuned image tower is registered: it is what the engine trains and checkpoints."""

    _backbone: TunedBackbone

    def __init__(self, tuned: TunedBackbone, start: int) -> None:
        super().__init__()
        self.tower = tuned.image_tower
        self.start = start
        object.__setattr__(self, "_backbone", tuned)  # not a submodule: the text tower is not trained here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bb = self._backbone
        tokens = bb.image_tokens(x) if self.start == 0 else bb.image_tokens_from(x, self.start)
        return F.normalize(bb.image_head(tokens), dim=-1)


def cached_prefix_start(tuned: Backbone, wrapped: Sequence[str]) -> int:
    """The stage where the adapted part of the trunk begins: the frozen stages before it run once per image and
    are cached. 0 (no cache) when the backbone exposes no stages or only its input stage (stem, patch
    embedding) is frozen: rerunning that is cheap and caching it costs memory."""
    stages = tuned.image_stages()
    if not stages:
        return 0
    start = next((i for i, st in enumerate(stages) if any(st.owns(w) for w in wrapped)), len(stages))
    return start if start > 1 else 0


@torch.inference_mode()
def _prefix_features(backbone: Backbone, start: int, paths: Sequence[ImageRef], batch: int, progress: bool) -> torch.Tensor:
    out = []
    with tqdm(total=len(paths), desc="frozen image features", unit="img", leave=False, disable=not progress) as bar:
        for px in iter_pixel_batches(paths, backbone.preprocess_config, batch):
            out.append(backbone.run_image_stages(px.to(backbone.device), 0, start).float().cpu())
            bar.update(len(px))
    return torch.cat(out)


# --- the modality gap --------------------------------------------------------------------------------------
def gap_stats(v: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    """Modality-gap measures of row-aligned, L2-normalised image (v) and text (w) embeddings."""
    v, w = F.normalize(v.float(), dim=-1), F.normalize(w.float(), dim=-1)
    sim = v @ w.T
    n = len(v)
    off = (sim.sum() - sim.diag().sum()) / max(1, n * n - n)
    return {
        "matched_cosine": round(float(sim.diag().mean()), 4),
        "unmatched_cosine": round(float(off), 4),
        "centroid_distance": round(float((v.mean(0) - w.mean(0)).norm()), 4),
        "pairs": n,
    }


@torch.inference_mode()
def measure_gap(backbone: Backbone, paths: Sequence[ImageRef], captions: Sequence[str], batch: int = 64) -> dict[str, float]:
    """Mean matched image-caption cosine and centroid distance, through the backbone's public API."""
    from zscir.eval.engine import embed_images

    v = embed_images(backbone.encode_image, paths, backbone.preprocess_config, backbone.device, batch,
                     desc="gap images", progress=False)
    w = torch.cat([backbone.encode_text(list(captions[i : i + 256])).float().cpu() for i in range(0, len(captions), 256)])
    return gap_stats(v, w)


# --- training ----------------------------------------------------------------------------------------------
def train_tat(cfg: TATConfig, backbone: Backbone | None = None, dist: DistInfo | None = None,
              pairs: PairSet | None = None) -> TATResult:
    """Run TAT and save the adapters to cfg.out (rank 0). `backbone` (the base) is never modified."""
    t0 = time.time()
    cfg.check()
    configure_threads()
    if dist is not None:
        return _train(cfg, backbone, dist, pairs, t0)
    with distributed(cfg.device) as dist:
        return _train(cfg, backbone, dist, pairs, t0)


def _train(cfg: TATConfig, backbone: Backbone | None, dist: DistInfo, pairs: PairSet | None, t0: float) -> TATResult:
    seed_everything(cfg.seed + dist.rank)
    if cfg.batch_size % dist.world_size:
        raise InputError(f"batch size {cfg.batch_size} does not split over {dist.world_size} processes")
    device = device_for(dist, cfg.device)
    if backbone is None:
        from zscir.backbones import load_backbone

        backbone = load_backbone(cfg.backbone)
    backbone = backbone.to(device).eval()
    base_fp = backbone.fingerprint()
    pairs = pairs or load_pairs(cfg)
    n_all = len(pairs.paths)
    train_idx, val_idx = split_val(n_all, cfg)
    if len(train_idx) < cfg.batch_size:
        raise InputError(f"{len(train_idx)} training pairs, fewer than one batch of {cfg.batch_size}")
    progress = cfg.progress and dist.is_main

    tuned = tat_copy(backbone)
    acfg = cfg.adapters
    wrapped = add_tat_adapters(tuned, acfg)
    trainable, total = trainable_parameters(tuned)
    image_total = sum(p.numel() for p in tuned.image_tower.parameters())
    if dist.is_main:
        log.info("TAT: %d adapted layers, %d trainable of %d parameters (%.3f%%; %.2f%% of the image tower)",
                 len(wrapped), trainable, total, 100 * trainable / total, 100 * trainable / image_total)

    # Frozen parts, computed once.
    paths = [pairs.paths[i] for i in train_idx.tolist()]
    uniq = list(dict.fromkeys(paths))
    where = {p: i for i, p in enumerate(uniq)}
    img_row = torch.tensor([where[p] for p in paths])
    start = cached_prefix_start(tuned, wrapped)
    # the frozen passes in the training precision (bf16 where native under "auto"); their cache keys say so
    with autocast(device, cfg.precision):
        cache = _prefix_features(backbone, start, uniq, 128, progress) if start else None
        suffix = _AdaptedSuffix(tuned, start)
        # every pair's caption, then the training rows: the same list pre-training cached (a subset is another key)
        text = frozen_text_embeddings(backbone, pairs.captions)[train_idx]
    gap_before = {}
    if len(val_idx) and dist.is_main:
        gap_before = measure_gap(backbone, [pairs.paths[i] for i in val_idx.tolist()], [pairs.captions[i] for i in val_idx.tolist()])

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            return cache[img_row[rows]].to(device)
        from zscir.backbones.preprocess import preprocess_batch
        from zscir.utils.io import load_image

        ims = [paths[i].load() if hasattr(paths[i], "load") else load_image(paths[i]) for i in rows.tolist()]
        return preprocess_batch(ims, tuned.preprocess_config).to(device)

    n = len(train_idx)
    scale = 1.0 / cfg.temperature

    def loss_fn(rows: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        v = suffix(inputs(rows))
        w = text[rows].to(device)
        return info_nce(v, w, scale, a_all=ctx.gather(v), b_all=ctx.gather_frozen(w), offset=ctx.offset)

    ecfg = engine_config(cfg, progress=progress)
    sig = {**config_signature(cfg), "base_fingerprint": base_fp, "pairs": n_all}
    task = Task("tat", suffix, lambda epoch: global_batches(n, cfg.batch_size, cfg.seed, epoch), loss_fn,
                steps_per_epoch=len(global_batches(n, cfg.batch_size, cfg.seed, 0)), signature=sig,
                train_mode=tuned.train)  # the backbone's train() keeps its BatchNorm statistics frozen
    fit_res = fit(task, ecfg, dist)
    tuned.eval()
    loss_v = fit_res.losses[-1] if fit_res.losses else float("nan")

    result_gap_after: dict = {}
    if dist.is_main:
        adapters = lora_state_dict(tuned.image_tower)
        meta = dict(backbone_fingerprint=base_fp, backbone=backbone.spec,
                    trainable_parameters=trainable, total_parameters=total,
                    data={"source": pairs.source, "pairs": n_all, "train_pairs": n, "skipped": len(pairs.missing)},
                    steps=fit_res.steps, final_loss=loss_v)
        save_checkpoint(cfg.out, ADAPTERS_KIND, {"adapters": asdict(acfg), "train": asdict(cfg)}, adapters, **meta)
        if len(val_idx):
            after = load_tat_backbone(backbone, cfg.out)
            result_gap_after = measure_gap(after, [pairs.paths[i] for i in val_idx.tolist()],
                                           [pairs.captions[i] for i in val_idx.tolist()])
        if cfg.merge:
            merge_lora(tuned.image_tower)
            save_checkpoint(Path(cfg.out) / "merged", MERGED_KIND, {"adapters": asdict(acfg), "train": asdict(cfg)},
                            tuned.image_tower.state_dict(), **meta)
    finish(ecfg, dist)
    return TATResult(path=Path(cfg.out), trainable=trainable, total=total, image_tower_total=image_total,
                     steps=fit_res.steps, images_per_s=fit_res.items_per_s, final_loss=loss_v, gap_before=gap_before,
                     gap_after=result_gap_after, seconds=time.time() - t0)


# --- CLI ---------------------------------------------------------------------------------------------------
def _add_args(p: argparse.ArgumentParser) -> None:
    d = TATConfig()
    add_backbone_arg(p, d.backbone)
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, epochs=d.epochs, weight_decay=d.weight_decay, warmup=d.warmup,
                    save_every=d.save_every, out_help="adapter checkpoint folder to write")
    add_config_args(p, d)


def _run(args: argparse.Namespace) -> int:
    cfg: TATConfig = config_from_args(TATConfig, args, **engine_args(args, min_batch=2))
    res = train_tat(cfg)
    if is_main_process():
        print(f"saved TAT adapters to {res.path}: {res.trainable} of {res.total} parameters trainable "
              f"({100 * res.trainable_fraction:.3f}%), {res.steps} steps, {res.images_per_s:.0f} img/s, "
              f"final loss {res.final_loss:.3f}, {res.seconds:.0f} s")
        if res.gap_before and res.gap_after:
            print(f"modality gap (held-out pairs): matched cosine {res.gap_before['matched_cosine']:.3f} -> "
                  f"{res.gap_after['matched_cosine']:.3f}, centroid distance {res.gap_before['centroid_distance']:.3f} -> "
                  f"{res.gap_after['centroid_distance']:.3f}")
    return 0


def _register() -> None:
    from zscir.train.cli import register_trainer

    register_trainer(
        "tat", _add_args, _run,
        help="Text-Anchored Tuning: LoRA on the image tower against the frozen text tower (for slerp+tat)",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )


_register()
