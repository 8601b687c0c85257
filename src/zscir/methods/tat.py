"""Slerp on a Text-Anchored-Tuned (TAT) image tower: `slerp+tat`.

TAT (trained by `zscir train tat`) puts LoRA adapters on the image tower and tunes them against the frozen
text tower. This module is the inference side: which layers get adapters (`tat_targets`), building a tuned
copy of a backbone from an adapter (or merged) checkpoint (`load_tat_backbone`), refusing a checkpoint made
for another backbone, and the `slerp+tat` method.

The tuned backbone shares the base's text tower object (it is frozen and must stay bit-identical); only the
image tower is copied. Its fingerprint combines the base fingerprint and the adapters', so gallery caches
never mix base and tuned embeddings.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from zscir.backbones.base import Backbone, TokenizedTexts
from zscir.checkpoint import check_fingerprint, load_checkpoint
from zscir.errors import CheckpointError
from zscir.methods.base import register_method
from zscir.methods.slerp import Slerp
from zscir.nn.lora import LoRAConfig, apply_lora, is_pointwise_conv, merge_lora

ADAPTERS_KIND = "zscir.tat-adapters"
MERGED_KIND = "zscir.tat-merged"
HF_VISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass
class TATAdapterConfig:
    """Where the adapters go and their shape (stored in the checkpoint, so loading rebuilds the same)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.1
    #: default backbone: the pointwise convs of the last `trunk_blocks` EfficientNet blocks (+ conv_head)
    trunk_blocks: int = 2
    #: also adapt the trained attention-pool head's input projection
    head: bool = True
    #: also adapt the head's output projection into the joint space: the one layer that can move the whole
    #: image cone toward the text cone (a modality gap is mostly such a shift); off by default because it takes
    #: the trainable share to 0.53%, past the published "under 0.5%"
    head_out: bool = False

    @property
    def lora(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout)


def tat_targets(backbone: Backbone, cfg: TATAdapterConfig) -> Callable[[str, nn.Module], bool]:
    """A predicate over (name inside backbone.image_tower, module) choosing the adapted layers."""
    tower = backbone.image_tower
    trunk = getattr(tower, "trunk", None)
    if trunk is not None and hasattr(trunk, "_blocks"):  # the embedded default (EfficientNet-Lite0)
        n = len(trunk._blocks)
        first = max(0, n - cfg.trunk_blocks)
        blocks = {f"trunk._blocks.{i}" for i in range(first, n)}

        def default_targets(name: str, m: nn.Module) -> bool:
            if (cfg.head and name == "head.proj") or (cfg.head_out and name == "head.out"):
                return isinstance(m, nn.Linear)
            if cfg.trunk_blocks > 0 and name == "trunk._conv_head":
                return is_pointwise_conv(m)
            block, _, leaf = name.rpartition(".")
            return block in blocks and leaf in ("_expand_conv", "_project_conv") and is_pointwise_conv(m)

        return default_targets

    def vit_targets(name: str, m: nn.Module) -> bool:  # Hugging Face CLIP / SigLIP vision transformers
        return isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in HF_VISION_PROJECTIONS and ".layers." in name

    return vit_targets


def add_tat_adapters(backbone: Backbone, cfg: TATAdapterConfig) -> list[str]:
    """Wrap the target layers of backbone.image_tower with LoRA in place; only adapters stay trainable."""
    _freeze_own(backbone)
    wrapped = apply_lora(backbone.image_tower, tat_targets(backbone, cfg), cfg.lora, freeze=True)
    if not wrapped:
        raise CheckpointError(f"no layer of backbone {backbone.spec!r} matches the TAT adapter targets")
    return wrapped


def _freeze_own(backbone: Backbone) -> None:
    """requires_grad=False on every parameter except the text tower's: that tower is shared with the base
    backbone, so its flags belong to the base (TAT never hands it to an optimiser either way)."""
    shared = {id(p) for p in backbone.text_tower.parameters()}
    for p in backbone.parameters():
        if id(p) not in shared:
            p.requires_grad_(False)


def trainable_parameters(backbone: Backbone) -> tuple[int, int]:
    """(adapter parameters that train, all parameters of the backbone)."""
    total = sum(p.numel() for p in backbone.parameters())
    return sum(p.numel() for p in backbone.image_tower.parameters() if p.requires_grad), total


def copy_image_side(backbone: Backbone) -> Backbone:
    """A deep copy of backbone whose text tower (and tokenizer) is the *same object* as the original's."""
    memo: dict[int, object] = {id(backbone.text_tower): backbone.text_tower}
    for name in ("tokenizer", "processor"):
        if hasattr(backbone, name):
            memo[id(getattr(backbone, name))] = getattr(backbone, name)
    return copy.deepcopy(backbone, memo)


class TunedBackbone(Backbone):
    """A backbone whose image tower carries TAT adapters; every call is delegated to `inner`."""

    def __init__(self, inner: Backbone, adapters_fingerprint: str, base_fingerprint: str) -> None:
        super().__init__()
        self.inner = inner
        self.spec = f"{inner.spec}+tat"
        self.embed_dim = inner.embed_dim
        self.word_dim = inner.word_dim
        self.placeholder = inner.placeholder
        self.max_text_tokens = inner.max_text_tokens
        self.base_fingerprint = base_fingerprint
        self.adapters_fingerprint = adapters_fingerprint
        self._fp = hashlib.sha256(f"{base_fingerprint}+tat:{adapters_fingerprint}".encode()).hexdigest()[:16]

    @property
    def preprocess_config(self):
        return self.inner.preprocess_config

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner.image_tokens(pixels)

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.image_head(tokens)

    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        return self.inner.tokenize(texts, n_pseudo)

    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        return self.inner.text_trunk_from_embeddings(inputs_embeds, tok)

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.inner.text_head(pooled)

    def word_embeddings(self) -> nn.Embedding:
        return self.inner.word_embeddings()

    def fingerprint(self) -> str:
        return self._fp

    @property
    def image_tower(self) -> nn.Module:
        return self.inner.image_tower

    @property
    def text_tower(self) -> nn.Module:
        return self.inner.text_tower

    def train(self, mode: bool = True) -> TunedBackbone:
        self.training = mode
        self.inner.train(mode)
        return self


def load_tat_backbone(backbone: Backbone, path: str | Path) -> TunedBackbone:
    """The base backbone with the TAT checkpoint at `path` applied (adapters or a merged tower).

    Refuses a checkpoint trained on another backbone (its recorded fingerprint differs)."""
    ckpt = load_checkpoint(path, (ADAPTERS_KIND, MERGED_KIND))
    base_fp = backbone.fingerprint()
    if ckpt.backbone_fingerprint is None:
        raise CheckpointError(f"{path}: TAT checkpoint records no backbone fingerprint")
    check_fingerprint(ckpt, base_fp, "TAT adapter checkpoint")
    tuned = copy_image_side(backbone)
    tower = tuned.image_tower
    if ckpt.kind == ADAPTERS_KIND:
        from zscir.config import from_dict

        cfg = from_dict(TATAdapterConfig, ckpt.config["adapters"])
        add_tat_adapters(tuned, cfg)
        own = tower.state_dict()
        unknown = sorted(set(ckpt.tensors) - set(own))
        missing = sorted(k for k in own if (".lora_A" in k or ".lora_B" in k) and k not in ckpt.tensors)
        if unknown or missing:
            raise CheckpointError(f"{path}: adapters do not fit this backbone (unknown {unknown[:3]}, missing {missing[:3]})")
        try:
            tower.load_state_dict(ckpt.tensors, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: adapter shapes do not fit this backbone ({e})") from e
        merge_lora(tower)  # inference: fold the adapters in, no extra cost per image
    else:
        try:
            tower.load_state_dict(ckpt.tensors, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: merged image tower does not fit this backbone ({e})") from e
    _freeze_own(tuned)
    out = TunedBackbone(tuned, ckpt.fingerprint, base_fp).to(backbone.device)
    return out.eval()


def adapter_summary(cfg: TATAdapterConfig) -> dict:
    return asdict(cfg)


@register_method("slerp+tat")
class SlerpTAT(Slerp):
    """Slerp on the TAT-tuned image tower: the reference image and the gallery are embedded by the tuned
    tower, the text by the frozen text tower. `tat` is a checkpoint folder (adapters or merged) or an
    already built TunedBackbone; without one, `backbone` is taken to be tuned already."""

    checkpoint_kinds = (ADAPTERS_KIND, MERGED_KIND)
    train_hint = "`zscir train tat --pairs SOURCE --out DIR`"

    def __init__(self, backbone: Backbone, tat: str | Path | TunedBackbone | None = None, alpha: float = 0.8) -> None:
        if isinstance(tat, (str, Path)):
            backbone = load_tat_backbone(backbone, tat)
        elif isinstance(tat, TunedBackbone):
            backbone = tat
        elif not isinstance(backbone, TunedBackbone):
            # without adapters this would be plain slerp under another name: never silently
            from zscir.errors import InputError
            from zscir.methods.build import missing_checkpoint_message

            raise InputError(missing_checkpoint_message(type(self)))
        super().__init__(backbone, alpha=alpha)
        self.checkpoint = str(tat) if isinstance(tat, (str, Path)) else None

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings) -> SlerpTAT:
        return cls(backbone, tat=checkpoint.path, **settings)

    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"alpha": self.alpha}
        if isinstance(self.backbone, TunedBackbone):
            out["adapters_fingerprint"] = self.backbone.adapters_fingerprint
        if self.checkpoint:
            out["checkpoint"] = self.checkpoint
        return out
