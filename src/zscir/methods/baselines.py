"""Baselines every ZS-CIR paper reports: image only, text only, and the normalised sum."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zscir.methods.base import CompositionMethod, check_batch, register_method, require_pixels

#: what the text-only method embeds for an empty modification (pseudo-token methods drop "that {text}" from
#: their template the same way: no modification leaves a plain "a photo of $")
EMPTY_TEXT_PROMPT = "a photo"


def blank_rows(texts: Sequence[str]) -> list[bool]:
    """Which modification texts are empty (kept as such from official files: the reference is then unchanged)."""
    return [isinstance(t, str) and not t.strip() for t in texts]


def encode_texts_blank_zero(backbone, texts: Sequence[str]) -> torch.Tensor:
    """Text embeddings (B, D), with a zero row for each empty text (see `fill_blank_rows`)."""
    blank = blank_rows(texts)
    if not any(blank):
        return backbone.encode_text(list(texts))
    keep = [i for i, b in enumerate(blank) if not b]
    w = torch.zeros(len(texts), int(backbone.embed_dim), device=backbone.device)
    if keep:
        enc = backbone.encode_text([texts[i] for i in keep])
        w = w.to(enc.dtype)
        w[keep] = enc
    return w


def fill_blank_rows(text_embeddings: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Replace the zero rows of `encode_texts_blank_zero` by the (normalised) reference embedding, so
    interpolating toward it leaves the reference unchanged (an empty modification asks for no change)."""
    w = text_embeddings.to(ref.dtype)
    blank = w.abs().sum(dim=-1) == 0
    if bool(blank.any()):
        w = w.clone()
        w[blank] = F.normalize(ref[blank], dim=-1)
    return w


def encode_texts_or_reference(backbone, texts: Sequence[str], ref: torch.Tensor) -> torch.Tensor:
    """Text embeddings (B, D); an empty text's row is the reference embedding itself."""
    return fill_blank_rows(encode_texts_blank_zero(backbone, texts), ref)


@register_method("image", order=10)
class ImageOnly(CompositionMethod):
    """The reference image's embedding; the text is ignored."""

    uses_text = False

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_image(require_pixels(pixels, self.name))

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(ref_embeddings, dim=-1)

    def embed_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(pixels)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.zeros(len(texts), 0)  # the text plays no part

    def compose_parts(self, ref_embeddings: torch.Tensor | None, text_embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(require_pixels(ref_embeddings, self.name), dim=-1)


@register_method("text", order=20)
class TextOnly(CompositionMethod):
    """The modification text's embedding (raw text, no template); the image is ignored."""

    uses_image = False

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_text([EMPTY_TEXT_PROMPT if b else t for t, b in zip(texts, blank_rows(texts))])

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.compose(None, texts)

    def compose_parts(self, ref_embeddings: torch.Tensor | None, text_embeddings: torch.Tensor) -> torch.Tensor:
        return text_embeddings


class ImageTextVectors(CompositionMethod):
    """A query composed from one image-tower vector and one text-tower vector per query (sum, Slerp, TAT).
    Both towers can then be batched and the texts cached (`zscir serve`); an empty text's row is the
    reference itself (`fill_blank_rows`). Subclasses say how the two vectors combine."""

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        check_batch(pixels, texts)
        return self.compose_embedded(self.embed_reference(require_pixels(pixels, self.name)), texts)

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.compose_parts(ref_embeddings, self.embed_texts(texts))

    def embed_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(pixels)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts_blank_zero(self.backbone, texts)

    def compose_parts(self, ref_embeddings: torch.Tensor | None, text_embeddings: torch.Tensor) -> torch.Tensor:
        ref = require_pixels(ref_embeddings, self.name)
        return self.combine(ref, fill_blank_rows(text_embeddings, ref))

    @abc.abstractmethod
    def combine(self, ref: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The (B, D) query from reference embeddings and text embeddings of the same dtype."""


@register_method("sum", order=30)
class NormalisedSum(ImageTextVectors):
    """normalise(normalise(v) + normalise(w)): the linear-interpolation baseline at equal weights."""

    def combine(self, ref: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(ref, dim=-1) + text, dim=-1)
