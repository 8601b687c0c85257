"""`zscir train composing`: two-stage, stage 2.

The stage-1 mapper (`zscir train mapping`) frozen, LoRA adapters on the text tower, trained on the world's
`cir_train` triplets (never the evaluation sets) or a user's CIR triplets (--cir-triplets): the composed query
`a photo of $ that {mod}` must retrieve its target among the batch's targets *and references* (the reference is
the hardest negative), with batches grouped so several triplets share a reference (same pseudo token,
different texts). `fraction` keeps a share of the triplets, `noise` shuffles that share of their modification
texts. The image tower stays frozen, so every image's local features and every reference's pseudo token are
computed once."""

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

from zscir.backbones.base import Backbone
from zscir.errors import InputError
from zscir.methods.mapped import TWO_STAGE_KIND
from zscir.methods.pseudo_token import DEFAULT_TEMPLATE, check_template
from zscir.methods.tuned_text import load_rtd_text_encoder, lora_text_encoder
from zscir.nn.lora import LoRAConfig, count_parameters, lora_state_dict
from zscir.nn.mappers import load_mapper, save_mapper
from zscir.train.data import EpochSequence, pooled_rows, world_image_features
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
    EngineSettings,
    StepContext,
    Task,
    add_engine_args,
    check_batch_size,
    check_out_dir,
    config_signature,
    distributed,
    engine_args,
    engine_config,
    finish,
    fit,
    is_main_process,
    total_steps,
)
from zscir.train.pseudo_token import (
    TEMPLATE_HELP,
    WORLD_HELP,
    SourceData,
    TrainResult,
    ids_digest,
    logit_scale_of,
    setup_training,
    world_key,
)
from zscir.utils.cli import add_backbone_arg, add_config_args, config_from_args, option
from zscir.utils.runtime import autocast

log = logging.getLogger(__name__)


@dataclass
class ComposingConfig(EngineSettings):
    """Settings of `train composing` (two-stage, stage 2)."""

    world: str = option("", WORLD_HELP)
    mapper: str = option("", "stage-1 checkpoint made by `zscir train mapping`", required=True)  # stage-1 folder
    out: str = ""
    backbone: str = "default"
    steps: int = 150
    batch_size: int = 48
    # triplets sharing a reference in one batch (hard negatives)
    per_reference: int = option(3, "triplets sharing a reference per batch (hard negatives)")
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: float = 0.1
    rank: int = option(8, "LoRA rank")
    alpha: float = option(16.0, cli=False)
    dropout: float = option(0.05, "LoRA dropout (default: %(default)s)")
    fraction: float = option(1.0, "share of the training triplets used")  # of the world's training triplets
    # At most this many passes over the (selected) triplets, 0 = no cap: with 1% or 10% of the triplets a
    # fixed step count means tens to hundreds of passes, and the adapters memorise them (benchmarks/
    # pseudo_token_ablations.py measures both).
    max_epochs: float = option(0.0, "at most this many passes over the triplets, whatever --steps says (0: no cap; "
                                    "default: %(default)s)")
    # share of the used triplets whose modification text is shuffled
    noise: float = option(0.0, "share of modification texts shuffled")
    reference_negatives: bool = option(True, "do not score the references as negatives")  # --no-reference-negatives
    # An RTD checkpoint (`zscir train rtd`) whose tuned text tower stage 2 starts from, instead of the
    # backbone's: how RTD plugs into two-stage (`two-stage+rtd`), so that stage 2's image-triplet tuning,
    # not RTD's caption anchor, has the last word on the text tower.
    text_init: str = option("", "start from this RTD-tuned text tower (`zscir train rtd --mapper STAGE1`): "
                                "two-stage+rtd", metavar="RTD_CKPT")
    template: str = option(DEFAULT_TEMPLATE, TEMPLATE_HELP)
    seed: int = 0
    device: str = ""
    # JSONL of {reference, modification, target} image paths, instead of --world
    cir_triplets: str = option("", "JSONL of {reference, modification, target} image paths (relative to the file), "
                                   "e.g. made from your pairs by `zscir data make-triplets`", metavar="FILE")
    # frozen-feature cache folder ("" = $ZSCIR_HOME/cache/features)
    feature_cache: str = option("", "frozen-feature cache folder (default: $ZSCIR_HOME/cache/features)",
                                metavar="DIR")
    epochs: float = 0.0  # > 0 and steps == 0: passes over the triplets instead of a step count

    def check(self) -> None:
        """Refuse impossible settings and an --out that would be destroyed, before any work."""
        check_template(self.template, "$")
        check_out_dir(self.out, TWO_STAGE_KIND)
        check_batch_size(self.batch_size, 2)
        engine_config(self).check()
        if not self.mapper:
            raise InputError("stage 2 needs the stage-1 mapper checkpoint (--mapper)")


# --- data and batches -------------------------------------------------------------------------------------
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


# --- training ---------------------------------------------------------------------------------------------
def train_composing(cfg: ComposingConfig, backbone: Backbone | None = None, world: Any = None) -> TrainResult:
    """Stage 2: LoRA on the text tower over the world's CIR training triplets; the stage-1 mapper frozen."""
    t0 = time.time()
    cfg.check()
    with distributed(cfg.device) as dist:
        return _train_composing(cfg, backbone, world, dist, t0)


def _train_composing(cfg: ComposingConfig, backbone: Backbone | None, world: Any, dist: DistInfo,
                     t0: float) -> TrainResult:
    if cfg.cir_triplets and (cfg.world or world is not None):
        raise InputError("give either --world or --cir-triplets, not both")
    if cfg.cir_triplets:
        from zscir.data import read_cir_triplets

        world = SourceData(cfg.cir_triplets)
        world.cir_train = [{"reference": t.reference, "modification": t.modification, "target": t.target}
                           for t in read_cir_triplets(cfg.cir_triplets)]
    gen, world, backbone = setup_training(cfg, backbone, world, dist)
    mapper, _ = load_mapper(cfg.mapper, backbone.fingerprint(), kind=("zscir.token-mapper", TWO_STAGE_KIND))
    dev = backbone.device
    mapper = mapper.to(dev).eval()
    triplets = select_triplets(list(world.cir_train), cfg.fraction, cfg.noise, gen)
    after_select = gen.get_state()
    image_ids = sorted({t["reference"] for t in triplets} | {t["target"] for t in triplets})
    # the frozen passes in the training precision (bf16 where native under "auto"); their cache keys say so
    with autocast(dev, cfg.precision):
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
    scale = logit_scale_of(backbone)
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
    sig = {**config_signature(cfg), "data": ids_digest(world, image_ids), "triplets": len(triplets)}
    # the engine trains the copy's own text tower (its image tower is the backbone's, shared)
    task = Task("train composing", enc.text_tower, batches, loss_fn, steps_per_epoch=per_epoch, signature=sig)
    fit_res = fit(task, ecfg, dist)
    final = fit_res.final_loss
    if dist.is_main:
        extra = {f"text.{k}": v for k, v in lora_state_dict(enc.text_tower).items()}
        save_mapper(cfg.out, mapper.cpu(), backbone.fingerprint(), kind=TWO_STAGE_KIND, extra_tensors=extra,
                    config={"method": "two-stage", "template": cfg.template, "lora": asdict(lcfg),
                            "lora_targets": len(wrapped), "train": asdict(cfg), "text_init": text_init},
                    trained_on={"world": world_key(world), "triplets": len(triplets)}, final_loss=final,
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
def _add_args(p: argparse.ArgumentParser) -> None:
    d = ComposingConfig()
    add_backbone_arg(p, d.backbone)
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, steps=d.steps, weight_decay=d.weight_decay, warmup=d.warmup)
    add_config_args(p, d)


def _run(args: argparse.Namespace) -> int:
    res = train_composing(config_from_args(ComposingConfig, args, **engine_args(args, min_batch=2)))
    if is_main_process():
        print(f"saved {res.path}: two-stage (stage 2) on {res.info['triplets']} triplets, LoRA {res.info['trainable']} / "
              f"{res.info['total']} text parameters trainable, final loss {res.final_loss:.3f}, {res.seconds:.0f} s")
    return 0


def register_trainers() -> None:
    from zscir.train.cli import register_trainer

    register_trainer("composing", _add_args, _run,
                     help="two-stage, stage 2: LoRA on the text tower over synthetic CIR triplets, mapper frozen")


register_trainers()
