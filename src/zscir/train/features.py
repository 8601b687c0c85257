"""Frozen-tower feature caches for fast training on 2 cores.

When a tower is frozen, its output for an image or caption never changes during training, so trainers
compute it once (image: local feature tokens; text: pooled trunk features) and train heads, mappers or
token learners on the cached tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from zscir.backbones.base import Backbone
from zscir.data.stream import iter_pixel_batches


@torch.inference_mode()
def image_token_features(
    backbone: Backbone, paths: Sequence[Path | str], batch_size: int = 64, desc: str = "image features",
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """(N, L, C) local features of the image trunk, stored in `dtype` on the CPU."""
    out: list[torch.Tensor] = []
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for pixels in iter_pixel_batches(paths, backbone.preprocess_config, batch_size):
            out.append(backbone.image_tokens(pixels.to(backbone.device)).to("cpu", dtype))
            bar.update(len(pixels))
    return torch.cat(out)


@torch.inference_mode()
def text_trunk_features(
    backbone: Backbone, texts: Sequence[str], batch_size: int = 256, desc: str = "text features"
) -> torch.Tensor:
    """(N, Ct) pooled text-trunk features (before the text head), float32 on the CPU."""
    out: list[torch.Tensor] = []
    with tqdm(total=len(texts), desc=desc, unit="txt", leave=False) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i : i + batch_size])
            out.append(backbone.text_trunk(chunk).float().cpu())
            bar.update(len(chunk))
    return torch.cat(out)
