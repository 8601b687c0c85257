"""Pseudo-token methods driven by a trained mapper: `pic2word`, `two-stage/mapping-only` and `two-stage`.

    pic2word                 single-token MLP mapper on the pooled image embedding, frozen towers
    two-stage/mapping-only   stage 1 of "From Mapping to Composing": the mapper also attends to the image
                             tower's local features (visual semantic injection), trained with soft text
                             alignment; frozen towers
    two-stage                stage 1's mapper (frozen) + stage 2: LoRA adapters on the text tower, tuned on
                             synthetic CIR triplets to compose the pseudo token with the modification text

The gallery is always embedded by the original (untouched) backbone; only the query side changes (two-stage's
tuned text side: zscir.methods.tuned_text). Each method is built from a checkpoint folder made by
`zscir train pic2word | mapping | composing`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from zscir.backbones.base import Backbone
from zscir.checkpoint import check_fingerprint, load_checkpoint
from zscir.errors import CheckpointError, InputError
from zscir.methods.base import register_method
from zscir.methods.build import missing_checkpoint_message
from zscir.methods.pseudo_token import DEFAULT_TEMPLATE, PseudoTokenMethod
from zscir.methods.tuned_text import load_text_adapters
from zscir.nn.mappers import MAPPER_KIND, TokenMapper, load_mapper

TWO_STAGE_KIND = "zscir.two-stage"


class MappedTokenMethod(PseudoTokenMethod):
    """Pseudo tokens = mapper(pooled image embedding, local features if the mapper injects them)."""

    #: checkpoint kinds this method loads
    kinds: tuple[str, ...] = (MAPPER_KIND,)
    checkpoint_kinds: ClassVar[tuple[str, ...]] = (MAPPER_KIND,)
    #: the `config.method` of the checkpoints made for this method
    made_by: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, checkpoint: str | Path | None = None, mapper: TokenMapper | None = None,
                 template: str = DEFAULT_TEMPLATE, text_encoder: Backbone | None = None,
                 text_init: str | Path | None = None) -> None:
        if mapper is None:
            if not checkpoint:
                raise InputError(missing_checkpoint_message(type(self)))
            mapper, ckpt, text_encoder = self._load(backbone, checkpoint, text_init)
            template = ckpt.config.get("template", template)
        super().__init__(backbone, template=template, text_encoder=text_encoder)
        self.checkpoint_path = str(checkpoint) if checkpoint else ""
        if mapper.cfg.word_dim != self.text_encoder.word_dim or mapper.cfg.embed_dim != backbone.embed_dim:
            raise InputError(f"mapper shapes (embed {mapper.cfg.embed_dim}, word {mapper.cfg.word_dim}) do not fit "
                             f"the backbone (embed {backbone.embed_dim}, word {self.text_encoder.word_dim})")
        self.mapper = mapper.to(backbone.device).eval()

    def _load(self, backbone: Backbone, path: str | Path, text_init: str | Path | None = None):
        mapper, ckpt = load_mapper(path, backbone.fingerprint(), kind=self.kinds)
        return mapper, ckpt, None

    @classmethod
    def serves(cls, doc: dict[str, Any]) -> tuple[int, str]:
        made_for = (doc.get("config") or {}).get("method", "")
        if doc.get("kind") not in cls.checkpoint_kinds:
            return 0, f"it is a {doc.get('kind')!r} checkpoint"
        if made_for in cls.made_by:
            return 2, ""
        return 0, f"it holds a {made_for or '?'} mapper"

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings: Any) -> MappedTokenMethod:
        return cls(backbone, checkpoint=checkpoint.path)

    def pseudo_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        local = self.backbone.image_tokens(pixels)
        emb = F.normalize(self.backbone.image_head(local), dim=-1)
        return self.mapper(emb, local if self.mapper.uses_local else None)

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor | None:
        if self.mapper.uses_local:
            return None  # needs the local feature map, not only the pooled embedding
        emb = F.normalize(ref_embeddings.to(self.backbone.device, torch.float32), dim=-1)
        return self.compose_tokens(self.mapper(emb), texts)

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "checkpoint": self.checkpoint_path, "n_tokens": self.mapper.cfg.n_tokens,
                "injection": self.mapper.cfg.injection}


@register_method("pic2word", order=60)
class Pic2Word(MappedTokenMethod):
    """Pic2Word-style: one pseudo word from an MLP on the pooled image embedding; towers frozen."""

    made_by = ("pic2word",)
    train_hint = "`zscir train pic2word --images SOURCE --out DIR`"


@register_method("two-stage/mapping-only", order=70)
class TwoStageMappingOnly(MappedTokenMethod):
    """Stage 1 only: injection mapper (soft text alignment), frozen text tower. Also loads a stage-2
    checkpoint and ignores its adapters (the stage-1 mapper is inside it)."""

    kinds = (MAPPER_KIND, TWO_STAGE_KIND)
    checkpoint_kinds = (MAPPER_KIND, TWO_STAGE_KIND)
    made_by = ("two-stage/mapping-only",)
    train_hint = "`zscir train mapping --pairs SOURCE --out DIR`"

    @classmethod
    def serves(cls, doc: dict[str, Any]) -> tuple[int, str]:
        if doc.get("kind") == TWO_STAGE_KIND:
            return 1, ""  # the stage-1 mapper is inside every stage-2 checkpoint
        return super().serves(doc)


@register_method("two-stage", order=80)
class TwoStage(MappedTokenMethod):
    """Stage 1's frozen mapper + a text tower tuned with LoRA on synthetic triplets (stage 2)."""

    kinds = (TWO_STAGE_KIND,)
    checkpoint_kinds = (TWO_STAGE_KIND,)
    made_by = ("two-stage",)
    train_hint = ("`zscir train mapping --pairs SOURCE --out S1`, then `zscir train composing "
                  "--cir-triplets FILE --mapper S1 --out DIR` (`zscir data make-triplets` makes the triplets)")

    @classmethod
    def serves(cls, doc: dict[str, Any]) -> tuple[int, str]:
        if doc.get("kind") == TWO_STAGE_KIND and (doc.get("config") or {}).get("text_init"):
            return 0, "its stage 2 was trained on an RTD text tower, so it is a 'two-stage+rtd' checkpoint"
        return super().serves(doc)

    @classmethod
    def from_checkpoint(cls, backbone: Backbone, checkpoint, **settings: Any) -> TwoStage:
        return cls(backbone, checkpoint=checkpoint.path, text_init=resolved_text_init(checkpoint))

    def _load(self, backbone: Backbone, path: str | Path, text_init: str | Path | None = None):
        mapper, ckpt = load_mapper(path, backbone.fingerprint(), kind=self.kinds)
        return mapper, ckpt, load_text_adapters(backbone, ckpt, text_init=text_init)

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "text_adapters": "lora"}


def resolved_text_init(ref: Any) -> Path | None:
    """Where the RTD tower a stage-2 checkpoint records (`text_init`) is now (see CheckpointRef.resolve)."""
    init = ref.config.get("text_init") or None
    return ref.resolve(init, "the RTD text tower") if init else None


def load_mapped_method(backbone: Backbone, path: str | Path) -> MappedTokenMethod:
    """The method a checkpoint folder holds (kind + config decide which)."""
    ckpt = load_checkpoint(path, (MAPPER_KIND, TWO_STAGE_KIND))
    check_fingerprint(ckpt, backbone.fingerprint(), what="pseudo-token checkpoint")
    name = ckpt.config.get("method", "pic2word")
    cls = {"pic2word": Pic2Word, "two-stage/mapping-only": TwoStageMappingOnly, "two-stage": TwoStage}.get(name)
    if cls is None:
        raise CheckpointError(f"{path}: unknown pseudo-token method {name!r}")
    return cls(backbone, checkpoint=path)
