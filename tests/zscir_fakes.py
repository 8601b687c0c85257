"""A tiny deterministic backbone for index/search/service tests: no pre-trained weights, runs in
milliseconds, and the same seed gives the same weights in any process (subprocesses, Ray actors).

Spec: `py:zscir_fakes:make` (this folder must be on PYTHONPATH)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import nn

from zscir.backbones.base import Backbone, TokenizedTexts
from zscir.backbones.preprocess import PreprocessConfig

SIZE = 16
PATCH = 4
VOCAB = 512


class FakeBackbone(Backbone):
    spec = "py:zscir_fakes:make"
    embed_dim = 32
    word_dim = 16
    max_text_tokens = 16

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c = 24
        self.patch = nn.Linear(3 * PATCH * PATCH, c)
        self.img_out = nn.Linear(c, self.embed_dim)
        self.words = nn.Embedding(VOCAB, self.word_dim)
        self.txt_out = nn.Linear(self.word_dim, self.embed_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self._pre = PreprocessConfig(size=SIZE, mode="resize", interpolation="bilinear")

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._pre

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        b = pixels.shape[0]
        x = pixels.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # B,3,h,w,P,P
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * PATCH * PATCH)
        return torch.tanh(self.patch(x))

    def image_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.img_out(tokens.mean(1))

    def tokenize(self, texts: Sequence[str], n_pseudo: int = 0) -> TokenizedTexts:
        rows = []
        for t in texts:
            words = re.findall(r"\w+|\$", t.lower())[: self.max_text_tokens] or ["<empty>"]
            rows.append([int(hashlib.md5(w.encode()).hexdigest(), 16) % VOCAB for w in words])
        n = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return TokenizedTexts(ids, mask, [[] for _ in rows])

    def text_trunk_from_embeddings(self, inputs_embeds: torch.Tensor, tok: TokenizedTexts) -> torch.Tensor:
        m = tok.attention_mask.unsqueeze(-1).float()
        return (inputs_embeds * m).sum(1) / m.sum(1).clamp(min=1)

    def text_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.txt_out(pooled)

    def word_embeddings(self) -> nn.Embedding:
        return self.words

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in self.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        h.update(self._pre.digest().encode())
        return h.hexdigest()[:16]

    @property
    def image_tower(self) -> nn.Module:
        return nn.ModuleList([self.patch, self.img_out])

    @property
    def text_tower(self) -> nn.Module:
        return nn.ModuleList([self.words, self.txt_out])


def make() -> FakeBackbone:
    return FakeBackbone(seed=0).eval()


def make_other() -> FakeBackbone:
    """Same architecture, other weights: a different fingerprint."""
    return FakeBackbone(seed=1).eval()


COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "magenta"]
SHAPES = ["circle", "square", "triangle"]


def make_image(i: int, size: int = 32) -> Image.Image:
    color = COLORS[i % len(COLORS)]
    shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
    bg = (i * 37 % 200 + 30, i * 91 % 200 + 30, i * 53 % 200 + 30)
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    m = 4 + i % 5
    if shape == "circle":
        d.ellipse([m, m, size - m, size - m], fill=color)
    elif shape == "square":
        d.rectangle([m, m, size - m, size - m], fill=color)
    else:
        d.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=color)
    return im


def write_gallery(folder, n: int, sub: bool = True):
    """n small PNG/JPEG images, some in a subfolder; returns their paths in order."""
    from pathlib import Path

    folder = Path(folder)
    paths = []
    for i in range(n):
        d = folder / (f"part{i % 3}" if sub else "")
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{i:04d}.{'jpg' if i % 4 == 0 else 'png'}"
        make_image(i).save(p)
        paths.append(p)
    return paths


class SlowFakeBackbone(FakeBackbone):
    """The same weights (same fingerprint), but slow: lets a test kill an index run midway."""

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.08)
        return super().image_tokens(pixels)


def make_slow() -> FakeBackbone:
    return SlowFakeBackbone(seed=0).eval()
