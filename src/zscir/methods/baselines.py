"""Baselines every ZS-CIR paper reports: image only, text only, and the normalised sum."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from zscir.methods.base import CompositionMethod, check_batch, register_method, require_pixels


@register_method("image")
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


@register_method("text")
class TextOnly(CompositionMethod):
    """The modification text's embedding (raw text, no template); the image is ignored."""

    uses_image = False

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_text(list(texts))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_text(list(texts))

    def compose_parts(self, ref_embeddings: torch.Tensor | None, text_embeddings: torch.Tensor) -> torch.Tensor:
        return text_embeddings


@register_method("sum")
class NormalisedSum(CompositionMethod):
    """normalise(normalise(v) + normalise(w)): the linear-interpolation baseline at equal weights."""

    def compose(self, pixels: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        check_batch(pixels, texts)
        v = self.backbone.encode_image(require_pixels(pixels, self.name))
        return self.compose_embedded(v, texts)

    def compose_embedded(self, ref_embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.compose_parts(ref_embeddings, self.embed_texts(texts))

    def embed_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(pixels)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_text(list(texts))

    def compose_parts(self, ref_embeddings: torch.Tensor | None, text_embeddings: torch.Tensor) -> torch.Tensor:
        ref = require_pixels(ref_embeddings, self.name)
        w = text_embeddings.to(ref.dtype)
        return F.normalize(F.normalize(ref, dim=-1) + w, dim=-1)
