"""`zscir train rtd`: reduce the text encoder's task discrepancy on text triplets (no images).

For a triplet (reference caption r, modification m, target caption t):

    e   = normalise(E0(r) + noise)           E0: the frozen original text tower; noise ~ N(0, (s^2 / D) I),
                                             i.e. a vector of expected norm s (default 0.5) on a unit embedding
    $   = mapper(e)                          the frozen pseudo-token mapper of any pseudo-token method
    q   = E(concat($, m))                    E: the text tower being tuned; the concatenation scheme puts $
                                             where it sits at inference (`a photo of $ that {m}`)
    k   = E0(t)                              the anchor: the target as the *original* tower embeds it

Loss: symmetric InfoNCE between queries and keys, temperature 0.07, in-batch negatives on both sides.
Refined batches: each batch also holds the pairs (E(`a photo of $`), E0(r)), so every composed query meets its
own reference caption as a hard negative; triplets that share a reference are put in the same batch so their
targets are negatives of each other. Pairs whose keys are the same text are not used as negatives.

Published recipe: full fine-tuning (here: the whole text tower except the word-embedding table, which is
the pseudo tokens' space and stays frozen), lr 1e-5. LoRA on the transformer's Linear layers is a setting.
Because E0 is frozen, anchor keys are computed once per distinct caption.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zscir.backbones.base import Backbone
from zscir.backbones.tuned import TunedBackbone
from zscir.checkpoint import save_checkpoint, tensors_fingerprint
from zscir.errors import InputError
from zscir.methods.tuned_text import RTD_KIND, frozen_word_table_names, load_text_adapters, text_fingerprint
from zscir.nn.lora import LoRAConfig, apply_lora, count_parameters, lora_state_dict
from zscir.train.data import EpochSequence
from zscir.train.distributed import DistInfo
from zscir.train.engine import (
    EngineSettings,
    StepContext,
    Task,
    add_engine_args,
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
from zscir.train.triplets import Triplet, load_triplet_source
from zscir.utils.cli import add_backbone_arg, add_config_args, config_from_args, option
from zscir.utils.runtime import configure_threads, seed_everything

log = logging.getLogger(__name__)

#: concatenation schemes: how the pseudo token and the modification are joined into the training query.
#: each maps to (composed-query template, reference-only prompt for the hard-negative pair)
CONCAT_SCHEMES: dict[str, tuple[str, str]] = {
    # the token sits where it sits at inference (the method's template), the published scheme
    "template": ("a photo of $ that {text}", "a photo of $"),
    # the token first, then the modification, no template words
    "prefix": ("$ {text}", "$"),
    # the modification first, the token last (a position it never has at inference)
    "suffix": ("{text} $", "$"),
}


@dataclass
class RTDConfig(EngineSettings):
    """Settings of one RTD run (every run is reproducible from these, the triplets and the mapper)."""

    out: str = ""
    steps: int = 0  # 0: `epochs` passes over the triplets
    epochs: float = 1.0
    batch_size: int = 32  # triplets per batch (the hard-negative pairs come on top)
    lr: float = 0.0  # 0: 1e-5 for full fine-tuning (published), 1e-4 for LoRA
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of steps
    temperature: float = option(0.07)
    noise: float = option(0.5, "noise scale on the reference embedding")
    concat: str = option("template", "concatenation scheme", choices=CONCAT_SCHEMES)
    # overrides the scheme's template (e.g. the method's own); must hold $ and {text}
    template: str = option("", "the method's template, when not 'a photo of $ that {text}'")
    anchor: bool = option(True, "ablation: keys from the tuned tower")  # --no-anchor
    hard_negatives: bool = option(True, "ablation: plain random batches")  # --no-hard-negatives: no reference pairs
    tune: str = option("full", choices=("full", "lora"))
    lora_rank: int = option(16)
    lora_alpha: float = option(16.0)
    lora_dropout: float = option(0.1, cli=False)
    max_triplets: int = option(0)  # 0: all
    seed: int = 0
    device: str = ""
    grad_clip: float = 1.0

    def resolved_lr(self) -> float:
        return self.lr or (1e-4 if self.tune == "lora" else 1e-5)

    def check(self) -> None:
        """Refuse impossible settings and an --out that would be destroyed (when set), before any work."""
        if self.concat not in CONCAT_SCHEMES:
            raise InputError(f"unknown concatenation scheme {self.concat!r}; choose from {', '.join(CONCAT_SCHEMES)}")
        if self.tune not in ("full", "lora"):
            raise InputError(f"tune must be 'full' or 'lora', not {self.tune!r}")
        if self.noise < 0 or self.temperature <= 0 or self.batch_size < 2:
            raise InputError("noise must be >= 0, temperature > 0 and batch size >= 2")
        if self.template and ("$" not in self.template or "{text}" not in self.template):
            raise InputError(f"template {self.template!r} needs a '$' and a '{{text}}'")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise InputError(f"learning rate must be a finite number > 0 (or 0: the default), got {self.lr}")
        engine_config(self, lr=self.resolved_lr()).check()
        if self.out:
            check_out_dir(self.out, RTD_KIND)

    def prompts(self) -> tuple[str, str]:
        tpl, ref = CONCAT_SCHEMES[self.concat]
        if self.template and self.concat == "template":
            tpl = self.template
            ref = self.template.split("{text}")[0].rstrip()
            ref = re.sub(r"\s+(that|which|who|and|with|but)$", "", ref) or "$"
        return tpl, ref


@dataclass
class RTDResult:
    path: Path | None
    steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable: int = 0
    total: int = 0


# --- batches ---------------------------------------------------------------------------------------------
def refined_batches(triplets: Sequence[Triplet], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of <= batch_size where triplets sharing a reference stay together (a group larger
    than a batch is split across consecutive batches). Group order is shuffled."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(triplets):
        groups.setdefault(t.reference, []).append(i)
    order = list(groups.values())
    rng.shuffle(order)
    batches: list[list[int]] = []
    cur: list[int] = []
    for g in order:
        rng.shuffle(g)
        if cur and len(cur) + len(g) > batch_size:
            batches.append(cur)
            cur = []
        while len(g) > batch_size:
            batches.append(g[:batch_size])
            g = g[batch_size:]
        cur.extend(g)
    if cur:
        batches.append(cur)
    return [b for b in batches if len(b) >= 2] or batches


def random_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    idx = list(range(n))
    rng.shuffle(idx)
    return [idx[i : i + batch_size] for i in range(0, n, batch_size) if len(idx[i : i + batch_size]) >= 2]


# --- loss ------------------------------------------------------------------------------------------------
def anchored_info_nce(
    q: torch.Tensor, k: torch.Tensor, key_ids: Sequence[str], temperature: float,
    q_all: torch.Tensor | None = None, k_all: torch.Tensor | None = None,
    ids_all: Sequence[str | None] | None = None, offset: int = 0, normaliser: float | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned queries q and keys k (unit norm); the first len(key_ids) rows are
    this process's pairs. Pairs whose keys are the same text are not negatives of each other (false negatives).

    Under DDP pass the gathered q_all / k_all / ids_all (padding rows have id None and are never scored), this
    process's offset into them and normaliser = (global pairs / world), so that the ranks' averaged gradient
    is exactly the single-process gradient of the global batch."""
    n = len(key_ids)
    q_all = q if q_all is None else q_all
    k_all = k if k_all is None else k_all
    ids_all = list(key_ids) if ids_all is None else list(ids_all)
    vocab = {s: i for i, s in enumerate(dict.fromkeys(x for x in ids_all if x is not None))}
    col = torch.tensor([-1 if x is None else vocab[x] for x in ids_all], device=q.device)
    labels = torch.arange(n, device=q.device) + offset
    row = col[labels]
    mask = (row[:, None] == col[None, :]) | (col[None, :] < 0)
    mask[torch.arange(n, device=q.device), labels] = False
    l_qk = (q[:n] @ k_all.T / temperature).masked_fill(mask, float("-inf"))
    l_kq = (k[:n] @ q_all.T / temperature).masked_fill(mask, float("-inf"))
    total = F.cross_entropy(l_qk, labels, reduction="sum") + F.cross_entropy(l_kq, labels, reduction="sum")
    return total / (2 * (normaliser if normaliser is not None else max(1, n)))


# --- mappers ----------------------------------------------------------------------------------------------
@dataclass
class RTDStart:
    """What RTD starts from: the frozen mapper and the text side the method already has."""

    mapper: nn.Module
    text_encoder: Backbone | None  # None: the backbone's own text tower (pic2word); two-stage: its tuned tower
    info: dict


def load_rtd_start(path: str | Path, backbone: Backbone) -> RTDStart:
    """The mapper (and the tuned text side, for two-stage) from a pic2word / mapping / two-stage checkpoint.
    A checkpoint trained for another backbone is refused."""
    from zscir.methods.mapped import TWO_STAGE_KIND
    from zscir.nn.mappers import MAPPER_KIND, load_mapper

    mapper, ckpt = load_mapper(path, backbone.fingerprint(), kind=(MAPPER_KIND, TWO_STAGE_KIND))
    enc = load_text_adapters(backbone, ckpt) if ckpt.kind == TWO_STAGE_KIND else None
    info = {"path": str(path), "kind": ckpt.kind, "method": ckpt.config.get("method", ""),
            "fingerprint": ckpt.fingerprint}
    return RTDStart(mapper, enc, info)


# --- training --------------------------------------------------------------------------------------------
@torch.inference_mode()
def _embed_frozen(backbone: Backbone, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    out = [backbone.encode_text(list(texts[i : i + batch_size])).float() for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def _set_trainable(student: TunedBackbone, cfg: RTDConfig) -> None:
    student.freeze()
    tower = student.text_tower
    if cfg.tune == "lora":
        apply_lora(tower, student.adapter_targets("text"), LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout), freeze=True)
    else:
        table = student.word_embeddings()
        for m in tower.modules():
            if m is table:
                continue
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)


def _mapper_tokens(mapper: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    tok = mapper(emb)
    if tok.ndim == 2:
        tok = tok[:, None]
    return tok


def train_rtd(
    cfg: RTDConfig,
    backbone: Backbone,
    mapper: nn.Module,
    triplets: Sequence[Triplet],
    meta: dict | None = None,
    progress: bool = True,
    text_encoder: Backbone | None = None,
) -> RTDResult:
    """Tune a copy of the text tower on `triplets` with the frozen `mapper`; save to cfg.out if set.

    `backbone` is the original (it embeds the mapper's inputs and the anchors and is never changed);
    `text_encoder` is where tuning starts (the method's current text side; default: `backbone`)."""
    cfg.check()
    t0 = time.time()
    configure_threads()
    seed_everything(cfg.seed)
    with distributed(cfg.device) as dist:
        return _train_rtd(cfg, backbone, mapper, triplets, meta, progress, text_encoder, dist, t0)


def _replay_rng(seed: int, n_triplets: int, max_triplets: int) -> random.Random:
    """The batch-order generator, as it stands after the triplet sampling."""
    rng = random.Random(seed)
    if max_triplets and n_triplets > max_triplets:
        rng.sample(range(n_triplets), max_triplets)
    return rng


def _train_rtd(cfg: RTDConfig, backbone: Backbone, mapper: nn.Module, triplets: Sequence[Triplet], meta: dict | None,
               progress: bool, text_encoder: Backbone | None, dist: DistInfo, t0: float) -> RTDResult:
    rank, world = dist.rank, dist.world_size
    device = device_for(dist, cfg.device)
    if cfg.batch_size < 2 * world:
        raise InputError(f"batch size {cfg.batch_size} is too small for {world} processes")
    progress = progress and cfg.progress and rank == 0
    triplets = list(triplets)
    n_given = len(triplets)
    if cfg.max_triplets and len(triplets) > cfg.max_triplets:
        triplets = random.Random(cfg.seed).sample(triplets, cfg.max_triplets)  # batch order: the same on every rank
    if len(triplets) < 2:
        raise InputError(f"RTD needs at least 2 triplets, got {len(triplets)}")
    tpl, ref_prompt = cfg.prompts()

    backbone = backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    mapper = mapper.to(device).eval()
    for p in mapper.parameters():
        p.requires_grad_(False)

    # Frozen embeddings of the captions (the mapper's inputs and the anchors), computed once per distinct caption
    # when a batch first needs it (a short run never pays for captions it does not reach).
    cache: dict[str, torch.Tensor] = {}

    def frozen(caps: Sequence[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(caps) if c not in cache]
        if missing:
            cache.update(zip(missing, _embed_frozen(backbone, missing)))
        return torch.stack([cache[c] for c in caps])

    dim = backbone.embed_dim

    student = TunedBackbone.copy_of(text_encoder if text_encoder is not None else backbone, "text", "rtd").to(device)
    _set_trainable(student, cfg)
    trainable, total = count_parameters(student.text_tower)
    torch.manual_seed(cfg.seed + 7919 * rank)  # adapters are initialised alike; noise and dropout differ by rank
    cap = 2 * math.ceil(cfg.batch_size / world)  # rows per rank after padding (pairs + reference pairs)

    def draw(rng: random.Random) -> list[list[int]]:
        if cfg.hard_negatives:
            out = refined_batches(triplets, cfg.batch_size, rng)
        else:
            out = random_batches(len(triplets), cfg.batch_size, rng)
        out = [b for b in out if len(b) >= world] or out  # under DDP every rank gets at least one pair
        return out[::-1]  # consumed last batch first (the order before the engine)

    def make_rng() -> random.Random:
        rng = _replay_rng(cfg.seed, n_given, cfg.max_triplets)
        draw(rng)  # one grouping was drawn to count the batches of an epoch
        return rng

    epochs = EpochSequence(make_rng, draw)
    per_epoch = len(draw(_replay_rng(cfg.seed, n_given, cfg.max_triplets)))
    steps = cfg.steps or max(1, math.ceil(per_epoch * cfg.epochs))

    def shard(batch: list[int], d: DistInfo) -> tuple[list[int], int]:
        if d.world_size == 1:
            return batch, 0
        per = math.ceil(len(batch) / d.world_size)  # this rank's contiguous share of the global batch
        return batch[d.rank * per : (d.rank + 1) * per], d.rank * per

    def loss_fn(batch: list[int], ctx: StepContext) -> torch.Tensor:
        trip = [triplets[i] for i in batch]
        refs = list(dict.fromkeys(t.reference for t in trip)) if cfg.hard_negatives else []
        # the mapper sees each reference caption's frozen text embedding plus noise
        ref_caps = [t.reference for t in trip] + refs
        e = frozen(ref_caps) if ref_caps else torch.zeros(0, dim, device=device)
        if cfg.noise > 0:
            e = e + torch.randn_like(e) * (cfg.noise / math.sqrt(dim))
        with torch.no_grad():
            tokens = _mapper_tokens(mapper, F.normalize(e, dim=-1))
        texts = [tpl.replace("{text}", t.modification) for t in trip]
        parts = [student.encode_text_with_tokens(texts, tokens[: len(trip)])] if trip else []
        if refs:  # a separate pass: the short reference prompts are not padded to the long composed ones
            parts.append(student.encode_text_with_tokens([ref_prompt] * len(refs), tokens[len(trip):]))
        key_caps = [t.target for t in trip] + refs
        if cfg.anchor:
            k = frozen(key_caps)
        else:
            k = student.encode_text(key_caps)
        q = torch.cat(parts) if parts else torch.zeros(0, dim, device=device)
        if world > 1:
            return _ddp_loss(q.float(), k.float(), key_caps, cfg, cap, rank, world)
        return anchored_info_nce(q.float(), k.float(), key_caps, cfg.temperature)

    ecfg = engine_config(cfg, steps=steps, lr=cfg.resolved_lr(), progress=progress)
    sig = {**config_signature(cfg), "triplets": _triplets_digest(triplets)}
    # the engine trains the student's own text tower (its image tower is the backbone's, shared)
    task = Task(f"rtd ({cfg.tune})", student.text_tower, epochs, loss_fn, steps_per_epoch=per_epoch, shard=shard, signature=sig)
    fit_res = fit(task, ecfg, dist)
    losses = fit_res.losses

    path = None
    if cfg.out and rank == 0:
        path = save_rtd(cfg, student, backbone, mapper, len(triplets), meta or {}, text_encoder)
    finish(ecfg, dist)
    res = RTDResult(path=path, steps=fit_res.steps, final_loss=fit_res.final_loss, losses=losses,
                    seconds=time.time() - t0, trainable=trainable, total=total)
    if rank == 0:
        log.info("RTD (%s, %d steps, %d triplets): loss %.3f -> %.3f, %d / %d text-tower parameters trained, %.0f s%s",
                 cfg.tune, fit_res.steps, len(triplets), losses[0] if losses else float("nan"), res.final_loss,
                 trainable, total, res.seconds, f" -> {path}" if path else "")
    res.student = student  # type: ignore[attr-defined]  # the trained module, for callers that keep it; not a result field
    return res


def _triplets_digest(triplets: Sequence[Triplet]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in triplets:
        h.update(f"{t.reference}\x1f{t.modification}\x1f{t.target}\x1e".encode())
    return h.hexdigest()[:16]


def _ddp_loss(q: torch.Tensor, k: torch.Tensor, key_caps: list[str], cfg: RTDConfig, cap: int, rank: int,
              world: int) -> torch.Tensor:
    """The global-batch loss under DDP: every rank's (padded) rows are gathered, with gradients."""
    import torch.distributed as tdist

    from zscir.train.distributed import gather, gather_with_grad

    n = len(key_caps)
    pad = cap - n
    q_p = torch.cat([q, q.new_zeros(pad, q.shape[1])]) if pad else q
    k_p = torch.cat([k, k.new_zeros(pad, k.shape[1])]) if pad else k
    ids: list = [None] * world
    tdist.all_gather_object(ids, list(key_caps) + [None] * pad)
    ids_all = [x for part in ids for x in part]
    n_global = sum(x is not None for x in ids_all)
    k_all = gather(k_p) if cfg.anchor else gather_with_grad(k_p)
    return anchored_info_nce(q_p, k_p, key_caps, cfg.temperature, q_all=gather_with_grad(q_p), k_all=k_all,
                             ids_all=ids_all, offset=rank * cap, normaliser=n_global / world)


def save_rtd(cfg: RTDConfig, student: Backbone, backbone: Backbone, mapper: nn.Module, n_triplets: int,
             meta: dict, start: Backbone | None = None) -> Path:
    tower = student.text_tower
    if cfg.tune == "lora":
        tensors = lora_state_dict(tower)
        config = {"tune": "lora", "lora": asdict(LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout))}
    else:
        skip = frozen_word_table_names(student)
        tensors = {k: v for k, v in tower.state_dict().items() if k not in skip}
        config = {"tune": "full"}
    meta = dict(meta)
    src = meta.pop("mapper", None) or {"fingerprint": tensors_fingerprint(dict(mapper.state_dict()))}
    init = {"source": src.get("method") or src.get("path", "backbone"),
            "text_fingerprint": "backbone" if start is None or start is backbone else text_fingerprint(start)}
    return save_checkpoint(cfg.out, RTD_KIND, config, tensors, backbone_fingerprint=backbone.fingerprint(),
                           mapper=src, init=init, rtd=asdict(cfg), triplets=n_triplets, **meta)


def _add_args(p: argparse.ArgumentParser) -> None:
    d = RTDConfig()
    p.add_argument("--mapper", required=True,
                   help="checkpoint of the pseudo-token method to plug into (pic2word mapper, two-stage)")
    add_backbone_arg(p)
    src = p.add_argument_group("triplet source (exactly one)")
    src.add_argument("--world", default="", help="a world folder: use its text_triplets.json")
    src.add_argument("--triplets", default="", help="a JSONL file of {reference, modification, target}")
    src.add_argument("--captions", default="", help="captions for rule-based triplets: plain text (one per line), "
                     "a JSONL/CSV/TSV file (see --caption-column), a JSON list, or WebDataset shards")
    src.add_argument("--caption-column", default="", help="column of --captions holding the caption (default: guessed)")
    src.add_argument("--per-caption", type=int, default=2, help="rule-based triplets per caption")
    src.add_argument("--max-bad-fraction", type=float, default=0.05, help="refuse a JSONL with more malformed lines")
    add_engine_args(p, lr=None, batch_size=d.batch_size, epochs=d.epochs, weight_decay=d.weight_decay,
                    warmup=d.warmup, grad_clip=d.grad_clip,
                    lr_help="peak learning rate (default: 1e-5 for --tune full, as published; 1e-4 for lora)")
    add_config_args(p, d)


def _run(args: argparse.Namespace) -> int:
    from zscir.backbones import load_backbone
    from zscir.utils.runtime import pick_device

    cfg: RTDConfig = config_from_args(RTDConfig, args, **engine_args(args, min_batch=2))
    cfg.check()  # before the backbone is loaded
    if not cfg.out:  # the Python API may train without saving; the command saves
        raise InputError("--out is required")
    backbone = load_backbone(args.backbone, str(pick_device(args.device or None)))
    source = load_rtd_start(args.mapper, backbone)
    trips, desc = load_triplet_source(args.world, args.triplets, args.captions, args.per_caption, args.seed,
                                      args.max_bad_fraction, args.caption_column)
    res = train_rtd(cfg, backbone, source.mapper, trips, meta={"triplet_source": desc, "mapper": source.info},
                    text_encoder=source.text_encoder)
    if is_main_process():
        print(f"saved {res.path}: {res.steps} steps on {len(trips)} triplets ({desc}), loss {res.losses[0]:.3f} -> "
              f"{res.final_loss:.3f}, {res.trainable:,} of {res.total:,} text-tower parameters trained, {res.seconds:.0f} s")
    return 0


def register_trainers() -> None:
    from zscir.train.cli import register_trainer

    register_trainer("rtd", _add_args, _run,
                     help="RTD: tune the text tower on text triplets (no images) for a pseudo-token method's "
                          "frozen mapper; any pseudo-token method can then use it (pic2word+rtd, two-stage+rtd)")


register_trainers()
