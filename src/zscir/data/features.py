"""The frozen-feature helpers trainers call: `image_features` (a source streamed through a frozen image tower)
and `text_features` (texts through a frozen text tower), each served from the on-disk cache (cache.py) when an
entry with the same key exists, else computed and cached."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zscir.data.cache import CachedFeatures, CacheKey, FeatureCache
from zscir.data.sources import PathsSource, Source
from zscir.data.stream import StreamConfig, StreamingDataset, StreamingLoader
from zscir.errors import CheckpointError, InputError

log = logging.getLogger(__name__)


def _image_fn(backbone, feature: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if feature == "image_tokens":
        return backbone.image_tokens
    if feature == "image_embedding":
        return backbone.encode_image
    raise InputError(f"unknown image feature {feature!r} (image_tokens, image_embedding, or pass fn=)")


def _extra(dtype: torch.dtype, device: torch.device | str) -> str:
    """A key's `extra`: the stored dtype, plus the autocast the features are computed under (a trainer in
    bf16 computes its frozen features in bf16: those values are not the fp32 entry's)."""
    out = str(dtype).replace("torch.", "")
    kind = torch.device(device).type
    if torch.is_autocast_enabled(kind):
        out += "|autocast-" + str(torch.get_autocast_dtype(kind)).replace("torch.", "")
    return out


def decode_workers() -> int:
    """Decode processes for a feature pass: decoding overlaps the model's forward where there are cores to
    spare (a GPU is fed by them), none on a 2-core machine, where a worker would only take the model's core."""
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def _dist() -> tuple[int, int, Callable[[], None] | None]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return 0, 1, None


def image_features(
    backbone,
    source: Source | Sequence[str | os.PathLike[str]],
    feature: str = "image_tokens",
    *,
    cache: FeatureCache | str | Path | None = None,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float16,
    config: StreamConfig | None = None,
    failures_path: str | Path | None = None,
    shard_bytes: int = 64 << 20,
) -> CachedFeatures:
    """A frozen image feature of every readable item of `source` (a Source or a list of image paths), from
    the cache when an entry with the same key exists, else computed by streaming the source through
    `backbone` (`feature`: "image_tokens" -> (L, C) local features, "image_embedding" -> (D,) normalised
    embedding, or any name with a custom `fn(pixels) -> (B, ...)`), stored as `dtype`, and cached.

    Under torch.distributed every rank computes its share; all ranks get the same complete entry."""
    if not isinstance(source, Source):
        source = PathsSource(source)
    store = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    pre = backbone.preprocess_config
    # a named feature keys on what it depends on (the trunk, for the embedded default); a custom fn on the model
    model_key = backbone.fingerprint() if fn is not None else backbone.feature_fingerprint(feature)
    key = CacheKey(model_key, pre.digest(), f"{source.fingerprint()}", feature, extra=_extra(dtype, backbone.device))
    rank, world_size, barrier = _dist()
    hit = store.get(key)
    if world_size > 1:  # every rank must take the same branch (a build has barriers): build unless all hit
        import torch.distributed as dist

        flags: list[Any] = [None] * world_size
        dist.all_gather_object(flags, hit is not None)
        if not all(flags):
            hit = None
    if hit is not None:
        log.info("feature cache hit: %s (%d rows)", hit.folder, len(hit))
        return hit
    compute = fn or _image_fn(backbone, feature)
    cfg = config or StreamConfig(batch_size=64, workers=decode_workers(), shuffle=False, max_bad_fraction=1.0)
    loaders: list[StreamingLoader] = []

    def batches(done: set[str]) -> Iterator[tuple[list[str], list[str], list[str | None], np.ndarray]]:
        # `done`: keys an interrupted build already wrote; the workers skip them before decoding
        ds = StreamingDataset(source, pre, replace(cfg, shuffle=False, repeat=False), rank, world_size,
                              skip_keys=frozenset(done))
        loader = StreamingLoader(ds, failures_path)
        loaders.append(loader)
        dev = backbone.device
        with torch.inference_mode():
            for b in loader:
                assert b.pixels is not None  # a PreprocessConfig transform, and the loader yields no empty batch
                out = compute(b.pixels.to(dev)).to("cpu", dtype)
                yield b.keys, b.locations, b.captions, out.numpy() if dtype != torch.bfloat16 else \
                    out.float().numpy()

    log.info("feature cache miss: computing %s for %s", feature, source)
    return store.build(key, batches, rank=rank, world_size=world_size, barrier=barrier,
                       failures=lambda: loaders[-1].failures if loaders else [], shard_bytes=shard_bytes)


def text_features(
    backbone,
    texts: Sequence[str],
    feature: str = "text_trunk",
    *,
    cache: FeatureCache | str | Path | None = None,
    fn: Callable[[list[str]], torch.Tensor] | None = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> CachedFeatures:
    """A frozen text feature of each text ("text_trunk": pooled trunk features; "text_embedding": the
    normalised embedding; or a custom `fn(texts) -> (B, ...)`), cached like image_features. Row i is text i
    (keys are the positions as strings; `captions` holds the texts).

    "text_embedding" is the text head applied to the cached "text_trunk" entry of the same texts: the expensive
    trunk pass is shared with every trainer that reads them (the default's heads change, its trunk does not)."""
    store = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    if fn is None and feature == "text_embedding":
        import torch.nn.functional as F

        trunk = text_features(backbone, texts, "text_trunk", cache=store, batch_size=batch_size)
        dev = backbone.device
        return derived_features(trunk, lambda x: F.normalize(backbone.text_head(x.to(dev, torch.float32)), dim=-1),
                                "text_embedding", backbone.fingerprint(), cache=store, batch_size=batch_size,
                                dtype=dtype, row_order=True, device=dev)
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogateescape") + b"\0")
    model_key = backbone.fingerprint() if fn is not None else backbone.feature_fingerprint(feature)
    key = CacheKey(model_key, "", h.hexdigest()[:16], feature, extra=_extra(dtype, backbone.device))
    rank, world_size, barrier = _dist()
    hit = _hit_everywhere(store, key, world_size)
    if hit is not None:
        return hit
    if fn is None:
        if feature == "text_trunk":
            fn = backbone.text_trunk
        else:
            raise InputError(f"unknown text feature {feature!r} (text_trunk, text_embedding, or pass fn=)")

    def batches() -> Iterator[tuple[list[str], list[str], Sequence[str | None], np.ndarray]]:
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                chunk = list(texts[i : i + batch_size])
                out = fn(chunk).to("cpu", dtype)
                yield ([str(j) for j in range(i, i + len(chunk))], [""] * len(chunk), chunk,
                       out.numpy() if dtype != torch.bfloat16 else out.float().numpy())

    return _build_on_rank0(store, key, batches, world_size, rank, barrier, "the text features")


def _hit_everywhere(store: FeatureCache, key: CacheKey, world_size: int) -> CachedFeatures | None:
    """The entry if every rank finds it (every rank must take the same branch: a build has barriers)."""
    hit = store.get(key)
    if world_size > 1:
        import torch.distributed as dist

        flags: list[Any] = [None] * world_size
        dist.all_gather_object(flags, hit is not None)
        hit = hit if all(flags) else None
    return hit


def _build_on_rank0(store: FeatureCache, key: CacheKey, batches: Callable[[], Any], world_size: int, rank: int,
                    barrier: Callable[[], None] | None, what: str) -> CachedFeatures:
    """Build an entry in this process, or under DDP on rank 0 while the others wait (cheap features)."""
    if world_size == 1:
        return store.build(key, batches())
    error: BaseException | None = None
    if rank == 0:
        try:
            store.build(key, batches())
        except BaseException as e:  # noqa: BLE001 - raised after the barrier, so no rank waits forever
            error = e
    assert barrier is not None  # world_size > 1: torch.distributed is initialised
    barrier()
    if error is not None:
        raise error
    entry = store.get(key)
    if entry is None:
        raise CheckpointError(f"{store.path(key)}: rank 0 could not build {what}")
    return entry


def derived_features(
    entry: CachedFeatures,
    fn: Callable[[torch.Tensor], torch.Tensor],
    feature: str,
    model_key: str,
    *,
    cache: FeatureCache | str | Path | None = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    row_order: bool = False,
    device: torch.device | str = "cpu",
) -> CachedFeatures:
    """`fn` applied to the rows of a cached entry (e.g. the frozen image embedding pooled from cached local
    features through the image head), cached too; align its rows with `entry`'s through `keys`. Computed
    once, in fixed chunks of the entry's key order (under DDP by rank 0), so its values never depend on how a
    training run batches or shards the rows. `row_order=True`, for an entry whose row order is fixed whoever
    built it (a text entry: rank 0 writes text i at row i), chunks in row order instead, so row i of the result
    is row i of `entry`. `model_key` identifies what `fn` computes with (a fingerprint), `device` where (its
    autocast state is part of the key)."""
    store = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    key = CacheKey(model_key, "", entry.key.digest(), feature, extra=_extra(dtype, device))
    rank, world_size, barrier = _dist()
    hit = _hit_everywhere(store, key, world_size)
    if hit is not None:
        return hit

    def batches() -> Iterator[tuple[list[str], list[str], Sequence[str | None], np.ndarray]]:
        with torch.inference_mode():
            # chunks in key order: the same chunks whoever built `entry` (several DDP ranks write it in
            # another row order than one process)
            order = np.arange(len(entry), dtype=np.int64) if row_order else \
                np.array(sorted(range(len(entry)), key=lambda j: entry.keys[j]), dtype=np.int64)
            for i in range(0, len(entry), batch_size):
                idx = order[i : i + batch_size]
                out = fn(torch.from_numpy(entry.gather(idx))).to("cpu", dtype)
                yield ([entry.keys[j] for j in idx], [entry.locations[j] for j in idx],
                       [entry.captions[j] for j in idx], out.numpy() if dtype != torch.bfloat16 else out.float().numpy())

    return _build_on_rank0(store, key, batches, world_size, rank, barrier, f"the {feature} features")
