"""Image preprocessing as data (it travels with the weights) plus one PIL/NumPy implementation.

Modes used by the ZS-CIR peers (benchmarks.md §2.4):
  center_crop  resize the short side to `size` (bicubic), center-crop size x size      (CLIP default)
  target_pad   pad to aspect ratio <= `target_ratio` (1.25) with black, then center_crop  (SEARLE, CIReVL)
  resize       resize straight to size x size (aspect distorted)                          (MagicLens)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from zscir.errors import InputError
from zscir.utils.io import to_rgb

MODES: tuple[str, ...] = ("center_crop", "target_pad", "resize")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """How to turn a PIL image into the model's input tensor."""

    size: int = 224
    mode: str = "center_crop"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    target_ratio: float = 1.25

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"preprocessing mode {self.mode!r}: expected one of {', '.join(MODES)}")

    def with_mode(self, mode: str) -> PreprocessConfig:
        return PreprocessConfig(**{**asdict(self), "mode": mode})

    def digest(self) -> str:
        """Short hash: embeddings made with different preprocessing must never share a cache entry."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def target_pad(image: Image.Image, target_ratio: float) -> Image.Image:
    """Pad the shorter side with black so that max(w,h)/min(w,h) <= target_ratio (SEARLE's TargetPad)."""
    w, h = image.size
    ratio = max(w, h) / max(1, min(w, h))
    if ratio < target_ratio:
        return image
    scaled = max(w, h) / target_ratio
    pw, ph = max(0, int((scaled - w) / 2)), max(0, int((scaled - h) / 2))
    out = Image.new("RGB", (w + 2 * pw, h + 2 * ph), (0, 0, 0))
    out.paste(image, (pw, ph))
    return out


def preprocess_image(image: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """PIL image -> float tensor (3, size, size), normalised with cfg.mean / cfg.std."""
    image = to_rgb(image)  # the shared conversion: 16-bit scaled, transparency on white
    resample = _RESAMPLE[cfg.interpolation]
    s = cfg.size
    if cfg.mode == "target_pad":
        image = target_pad(image, cfg.target_ratio)
    if cfg.mode == "resize":
        image = image.resize((s, s), resample)
    else:
        w, h = image.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), resample)
        left, top = (nw - s) // 2, (nh - s) // 2
        image = image.crop((left, top, left + s, top + s))
    arr: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def preprocess_batch(images: Sequence[Image.Image], cfg: PreprocessConfig) -> torch.Tensor:
    return torch.stack([preprocess_image(im, cfg) for im in images])
