"""RTD (reducing task discrepancy of the text encoder): the inference side of the plug-in.

`zscir train rtd` tunes a copy of the text tower on text triplets so that it *composes* a pseudo token with
a modification text (see zscir/train/rtd.py). Any pseudo-token method (Pic2Word, two-stage, ...) can then
run its queries through that tuned tower while its gallery stays on the original backbone's image tower:

    tuned = load_rtd_text_encoder(CKPT, backbone)        # a copy of backbone with the tuned text tower
    method = with_rtd(Pic2Word(backbone, mapper), CKPT)  # "pic2word+rtd"

The tuned tower and its checkpoint format live in zscir.methods.tuned_text (two-stage loads RTD towers too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, cast

import torch

from zscir.backbones.base import Backbone
from zscir.backbones.tuned import TunedBackbone
from zscir.errors import CheckpointError
from zscir.methods.base import CompositionMethod, get_method_class, register_method
from zscir.methods.build import build_method
from zscir.methods.mapped import TwoStage, resolved_text_init
from zscir.methods.tuned_text import RTD_KIND, load_rtd_text_encoder

__all__ = ["RTD_KIND", "RTDMethod", "load_rtd_text_encoder", "with_rtd"]


class RTDMethod(CompositionMethod):
    """A pseudo-token method whose queries run through an RTD-tuned text tower; named `<base>+rtd`.

    The gallery, the mapper and the template are the base method's; only `text_encoder` is swapped."""

    def __init__(self, base: CompositionMethod, text_encoder: Backbone) -> None:
        if not hasattr(base, "text_encoder"):
            raise CheckpointError(f"RTD plugs into pseudo-token methods; {base.name!r} has no text encoder to tune")
        super().__init__(base.backbone)
        base.text_encoder = text_encoder
        self.base = base
        self.name = f"{base.name}+rtd"  # type: ignore[misc]  # a ClassVar elsewhere: this wrapper names itself per instance

    @property
    def gallery_id(self) -> str:
        return self.base.gallery_id

    def encode_gallery(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base.encode_gallery(pixels)

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.base.compose(pixels, texts)

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor | None:
        return self.base.compose_embedded(ref_embeddings, texts)

    def settings(self) -> dict[str, object]:
        enc = self.base.text_encoder
        return {**self.base.settings(), "rtd": enc.tuning("rtd") if isinstance(enc, TunedBackbone) else {}}


def with_rtd(method: CompositionMethod, path: str | Path, cls: type[RTDMethod] = RTDMethod) -> RTDMethod:
    """`method` (a pseudo-token method) with its text side replaced by the RTD-tuned tower at `path`."""
    if not hasattr(method, "text_encoder"):
        raise CheckpointError(f"RTD plugs into pseudo-token methods; {method.name!r} has no text encoder to tune")
    base = cast(Backbone, method.text_encoder)  # a pseudo-token method's text side (checked above)
    return cls(method, load_rtd_text_encoder(path, method.backbone, base=base))


def _rtd_base(doc: dict) -> str:
    """The method of the mapper an RTD checkpoint was trained for ("" when not recorded)."""
    return str((doc.get("mapper") or {}).get("method", ""))


class _RegisteredRTD(RTDMethod):
    """A registered `<base>+rtd` method built from an RTD checkpoint (it records the mapper it was trained for,
    so that one folder suffices)."""

    checkpoint_kinds: ClassVar[tuple[str, ...]] = (RTD_KIND,)
    base_name = ""

    @classmethod
    def serves(cls, doc: dict) -> tuple[int, str]:
        if doc.get("kind") != RTD_KIND:
            return 0, f"it is a {doc.get('kind')!r} checkpoint"
        base = _rtd_base(doc)
        if base == cls.base_name:
            return 2, ""
        if base == "two-stage/mapping-only":
            return 0, ("it tunes the text tower for a stage-1 mapper: train stage 2 on it (`zscir train composing "
                       "--mapper S1 --text-init DIR`) to get 'two-stage+rtd'")
        return 0, f"it was trained for a {base or 'unrecorded'} mapper"

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings) -> RTDMethod:
        get_method_class(cls.base_name)  # registered
        mapper_dir = checkpoint.resolve(checkpoint.doc.get("mapper") or {}, f"the {cls.base_name} checkpoint")
        base = build_method(cls.base_name, backbone, [mapper_dir])
        return with_rtd(base, checkpoint.path, cls)


@register_method("pic2word+rtd", order=90)
class Pic2WordRTD(_RegisteredRTD):
    """pic2word with its queries run through the RTD-tuned text tower (gallery and mapper unchanged)."""

    base_name = "pic2word"
    train_hint = "`zscir train pic2word --out P2W ...`, then `zscir train rtd --mapper P2W --out DIR ...`"


@register_method("two-stage+rtd", order=100)
class TwoStageRTD(_RegisteredRTD):
    """two-stage with RTD: stage 2 trained on an RTD-tuned text tower (a stage-2 checkpoint recording the RTD
    tower as `text_init`, what `zscir demo` builds), or an RTD tower tuned after stage 2 (an RTD checkpoint
    recording a two-stage mapper)."""

    base_name = "two-stage"
    checkpoint_kinds = (RTD_KIND, "zscir.two-stage")
    train_hint = ("`zscir train mapping --out S1 ...`, `zscir train rtd --mapper S1 --out RTD ...`, then "
                  "`zscir train composing --mapper S1 --text-init RTD --out DIR ...`")

    @classmethod
    def serves(cls, doc: dict) -> tuple[int, str]:
        if doc.get("kind") == "zscir.two-stage":
            if (doc.get("config") or {}).get("text_init"):
                return 2, ""
            return 0, "its stage 2 was trained on the original text tower (a 'two-stage' checkpoint)"
        return super().serves(doc)

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings) -> RTDMethod:
        if checkpoint.kind != "zscir.two-stage":
            return super().from_checkpoint(backbone, checkpoint, **settings)
        # stage 2 already runs on the RTD tower: the method is two-stage with that text side, named +rtd
        method = TwoStage(backbone, checkpoint=checkpoint.path, text_init=resolved_text_init(checkpoint))
        return cls(method, method.text_encoder)
