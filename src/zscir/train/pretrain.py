"""`zscir pretrain`: join the embedded default's towers with CLIP-style contrastive pre-training.

Both towers stay frozen (their features are computed once); the attention-pooling image head, the residual
text head and a learnable temperature are trained from scratch with symmetric InfoNCE on the world's
image-caption pairs. Training the heads from scratch with a learnable temperature reproduces CLIP's
modality gap (matched image-caption cosine well below 1), which TAT later closes."""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zscir.backbones.default import DefaultBackbone, DefaultBackboneConfig
from zscir.errors import InputError
from zscir.objectives import info_nce
from zscir.train.features import image_token_features, text_trunk_features
from zscir.utils.runtime import configure_threads, pick_device, seed_everything

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class PretrainConfig:
    """Settings of the contrastive pre-training (every run is reproducible from these + the world)."""

    world: str = ""
    out: str = ""
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    # The learnable temperature starts here. CLIP ends its training near 0.01; starting a small head there
    # keeps a CLIP-like gap between the image and text cones (Liang et al. 2022), the regime the published
    # composition methods (Slerp, TAT) were designed for. 0.07 (CLIP's start) lets the heads close it.
    init_temperature: float = 0.07
    val_fraction: float = 0.05
    seed: int = 0
    device: str = ""


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
    from zscir.world import load_world

    if not 0.01 <= cfg.init_temperature <= 1.0:
        raise InputError(f"init_temperature {cfg.init_temperature} is outside [0.01, 1] (the logit scale is capped at 100)")
    t0 = time.time()
    configure_threads()
    gen = seed_everything(cfg.seed)
    device = pick_device(cfg.device or None)
    world = load_world(cfg.world)
    model = DefaultBackbone(arch).to(device)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / cfg.init_temperature))
    pairs = world.pairs
    paths = [world.image_path(p["image"]) for p in pairs]
    captions = [p["caption"] for p in pairs]
    img = image_token_features(model, paths, desc="image features")
    txt = text_trunk_features(model, captions, desc="caption features")

    n = len(pairs)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(n * cfg.val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    model.train()
    bar = tqdm(total=total, desc="pretrain", unit="step")
    seen = 0
    for _epoch in range(cfg.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for s in range(steps_per_epoch):
            b = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            v = F.normalize(model.image_head(img[b].to(device, torch.float32)), dim=-1)
            w = F.normalize(model.text_head(txt[b].to(device)), dim=-1)
            loss = info_nce(v, w, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            seen += len(b)
            bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{1 / model.logit_scale.exp().item():.3f}",
                            pairs_s=f"{seen / max(1e-6, bar.format_dict['elapsed']):.0f}")
            bar.update(1)
    bar.close()
    model.eval()
    with torch.no_grad():
        v = F.normalize(model.image_head(img[val_idx].to(device, torch.float32)), dim=-1)
        w = F.normalize(model.text_head(txt[val_idx].to(device)), dim=-1)
        sim = w @ v.T
        gt = torch.arange(len(val_idx), device=device)
        t2i = (sim.argmax(1) == gt).float().mean().item() * 100
        i2t = (sim.argmax(0) == gt).float().mean().item() * 100
        matched = (v * w).sum(-1).mean().item()
    result = PretrainResult(
        path=Path(cfg.out), val_t2i_r1=t2i, val_i2t_r1=i2t, matched_cosine=matched,
        logit_scale=model.logit_scale.exp().item(), seconds=time.time() - t0,
    )
    model.save(cfg.out, trained_on={"world": str(cfg.world), "world_seed": world.meta.get("seed"),
                                    "world_size": world.meta.get("size")},
               pretrain=asdict(cfg), val={"t2i_R@1": t2i, "i2t_R@1": i2t, "matched_cosine": matched})
    log.info("pre-trained default backbone -> %s (held-out t2i R@1 %.1f, i2t R@1 %.1f, matched cosine %.3f, %.0f s)",
             cfg.out, t2i, i2t, matched, result.seconds)
    return result


def register(sub: argparse._SubParsersAction) -> None:
    from zscir.backbones import default_model_path

    p = sub.add_parser(
        "pretrain",
        help="pre-train the embedded default backbone's heads on a world's image-caption pairs",
        description="Contrastive (symmetric InfoNCE, learnable temperature) pre-training of the embedded "
        "default backbone: frozen EfficientNet-Lite0 + all-MiniLM-L6-v2, trained heads. Writes a checkpoint "
        "folder (model.safetensors + config.json with a fingerprint).",
    )
    p.add_argument("--world", required=True, help="world folder made by `zscir world`")
    p.add_argument("--out", default=str(default_model_path()), help="checkpoint folder (default: %(default)s)")
    d = PretrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--init-temperature", type=float, default=d.init_temperature,
                   help="starting value of the learnable temperature (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda if available)")

    def run(args: argparse.Namespace) -> int:
        res = pretrain(PretrainConfig(
            world=args.world, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, init_temperature=args.init_temperature, seed=args.seed, device=args.device,
        ))
        print(f"saved {res.path}: held-out text->image R@1 {res.val_t2i_r1:.1f}, image->text R@1 "
              f"{res.val_i2t_r1:.1f}, matched cosine {res.matched_cosine:.3f}, {res.seconds:.0f} s")
        return 0

    p.set_defaults(func=run)
