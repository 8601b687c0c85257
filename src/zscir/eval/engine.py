"""The retrieval engine shared by world evaluation, benchmark evaluation and search:
decode + preprocess images in parallel, embed in batches (progress bar), score queries against a gallery
with per-query exclusions, and take stable top-k lists.

Embeddings are float32 on the CPU, L2-normalised. Gallery embeddings can be cached on disk, keyed by the
method's gallery encoder id (backbone fingerprint + preprocessing) and the gallery's content."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm.auto import tqdm

from zscir.backbones.preprocess import PreprocessConfig
from zscir.data.stream import ImageRef, iter_pixel_batches
from zscir.errors import InputError
from zscir.utils.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64


@torch.inference_mode()
def embed_images(
    encode: Callable[[torch.Tensor], torch.Tensor],
    paths: Sequence[ImageRef],
    cfg: PreprocessConfig,
    device: torch.device | str = "cpu",
    batch_size: int = DEFAULT_BATCH,
    desc: str = "embed",
    progress: bool = True,
) -> torch.Tensor:
    """Embed images with `encode` (pixels -> (B, D)); returns (N, D) float32 on the CPU."""
    out: list[torch.Tensor] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for pixels in iter_pixel_batches(paths, cfg, batch_size):
            out.append(encode(pixels.to(device)).float().cpu())
            bar.update(len(pixels))
    if not out:
        raise InputError(f"{desc}: no images to embed")
    return torch.cat(out)


def gallery_digest(ids: Sequence[str], paths: Sequence[ImageRef]) -> str:
    """Identifies a gallery's content: ids, paths, file sizes and modification times."""
    h = hashlib.sha256()
    for i, p in zip(ids, paths):
        key = p.cache_key() if hasattr(p, "cache_key") else str(p)
        p = Path(p.path) if hasattr(p, "path") else Path(cast("str | Path", p))
        st = p.stat() if p.exists() else None
        h.update(f"{i}\0{key}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:16]


def embed_gallery(
    method,
    ids: Sequence[str],
    paths: Sequence[ImageRef],
    cache_dir: Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    desc: str = "gallery",
) -> torch.Tensor:
    """Gallery embeddings for a composition method, reused from `cache_dir` when the same encoder already
    embedded the same gallery (the key includes backbone fingerprint, preprocessing and file stats)."""
    key = hashlib.sha256(f"{method.gallery_id}|{gallery_digest(ids, paths)}".encode()).hexdigest()[:24]
    cache = cache_dir / f"gallery-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        arr = np.load(cache, allow_pickle=False)
        if arr.shape[0] == len(ids):
            return torch.from_numpy(arr)
    emb = embed_images(method.encode_gallery, paths, method.backbone.preprocess_config,
                       method.backbone.device, batch_size, desc)
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, emb.numpy(), allow_pickle=False)
    return emb


@torch.inference_mode()
def compose_queries(
    method,
    ref_paths: Sequence[ImageRef] | None,
    texts: Sequence[str],
    batch_size: int = DEFAULT_BATCH,
    desc: str = "queries",
    progress: bool = True,
) -> torch.Tensor:
    """Query embeddings (Q, D) for reference images (None for text-only methods) and texts."""
    out: list[torch.Tensor] = []
    dev = method.backbone.device
    with tqdm(total=len(texts), desc=desc, unit="q", disable=not progress, leave=False) as bar:
        if ref_paths is None or not method.uses_image:
            for i in range(0, len(texts), batch_size):
                out.append(method.compose(None, list(texts[i : i + batch_size])).float().cpu())
                bar.update(min(batch_size, len(texts) - i))
        else:
            if len(ref_paths) != len(texts):
                raise InputError(f"{len(ref_paths)} reference images but {len(texts)} texts")
            start = 0
            for pixels in iter_pixel_batches(ref_paths, method.backbone.preprocess_config, batch_size):
                chunk = list(texts[start : start + len(pixels)])
                out.append(method.compose(pixels.to(dev), chunk).float().cpu())
                start += len(pixels)
                bar.update(len(pixels))
    if not out:
        raise InputError(f"{desc}: no queries")
    return torch.cat(out)


def score(queries: torch.Tensor, gallery: torch.Tensor, exclude: Sequence[int | None] | None = None) -> torch.Tensor:
    """Cosine scores (Q, N); exclude[i] (a gallery index or None) gets -inf in row i (CIRR removes the
    reference this way)."""
    s = queries.float() @ gallery.float().T
    if exclude is not None:
        rows = [i for i, e in enumerate(exclude) if e is not None]
        if rows:
            s[rows, [exclude[i] for i in rows]] = float("-inf")
    return s


def topk_stable(scores: torch.Tensor, k: int, drop_excluded: bool = True) -> list[list[int]]:
    """Top-k gallery indices per row, ties in gallery order; -inf entries (exclusions) never listed.

    torch.topk finds each row's k-th score; only the entries at or above it are sorted (stably, so ties keep
    gallery order), which is what a full stable sort would give, without sorting 123k scores per query."""
    n_rows, n = scores.shape
    kk = min(k, n)
    if kk <= 0:
        return [[] for _ in range(n_rows)]
    kth = torch.topk(scores, kk, dim=1).values[:, -1]
    rows: list[list[int]] = []
    for i in range(n_rows):
        row = scores[i]
        cand = torch.nonzero(row >= kth[i]).squeeze(1)  # ascending gallery index
        sel = cand[torch.sort(row[cand], descending=True, stable=True).indices]
        if drop_excluded:
            sel = sel[row[sel] != float("-inf")]
        rows.append(sel[:k].tolist())
    return rows
