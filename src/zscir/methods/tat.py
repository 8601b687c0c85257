"""Slerp on a Text-Anchored-Tuned (TAT) image tower: `slerp+tat`.

TAT (trained by `zscir train tat`) puts LoRA adapters on the image tower and tunes them against the frozen
text tower. This module is the inference side: which layers get adapters (`tat_targets`, asking the backbone), building a
tuned copy of a backbone from an adapter (or merged) checkpoint (`load_tat_backbone`), refusing a checkpoint
made for another backbone, and the `slerp+tat` method.

The tuned backbone is a `TunedBackbone` (zscir.backbones.tuned): it shares the base's text tower object (frozen,
it must stay bit-identical); only the image tower is copied. Its fingerprint combines the base fingerprint and
the adapters', so gallery caches never mix base and tuned embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zscir.backbones.base import AdapterTargets, Backbone
from zscir.backbones.tuned import TunedBackbone
from zscir.checkpoint import check_fingerprint, load_checkpoint
from zscir.config import from_dict
from zscir.errors import CheckpointError, InputError
from zscir.methods.base import register_method
from zscir.methods.build import missing_checkpoint_message
from zscir.methods.slerp import Slerp
from zscir.nn.lora import LoRAConfig, apply_lora, merge_lora

ADAPTERS_KIND = "zscir.tat-adapters"
MERGED_KIND = "zscir.tat-merged"


@dataclass
class TATAdapterConfig:
    """Where the adapters go and their shape (stored in the checkpoint, so loading rebuilds the same)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.1
    #: adapt the trunk's last `trunk_blocks` blocks (the default backbone: their pointwise convs + the head conv;
    #: a backbone may adapt all its blocks regardless, see its `adapter_targets`)
    trunk_blocks: int = 2
    #: also adapt the image head's input projection (the default's attention-pool head)
    head: bool = True
    #: also adapt the head's output projection into the joint space: the one layer that can move the whole
    #: image cone toward the text cone (a modality gap is mostly such a shift); off by default because it takes
    #: the trainable share to 0.53%, past the published "under 0.5%"
    head_out: bool = False

    @property
    def lora(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout)


def tat_targets(backbone: Backbone, cfg: TATAdapterConfig) -> AdapterTargets:
    """A predicate over (name inside backbone.image_tower, module) choosing the adapted layers: the backbone's
    own image adapter targets for this config."""
    return backbone.adapter_targets("image", last_blocks=cfg.trunk_blocks, head=cfg.head, head_out=cfg.head_out)


def tat_copy(backbone: Backbone) -> TunedBackbone:
    """A tuned copy of `backbone` for TAT: its own image tower, the base's text tower (the same object)."""
    return TunedBackbone.copy_of(backbone, tune="image", tag="tat")


def add_tat_adapters(tuned: TunedBackbone, cfg: TATAdapterConfig) -> list[str]:
    """Wrap the target layers of tuned.image_tower with LoRA in place; only adapters stay trainable."""
    tuned.freeze()
    wrapped = apply_lora(tuned.image_tower, tat_targets(tuned, cfg), cfg.lora, freeze=True)
    if not wrapped:
        raise CheckpointError(f"no layer of backbone {tuned.spec!r} matches the TAT adapter targets")
    return wrapped


def trainable_parameters(backbone: Backbone) -> tuple[int, int]:
    """(adapter parameters that train, all parameters of the backbone)."""
    total = sum(p.numel() for p in backbone.parameters())
    return sum(p.numel() for p in backbone.image_tower.parameters() if p.requires_grad), total


def load_tat_backbone(backbone: Backbone, path: str | Path) -> TunedBackbone:
    """The base backbone with the TAT checkpoint at `path` applied (adapters or a merged tower).

    Refuses a checkpoint trained on another backbone (its recorded fingerprint differs)."""
    ckpt = load_checkpoint(path, (ADAPTERS_KIND, MERGED_KIND))
    if ckpt.backbone_fingerprint is None:
        raise CheckpointError(f"{path}: TAT checkpoint records no backbone fingerprint")
    check_fingerprint(ckpt, backbone.fingerprint(), "TAT adapter checkpoint")
    tuned = tat_copy(backbone)
    tower = tuned.image_tower
    if ckpt.kind == ADAPTERS_KIND:
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
    tuned.freeze()
    tuned.set_tuning({"path": str(path), "fingerprint": ckpt.fingerprint, "kind": ckpt.kind})
    return tuned.to(backbone.device).eval()


@register_method("slerp+tat", order=50)
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
        elif not (isinstance(backbone, TunedBackbone) and "image" in backbone.tuned_towers):
            # without adapters this would be plain slerp under another name: never silently
            raise InputError(missing_checkpoint_message(type(self)))
        super().__init__(backbone, alpha=alpha)
        self.checkpoint = str(tat) if isinstance(tat, (str, Path)) else None

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings) -> SlerpTAT:
        return cls(backbone, tat=checkpoint.path, **settings)

    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"alpha": self.alpha}
        if isinstance(self.backbone, TunedBackbone) and self.backbone.tuning("tat"):
            out["adapters_fingerprint"] = self.backbone.tuning("tat")["fingerprint"]
        if self.checkpoint:
            out["checkpoint"] = self.checkpoint
        return out
