"""Baselines every ZS-CIR paper reports: image only, text only, and the normalised sum."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from zscir.methods.base import CompositionMethod, check_batch, register_method, require_pixels

#: what the text-only method embeds for an empty modification (pseudo-token methods drop "that {text}" from
#: their template the same way: no modification leaves a plain "a photo of $")
EMPTY_TEXT_PROMPT = "a photo"


def blank_rows(texts: Sequence[str]) -> list[bool]:
    """Which modification texts are empty (kept as such from official files: the reference is then unchanged)."""
    return [isinstance(t, str) and not t.strip() for t in texts]


def encode_texts_or_reference(backbone, texts: Sequence[str], ref: torch.Tensor) -> torch.Tensor:
    """Text embeddings (B, D); an empty text's row is the reference embedding itself, so interpolating toward
    it leaves the reference unchanged (an empty modification asks for no change)."""
    blank = blank_rows(texts)
    if not any(blank):
        return backbone.encode_text(list(texts)).to(ref.dtype)
    w = F.normalize(ref, dim=-1).clone()
    keep = [i for i, b in enumerate(blank) if not b]
    if keep:
        w[keep] = backbone.encode_text([texts[i] for i in keep]).to(ref.dtype)
    return w


@register_method("image")
class ImageOnly(CompositionMethod):
    """The reference image's embedding; the text is ignored."""

    uses_text = False

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_image(require_pixels(pixels, self.name))

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(ref_embeddings, dim=-1)


@register_method("text")
class TextOnly(CompositionMethod):
    """The modification text's embedding (raw text, no template); the image is ignored."""

    uses_image = False

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_text([EMPTY_TEXT_PROMPT if b else t for t, b in zip(texts, blank_rows(texts))])


@register_method("sum")
class NormalisedSum(CompositionMethod):
    """normalise(normalise(v) + normalise(w)): the linear-interpolation baseline at equal weights."""

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        check_batch(pixels, texts)
        v = self.backbone.encode_image(require_pixels(pixels, self.name))
        return self.compose_embedded(v, texts)

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        w = encode_texts_or_reference(self.backbone, texts, ref_embeddings)
        return F.normalize(F.normalize(ref_embeddings, dim=-1) + w, dim=-1)
