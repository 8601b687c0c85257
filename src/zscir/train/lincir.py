"""`zscir train lincir`: LinCIR's language-only training of a pseudo-token mapper (Gu et al., CVPR 2024).

No image is read. For a caption c (towers frozen, only the mapper trains):

    t   = E(c)                           the frozen text tower's L2-normalised embedding (cached)
    x   = t + u * s * g / sqrt(D)        self-masking projection's noise: u ~ U(0, 1) per caption, g ~ N(0, I_D),
                                         s = --noise; the noise's norm is about u * s, spread over [0, s]
    $   = mapper(x)                      one token in the text tower's word space
    c'  = c with its keyword spans replaced by `$` (mask_keywords), e.g.
          "a big orange star at the bottom right, a striped background" -> "$ at $, $"
    p   = E(c' with $ injected)          encode_text_with_tokens (every `$` of c' receives the same token)

Loss (--loss): `cosine` (default), mean 1 - cos(p, t): the paper's MSE between the two embeddings, which on
unit vectors is 2 (1 - cos); or `infonce`, symmetric InfoNCE of p against the batch's t (not the paper's).

Noise: the official code adds U(0,1) * N(0, I) to the *unnormalised* CLIP text embedding, with no
renormalisation, so that mapper inputs spread over the region where image embeddings lie (the modality gap).
zscir's mappers read unit-norm embeddings (MappedTokenMethod normalises the image embedding), so the same
recipe is expressed relative to a unit vector: a uniform share u of a Gaussian direction, norm up to s.

Keywords (mask_keywords): LinCIR replaces spaCy's runs of nouns, proper nouns, adjectives and determiners. Here
a rule without a parser: a span is a maximal run of words that are not in a stop list (prepositions,
conjunctions, pronouns, auxiliaries, numbers, common caption verbs), with the determiners just before it, and
never across punctuation; every span becomes `$`. A caption without one has its last word replaced; a masked
caption that does not survive tokenisation (truncation would cut a `$`) trains on `a photo of $` instead,
LinCIR's own fallback.

Inputs: --captions FILE (as `zscir train rtd --captions` reads it), --pairs SOURCE (its captions), or
--world DIR (its pairs' captions); duplicates are dropped. The checkpoint is a `zscir.token-mapper` whose
config records method "lincir" (zscir.methods.lincir): `zscir eval/compose/index/search/serve --checkpoint DIR`
run it like pic2word.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.backbones.base import Backbone
from zscir.errors import InputError
from zscir.methods.lincir import LINCIR
from zscir.methods.pseudo_token import DEFAULT_TEMPLATE, check_template
from zscir.nn.mappers import MAPPER_KIND, TokenMapper, mapper_config_for, save_mapper
from zscir.objectives import info_nce
from zscir.train.data import EpochSequence, add_source_args, frozen_text_embeddings, source_args
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
from zscir.train.pseudo_token import TrainResult
from zscir.utils.cli import add_backbone_arg, add_config_args, config_from_args, option
from zscir.utils.runtime import autocast, configure_threads, seed_everything

log = logging.getLogger(__name__)

LOSSES = ("cosine", "infonce")
#: what a masked caption falls back to when its own masking does not survive tokenisation
FALLBACK_PROMPT = "a photo of $"


@dataclass
class LinCIRConfig(EngineSettings):
    """Settings of `zscir train lincir` (exactly one of captions / pairs / world)."""

    captions: str = option("", "plain text (one caption per line), a JSONL/CSV/TSV file (see --caption-column), a "
                           "JSON list, or WebDataset shards", metavar="FILE")
    pairs: str = ""  # a SOURCE of image-caption pairs (only its captions are read)
    world: str = option("", "a world folder made by `zscir world` (its pairs' captions)", metavar="DIR")
    caption_column: str = ""
    image_column: str = ""
    out: str = ""
    backbone: str = "default"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    hidden: int = option(0, "mapper width (default: 0 = 4 x the embedding width)")  # the paper's mapper
    dropout: float = option(0.5, "mapper dropout (default: %(default)s)")  # the paper's
    # s: the noise's norm is u * s on a unit embedding, u ~ U(0, 1); 0 = none (ablation)
    noise: float = option(1.0, "noise on the unit caption embedding: norm u * NOISE, u ~ U(0,1); 0 = none "
                               "(default: %(default)s)")
    loss: str = option("cosine", "cosine (the paper's MSE on unit embeddings) or infonce over the batch "
                                 "(default: %(default)s)", choices=LOSSES)
    temperature: float = option(0.0, "infonce temperature (default: 0 = the backbone's)")
    template: str = option(DEFAULT_TEMPLATE, "composition template recorded for inference (default: %(default)r)")
    max_captions: int = option(0, "use at most this many captions (0 = all)")
    seed: int = 0
    device: str = ""
    feature_cache: str = ""  # frozen-feature cache folder ("" = $ZSCIR_HOME/cache/features)
    epochs: float = 0.0

    def check(self) -> None:
        check_out_dir(self.out, MAPPER_KIND)
        check_batch_size(self.batch_size, 2 if self.loss == "infonce" else 1)
        engine_config(self).check()
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise InputError(f"noise must be >= 0, got {self.noise}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden < 0 or self.max_captions < 0:
            raise InputError("hidden and max_captions must be >= 0")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        check_template(self.template, "$")


# --- keywords -------------------------------------------------------------------------------------------------
DETERMINERS = frozenset("a an the this that these those some any each every another its his her their my your our "
                        "no".split())
_FUNCTION_WORDS = (
    # prepositions
    "in on at of with without to from by for into onto over under underneath above below behind beside besides "
    "near next between through across along around inside outside against among toward towards up down off out "
    "about like upon within during before after beneath via per "
    # conjunctions, pronouns, adverbs
    "and or but nor so yet while as than then if because though although whether also too very just only not "
    "it they them he she him we you i me us there here which who whom whose what where when how itself themselves "
    "one two three four five six seven eight nine ten several many few more most both all other others "
    # auxiliaries and the verbs captions use most
    "is are was were be been being am has have had do does did can could will would shall should may might must "
    "sitting standing holding wearing looking lying laying playing riding walking running eating showing shows show "
    "shown sits stands holds wears looks lies plays rides walks runs eats made covered filled parked hanging "
    "flying using taking getting going seen see sees placed set"
)
STOP_WORDS = DETERMINERS | frozenset(_FUNCTION_WORDS.split())
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.UNICODE)


def _split(word: str) -> tuple[str, str, str]:
    m = _CORE.match(word)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", word, "")


def mask_keywords(caption: str, placeholder: str = "$") -> tuple[str, int]:
    """(the caption with its keyword spans replaced by `placeholder`, the number of spans replaced).

    A keyword span is a maximal run of content words (not in STOP_WORDS, holding a letter), extended left over
    the determiners just before it, and never across punctuation. A caption with no content word has its
    last word replaced. `placeholder` characters already in the caption are removed first."""
    words = " ".join(caption.replace(placeholder, " ").split()).split(" ")
    words = [w for w in words if w]
    if not words:
        raise InputError(f"caption {caption!r} has no words")
    parts = [_split(w) for w in words]
    content = [bool(core) and any(ch.isalpha() for ch in core) and core.lower() not in STOP_WORDS
               for _, core, _ in parts]
    out: list[str] = []
    spans = 0
    i = 0
    while i < len(words):
        if not content[i]:
            out.append(words[i])
            i += 1
            continue
        # pull in the determiners right before the span (already emitted, no punctuation between)
        start = i
        while (start > 0 and parts[start - 1][1].lower() in DETERMINERS and not parts[start - 1][2]
               and not parts[start][0] and out and out[-1] == words[start - 1]):
            start -= 1
            out.pop()
        lead = parts[start][0]
        j = i
        while j + 1 < len(words) and content[j + 1] and not parts[j][2] and not parts[j + 1][0]:
            j += 1
        out.append(f"{lead}{placeholder}{parts[j][2]}")
        spans += 1
        i = j + 1
    if spans == 0:
        lead, _, tail = parts[-1]
        out[-1] = f"{lead}{placeholder}{tail}"
        spans = 1
    return " ".join(out), spans


def self_masking_noise(n: int, dim: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(n, dim) noise for unit-norm embeddings: u * scale * g / sqrt(dim), u ~ U(0, 1) per row, g ~ N(0, I)."""
    u = torch.rand(n, 1, generator=generator)
    g = torch.randn(n, dim, generator=generator)
    return u * (scale / math.sqrt(dim)) * g


# --- data -----------------------------------------------------------------------------------------------------
def load_captions(cfg: LinCIRConfig) -> tuple[list[str], str, list[str]]:
    """(distinct captions in first-seen order, description, the captions as read) from exactly one of
    --captions / --pairs / --world."""
    given = [x for x in (cfg.captions, cfg.pairs, cfg.world) if x]
    if len(given) != 1:
        raise InputError("give exactly one caption source: --captions FILE, --pairs SOURCE or --world DIR")
    if cfg.captions:
        from zscir.data import iter_texts

        caps, desc = list(iter_texts(cfg.captions, cfg.caption_column or None)), f"captions:{cfg.captions}"
    elif cfg.pairs:
        from zscir.train.data import source_locations

        _, raw = source_locations(cfg.pairs, cfg.image_column, cfg.caption_column, need_captions=True)
        caps, desc = [str(c) for c in raw], f"pairs:{cfg.pairs}"
    else:
        from zscir.world import load_world

        caps, desc = [str(p["caption"]) for p in load_world(cfg.world).pairs], f"world:{cfg.world}"
    return clean_captions(caps, cfg.max_captions, desc), desc, caps


def clean_captions(captions: Sequence[str], limit: int = 0, where: str = "the data") -> list[str]:
    """Whitespace-normalised, without the placeholder character, blank ones and duplicates dropped."""
    out = list(dict.fromkeys(" ".join(str(c).replace("$", " ").split()) for c in captions))
    out = [c for c in out if c]
    if limit:
        out = out[:limit]
    if len(out) < 2:
        raise InputError(f"{where}: LinCIR needs at least 2 distinct non-empty captions, found {len(out)}")
    return out


def masked_prompts(backbone: Backbone, captions: Sequence[str], chunk: int = 256) -> tuple[list[str], list[int], int]:
    """(prompts, placeholder counts, how many fell back): each caption's masked prompt; one whose placeholders
    do not survive the tower's tokenisation (truncation) becomes FALLBACK_PROMPT."""
    ph = backbone.placeholder
    pairs = [mask_keywords(c, ph) for c in captions]
    prompts, counts = [p for p, _ in pairs], [k for _, k in pairs]
    by_count: dict[int, list[int]] = {}
    for i, k in enumerate(counts):
        by_count.setdefault(k, []).append(i)
    fallback = 0
    for k, rows in by_count.items():
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            try:
                backbone.tokenize([prompts[i] for i in part], n_pseudo=k)
                continue
            except InputError:
                pass
            for i in part:  # find the ones that fail
                try:
                    backbone.tokenize([prompts[i]], n_pseudo=k)
                except InputError:
                    prompts[i], counts[i] = FALLBACK_PROMPT.replace("$", ph), 1
                    fallback += 1
    if fallback:
        log.warning("%d of %d masked captions lose a placeholder to truncation; they train on %r", fallback,
                    len(prompts), FALLBACK_PROMPT)
    return prompts, counts, fallback


def encode_masked(backbone: Backbone, prompts: Sequence[str], counts: Sequence[int], tokens: torch.Tensor) -> torch.Tensor:
    """Embeddings (B, D) of the masked prompts, every placeholder of row b receiving tokens[b] (B, 1, W); one
    text-tower pass per placeholder count."""
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(counts):
        groups.setdefault(int(k), []).append(i)
    order, parts = [], []
    for k, rows in groups.items():
        idx = torch.tensor(rows, device=tokens.device)
        parts.append(backbone.encode_text_with_tokens([prompts[i] for i in rows], tokens[idx].expand(-1, k, -1)))
        order += rows
    out = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long, device=out.device)
    inverse[torch.tensor(order, device=out.device)] = torch.arange(len(order), device=out.device)
    return out[inverse]


# --- training -------------------------------------------------------------------------------------------------
def train_lincir(cfg: LinCIRConfig, backbone: Backbone | None = None,
                 captions: Sequence[str] | None = None) -> TrainResult:
    """Train a LinCIR mapper and save it to cfg.out. `captions` (a list) replaces the config's caption source."""
    t0 = time.time()
    cfg.check()
    if captions is not None:
        if cfg.captions or cfg.pairs or cfg.world:
            raise InputError("give the captions either as a list or as a source in the config, not both")
        raw = [str(c) for c in captions]
        caps, desc = clean_captions(raw, cfg.max_captions, "the captions"), "list"
    else:
        caps, desc, raw = load_captions(cfg)
    with distributed(cfg.device) as dist:
        return _train(cfg, backbone, caps, desc, raw, dist, t0)


def _train(cfg: LinCIRConfig, backbone: Backbone | None, caps: list[str], desc: str, raw: list[str],
           dist: DistInfo, t0: float) -> TrainResult:
    configure_threads()
    seed_everything(cfg.seed)
    device = device_for(dist, cfg.device)
    if backbone is None:
        from zscir.backbones import load_backbone

        backbone = load_backbone(cfg.backbone, str(device))
    elif cfg.device or dist.enabled:
        backbone = backbone.to(device)
    backbone = backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    dev = backbone.device
    # the frozen passes in the training precision (bf16 where native under "auto"); their cache keys say so
    with autocast(dev, cfg.precision):
        # the source's captions as read are pre-training's cache key; the kept (cleaned, distinct) ones are rows of it
        target = F.normalize(frozen_text_embeddings(backbone, caps, cfg.feature_cache, within=raw), dim=-1)
    prompts, counts, n_fallback = masked_prompts(backbone, caps)

    mcfg = replace(mapper_config_for(backbone, False, n_tokens=1, hidden=cfg.hidden or 4 * backbone.embed_dim),
                   dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)
    mapper = TokenMapper(mcfg).to(dev)
    mapper.init_output(backbone.word_embeddings().weight.detach().mean(0))
    ls = getattr(backbone, "logit_scale", None)
    scale = 1 / cfg.temperature if cfg.temperature > 0 else (
        float(ls.detach().exp()) if isinstance(ls, torch.Tensor) else 1 / 0.07)
    n, dim = len(caps), backbone.embed_dim
    bs = min(cfg.batch_size, n)
    if bs % dist.world_size:
        raise InputError(f"batch size {bs} does not split over {dist.world_size} processes")
    orders = EpochSequence(lambda: torch.Generator().manual_seed(cfg.seed), lambda g: torch.randperm(n, generator=g))

    def batches(epoch: int):
        order = orders(epoch)
        return [order[s : s + bs] for s in range(0, n - bs + 1, bs)]

    def loss_fn(b: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        t = target[b].to(dev)
        x = t
        if cfg.noise > 0:  # drawn for the global batch from (seed, step): the same under DDP and on resume
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + ctx.step)
            noise = self_masking_noise(ctx.global_size, dim, cfg.noise, g)[ctx.offset : ctx.offset + len(b)]
            x = t + noise.to(dev)
        tokens = mapper(x)
        rows = b.tolist()
        p = encode_masked(backbone, [prompts[i] for i in rows], [counts[i] for i in rows], tokens).float()
        if cfg.loss == "cosine":
            return ctx.batch_mean(1 - (p * t).sum(-1))
        return info_nce(p, t, scale, a_all=ctx.gather(p), b_all=ctx.gather_frozen(t), offset=ctx.offset)

    digest = hashlib.sha256("\n".join(caps).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    sig = {**config_signature(cfg), "method": LINCIR, "data": digest}
    task = Task(f"train {LINCIR}", mapper, batches, loss_fn, steps_per_epoch=n // bs, signature=sig)
    ecfg = engine_config(cfg)
    fit_res = fit(task, ecfg, dist)
    final = fit_res.final_loss
    if dist.is_main:
        save_mapper(cfg.out, mapper.cpu(), backbone.fingerprint(),
                    config={"method": LINCIR, "template": cfg.template, "train": asdict(cfg)},
                    trained_on={"captions": n, "source": desc, "digest": digest, "fallback_prompts": n_fallback},
                    final_loss=final, steps=fit_res.steps)
    finish(ecfg, dist)
    secs = time.time() - t0
    if dist.is_main:
        log.info("trained lincir mapper on %d captions, %d steps, loss %.4f -> %s (%.0f s)", n, fit_res.steps,
                 final, cfg.out, secs)
    return TrainResult(Path(cfg.out), fit_res.steps, secs, final,
                       {"captions": n, "source": desc, "method": LINCIR, "items_per_s": fit_res.items_per_s})


# --- CLI ------------------------------------------------------------------------------------------------------
def _add_args(p: argparse.ArgumentParser) -> None:
    d = LinCIRConfig()
    add_config_args(p.add_argument_group("captions (exactly one source; no images are read)"), d,
                    only=("captions", "world"))
    add_source_args(p, pairs=True)
    add_backbone_arg(p, d.backbone)
    add_engine_args(p, lr=d.lr, batch_size=d.batch_size, steps=d.steps, weight_decay=d.weight_decay, warmup=d.warmup)
    add_config_args(p, d)


def _config(args: argparse.Namespace) -> LinCIRConfig:
    cfg: LinCIRConfig = config_from_args(LinCIRConfig, args, **engine_args(args, min_batch=1), **source_args(args))
    return cfg


def _run(args: argparse.Namespace) -> int:
    res = train_lincir(_config(args))
    if is_main_process():
        print(f"saved {res.path}: lincir mapper on {res.info['captions']} captions ({res.info['source']}), "
              f"{res.steps} steps, final loss {res.final_loss:.4f}, {res.seconds:.0f} s")
    return 0


def register_trainers() -> None:
    from zscir.train.cli import register_trainer

    register_trainer("lincir", _add_args, _run,
                     help="LinCIR: a pseudo-token mapper trained on captions alone (text embedding + noise -> token "
                          "replacing the caption's keywords); towers frozen")


register_trainers()
