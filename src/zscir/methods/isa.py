"""ISA (Image2Sentence, asymmetric): an adaptive token learner turns an image's feature map into a *sentence*
of M pseudo tokens, which the frozen text tower reads inside the template (`a photo of $ that {text}`, the
single `$` expanding to M slots).

Two deployments share one token learner design:

- `isa` (asymmetric): the query side runs a small CNN (`LightEncoder`, about a tenth of the gallery tower's
  FLOPs at the same resolution) + the token learner; the gallery is embedded once by the large frozen image
  tower of the backbone. The query side (pixels -> tokens) needs no backbone weights, so it exports to ONNX
  on its own (`zscir export isa`).
- `isa/symmetric`: the token learner reads the large tower's own local features (for comparison).

`AdaptiveTokenLearner`: M learnable queries cross-attend to the feature-map cells (plus position
embeddings); each output goes through an MLP and a projection to the text tower's word space, scaled to
the mean norm of the real word embeddings, so the tokens look like words to the frozen tower. The attention
maps are returned too: training aligns each token with the large tower's local features under its map.
Training lives in `zscir.train.isa` (`zscir train isa`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zscir.backbones.base import Backbone
from zscir.checkpoint import check_fingerprint, load_checkpoint, save_checkpoint
from zscir.config import from_dict
from zscir.errors import CheckpointError, InputError
from zscir.methods.base import register_method
from zscir.methods.pseudo_token import DEFAULT_TEMPLATE, PseudoTokenMethod

KIND = "zscir.isa"
MODES = ("asymmetric", "symmetric")


@dataclass
class ISAConfig:
    """Architecture of the ISA query side (everything that changes a tensor shape) + its template."""

    mode: str = "asymmetric"  # "asymmetric": light CNN query encoder; "symmetric": the large tower's features
    n_tokens: int = 4  # M, the length of the pseudo-token sentence
    image_size: int = 96
    in_channels: int = 3
    # light encoder: channel widths of the stride-2 stages (5 stages: 96 px -> 3x3) and the output width
    light_widths: tuple[int, ...] = (16, 32, 64, 128, 192)
    light_out: int = 256
    # token learner
    feat_dim: int = 1280  # channels of the feature map the learner reads (light_out or the large tower's)
    n_cells: int = 9
    dim: int = 256
    heads: int = 4
    word_dim: int = 384
    word_norm: float = 1.0  # mean L2 norm of the text tower's word embeddings (tokens are scaled to it)
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"ISA mode {self.mode!r} is not one of {MODES}")
        if int(self.n_tokens) < 1:
            raise InputError(f"ISA needs at least one pseudo token, got n_tokens={self.n_tokens}")
        self.light_widths = tuple(int(w) for w in self.light_widths)
        if self.dim % self.heads:
            raise InputError(f"token learner width {self.dim} is not divisible by its {self.heads} heads")


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class LightEncoder(nn.Module):
    """The query-side CNN: five stride-2 stages (96 px -> 3x3), then a 1x1 conv; returns cells (B, L, C).

    Stage 1 is a plain 3x3 conv, stage 2 depthwise-separable, the rest plain 3x3 convs (cheap at their
    small resolutions); all exportable ops (Conv, BatchNorm, ReLU)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128, 192), out: int = 256, in_channels: int = 3) -> None:
        super().__init__()
        w = list(widths)
        if len(w) != 5:
            raise InputError(f"the light encoder has 5 stride-2 stages, got widths {tuple(w)}")
        layers: list[nn.Module] = [_conv_bn(in_channels, w[0], 3, 2)]
        layers += [_conv_bn(w[0], w[0], 3, 2, groups=w[0]), _conv_bn(w[0], w[1], 1)]  # depthwise-separable
        layers += [_conv_bn(w[1], w[2], 3, 2), _conv_bn(w[2], w[3], 3, 2), _conv_bn(w[3], w[4], 3, 2)]
        layers += [nn.Conv2d(w[4], out, 1)]
        self.net = nn.Sequential(*layers)
        self.out_dim = out

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels).flatten(2).transpose(1, 2)


class AdaptiveTokenLearner(nn.Module):
    """M learnable queries cross-attend to a feature map (B, L, C) -> tokens (B, M, W) and maps (B, M, L)."""

    word_norm: torch.Tensor  # a buffer

    def __init__(self, feat_dim: int, n_cells: int, n_tokens: int, word_dim: int, dim: int = 256, heads: int = 4,
                 word_norm: float = 1.0) -> None:
        super().__init__()
        self.heads, self.n_tokens = heads, n_tokens
        self.in_norm = nn.LayerNorm(feat_dim)
        self.in_proj = nn.Linear(feat_dim, dim)
        self.pos = nn.Parameter(torch.randn(n_cells, dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(n_tokens, dim) * 0.5)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.out_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, word_dim)
        self.register_buffer("word_norm", torch.tensor(float(word_norm)))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = feats.shape
        x = self.in_proj(self.in_norm(feats)) + self.pos[:n]
        # the queries are conditioned on the image's mean cell, so they adapt to it (and stay learnable)
        qin = self.queries.unsqueeze(0) + x.mean(dim=1, keepdim=True)  # (B, M, dim)
        h, d = self.heads, x.shape[-1] // self.heads
        q = self.q(qin).reshape(b, -1, h, d).transpose(1, 2)  # (B, h, M, d)
        k = self.k(x).reshape(b, n, h, d).transpose(1, 2)  # (B, h, L, d)
        v = self.v(x).reshape(b, n, h, d).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # (B, h, M, L)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, h * d)
        y = qin + self.o(y)
        y = y + self.mlp(self.mlp_norm(y))
        tokens = F.normalize(self.out(self.out_norm(y)), dim=-1) * self.word_norm
        return tokens, attn.mean(dim=1)


class ISAQueryEncoder(nn.Module):
    """The exportable query side of asymmetric ISA: pixels (B, 3, H, W) -> pseudo tokens (B, M, W).

    Refuses pixels of the wrong shape with a message that gives the expected one."""

    def __init__(self, light: LightEncoder, learner: AdaptiveTokenLearner, image_size: int, in_channels: int = 3) -> None:
        super().__init__()
        self.light = light
        self.learner = learner
        self.expected = (in_channels, image_size, image_size)

    def check(self, pixels: torch.Tensor) -> None:
        check_pixels(pixels, self.expected)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check(pixels)
        return self.learner(self.light(pixels))[0]


def check_pixels(pixels: torch.Tensor, expected: tuple[int, int, int]) -> None:
    """Refuse pixels that are not (B, C, H, W) with the expected (C, H, W), naming the expected shape."""
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(expected):
        raise InputError(f"expected pixels of shape (B, {', '.join(map(str, expected))}), got {tuple(pixels.shape)}")


def word_embedding_norm(backbone: Backbone) -> float:
    """Mean L2 norm of the text tower's word embeddings (what a pseudo token should look like)."""
    with torch.no_grad():
        return float(backbone.word_embeddings().weight.float().norm(dim=-1).mean())


def large_feature_shape(backbone: Backbone) -> tuple[int, int]:
    """(cells, channels) of the backbone's image-tower local features at its preprocessing size."""
    return backbone.local_feature_shape()


def light_cells(cfg: ISAConfig) -> int:
    """Cells of the light encoder's feature map at the config's resolution (five stride-2 stages: ceil(n/2)
    each, e.g. 96 px -> 3x3, 224 px -> 7x7, 64 px -> 2x2)."""
    side = int(cfg.image_size)
    for _ in range(5):
        side = (side + 1) // 2
    return side * side


def isa_config_for(backbone: Backbone, mode: str = "asymmetric", n_tokens: int = 4, **arch: Any) -> ISAConfig:
    """An ISAConfig that fits `backbone` (its word width, word norm, resolution and feature map). The token
    learner reads the light encoder's grid (asymmetric) or the large tower's tokens (symmetric), whatever the
    tower: a CNN grid, a ViT's CLS + patches of any patch size, or SigLIP's patches without a CLS."""
    n_cells, large_dim = large_feature_shape(backbone)
    cfg = ISAConfig(mode=mode, n_tokens=n_tokens, image_size=backbone.preprocess_config.size, n_cells=n_cells,
                    word_dim=backbone.word_dim, word_norm=word_embedding_norm(backbone), **arch)
    cfg.feat_dim = cfg.light_out if mode == "asymmetric" else large_dim
    if mode == "asymmetric":
        cfg.n_cells = light_cells(cfg)
    return cfg


def align_cells(feats: torch.Tensor, n_cells: int) -> torch.Tensor:
    """The large tower's local features (B, L, C) on a square grid of `n_cells` cells (the light encoder's),
    so that training can compare them cell by cell. Prefix tokens (a ViT's CLS) are dropped (L = prefix + s*s
    with s*s the largest square <= L) and the s x s patch grid is average-pooled to the target grid.
    Unchanged when L == n_cells (the default backbone: 3x3 both)."""
    b, n, c = feats.shape
    if n == n_cells:
        return feats
    side, target = math.isqrt(n), math.isqrt(n_cells)
    if target * target != n_cells:
        raise InputError(f"ISA: the light encoder's {n_cells} cells are not a square grid")
    grid = feats[:, n - side * side:].transpose(1, 2).reshape(b, c, side, side)
    pooled = F.adaptive_avg_pool2d(grid.float(), (target, target)).to(feats.dtype)
    return pooled.flatten(2).transpose(1, 2)


@register_method("isa", order=110)
class ISA(PseudoTokenMethod):
    """Asymmetric ISA: light query encoder + adaptive token learner; gallery by the backbone's large tower."""

    def __init__(self, backbone: Backbone, config: ISAConfig | None = None, template: str | None = None) -> None:
        config = config or isa_config_for(backbone, self.expected_mode)
        super().__init__(backbone, template or config.template)
        self.config = config
        if config.mode != self.expected_mode:
            raise InputError(f"method {self.name!r} needs an ISA config of mode {self.expected_mode!r}, got {config.mode!r}")
        if config.word_dim != backbone.word_dim:
            raise CheckpointError(f"ISA tokens are {config.word_dim}-d but the backbone's words are {backbone.word_dim}-d")
        self.light = (LightEncoder(config.light_widths, config.light_out, config.in_channels)
                      if config.mode == "asymmetric" else None)
        self.learner = AdaptiveTokenLearner(config.feat_dim, config.n_cells, config.n_tokens, config.word_dim,
                                            config.dim, config.heads, config.word_norm)
        self.to(backbone.device)

    expected_mode = "asymmetric"
    checkpoint_kinds = (KIND,)
    train_hint = "`zscir train isa --mode asymmetric --images SOURCE --out DIR`"

    @classmethod
    def serves(cls, doc: dict) -> tuple[int, str]:
        if doc.get("kind") != KIND:
            return 0, f"it is a {doc.get('kind')!r} checkpoint"
        mode = (doc.get("config") or {}).get("mode", "asymmetric")
        if mode == cls.expected_mode:
            return 2, ""
        return 0, f"it holds a {mode} ISA query side"

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings) -> ISA:
        return load_isa(checkpoint.path, backbone)

    # --- the query side ----------------------------------------------------------------------------------
    def query_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The feature map the token learner reads: the light encoder's (asymmetric) or the large tower's."""
        if self.light is None:
            return self.backbone.image_tokens(pixels)
        check_pixels(pixels, (self.config.in_channels, self.config.image_size, self.config.image_size))
        return self.light(pixels)

    def pseudo_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.learner(self.query_features(pixels))[0]

    def query_encoder(self) -> ISAQueryEncoder:
        """The exportable pixels -> tokens module (asymmetric only; it shares this method's weights)."""
        if self.light is None:
            raise InputError("isa/symmetric runs the large image tower on the query side; export the asymmetric 'isa'")
        return ISAQueryEncoder(self.light, self.learner, self.config.image_size, self.config.in_channels)

    def settings(self) -> dict[str, object]:
        return {"template": self.template, "n_tokens": self.config.n_tokens, "mode": self.config.mode}

    # --- persistence -----------------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        state = {f"learner.{k}": v for k, v in self.learner.state_dict().items()}
        if self.light is not None:
            state.update({f"light.{k}": v for k, v in self.light.state_dict().items()})
        return state

    def save(self, path: str | Path, **meta: object) -> Path:
        cfg = asdict(self.config)
        cfg["template"] = self.template
        return save_checkpoint(path, KIND, cfg, self.trained_state(),
                               backbone_fingerprint=self.backbone.fingerprint(), **meta)


@register_method("isa/symmetric", order=120)
class ISASymmetric(ISA):
    """ISA with the token learner on the large tower's local features (query and gallery share the tower)."""

    expected_mode = "symmetric"
    train_hint = "`zscir train isa --mode symmetric --images SOURCE --out DIR`"


def load_isa_modules(path: str | Path) -> tuple[ISAConfig, LightEncoder | None, AdaptiveTokenLearner, dict]:
    """The query-side modules of an ISA checkpoint, without any backbone (what export needs)."""
    ckpt = load_checkpoint(path, KIND)
    cfg = from_dict(ISAConfig, ckpt.config)
    light = LightEncoder(cfg.light_widths, cfg.light_out, cfg.in_channels) if cfg.mode == "asymmetric" else None
    learner = AdaptiveTokenLearner(cfg.feat_dim, cfg.n_cells, cfg.n_tokens, cfg.word_dim, cfg.dim, cfg.heads, cfg.word_norm)
    _load_into(path, learner, ckpt.tensors, "learner.")
    if light is not None:
        _load_into(path, light, ckpt.tensors, "light.")
    return cfg, light, learner, ckpt.meta


def _load_into(path: str | Path, module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(sub)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the ISA config ({e})") from e


def load_isa(path: str | Path, backbone: Backbone) -> ISA:
    """Load an ISA checkpoint (either mode) for `backbone`; refuses one trained on another backbone."""
    ckpt = load_checkpoint(path, KIND)
    check_fingerprint(ckpt, backbone.fingerprint(), "ISA checkpoint")
    cfg = from_dict(ISAConfig, ckpt.config)
    cls = ISA if cfg.mode == "asymmetric" else ISASymmetric
    method = cls(backbone, cfg)
    _load_into(path, method.learner, ckpt.tensors, "learner.")
    if method.light is not None:
        _load_into(path, method.light, ckpt.tensors, "light.")
    return method.to(backbone.device).eval()
