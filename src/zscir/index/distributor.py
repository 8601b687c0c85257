"""Distributors decide where the gallery embedder runs. Each yields, in item order, one shard-sized chunk at a time:
(items of the chunk, float32 embeddings of its readable items, their positions in the chunk, {pos: error}).

    LocalDistributor  this process: parallel decoding threads + one model
    RayDistributor    Ray Data: map_batches over an actor pool, one model per actor (a GPU each when present)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from zscir.index.embedder import GalleryEmbedder, load_gallery_encoder
from zscir.index.reader import Item

log = logging.getLogger(__name__)

Chunk = tuple[list[Item], np.ndarray, list[int], dict[int, str]]


class LocalDistributor:
    def __init__(self, method, batch_size: int = 64, workers: int = 4) -> None:
        self.embedder = GalleryEmbedder(method, batch_size, workers)

    def run(self, todo: list[Item], shard_size: int) -> Iterator[Chunk]:
        for start in range(0, len(todo), shard_size):
            chunk = todo[start : start + shard_size]
            emb, ok, errors = self.embedder([it.path for it in chunk])
            yield chunk, emb, ok, errors


class _RayEmbedActor:
    """One model per actor; Ray Data calls it on numpy batches {"path": ...}."""

    def __init__(self, backbone_spec: str, method: str | None, batch_size: int, workers: int, device: str | None,
                 checkpoints: tuple[str, ...] = ()) -> None:
        _, m = load_gallery_encoder(backbone_spec, method, device, checkpoints)
        self.embedder = GalleryEmbedder(m, batch_size, workers)
        self.dim = m.backbone.embed_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        emb, ok, errors = self.embedder(paths)
        out = np.zeros((len(paths), self.dim), np.float32)
        out[ok] = emb
        err = np.array([errors.get(i, "") for i in range(len(paths))], dtype=object)
        return {"pos": batch["pos"], "emb": out, "error": err}


class RayDistributor:
    def __init__(self, backbone_spec: str, method: str | None, batch_size: int = 64, workers: int = 2,
                 actors: int = 2, address: str | None = None, num_cpus: int | None = None,
                 checkpoints: tuple[str, ...] = ()) -> None:
        try:
            import ray
        except ImportError as e:  # pragma: no cover - ray is the optional extra zscir[ray] (the dev extra has it)
            from zscir.errors import InputError

            raise InputError("--engine ray needs the `ray[data]` package: pip install 'zscir[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": num_cpus}
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kwargs)
        self.spec, self.method, self.checkpoints = backbone_spec, method, tuple(checkpoints)
        self.batch_size, self.workers, self.actors = batch_size, workers, actors

    def run(self, todo: list[Item], shard_size: int) -> Iterator[Chunk]:
        if not todo:
            return
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        gpus = float(self.ray.cluster_resources().get("GPU", 0))
        per_actor_gpu = 1 if gpus >= self.actors else 0
        ds: ray.data.Dataset = ray.data.from_items([{"pos": i, "path": it.path} for i, it in enumerate(todo)])
        ds = ds.map_batches(
            _RayEmbedActor,
            fn_constructor_kwargs={
                "backbone_spec": self.spec, "method": self.method, "batch_size": self.batch_size,
                "checkpoints": self.checkpoints,
                "workers": self.workers, "device": "cuda" if per_actor_gpu else None,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=per_actor_gpu,
            num_cpus=1,
        )
        start = 0
        for batch in ds.iter_batches(batch_size=shard_size, batch_format="numpy"):
            pos = [int(p) for p in batch["pos"]]
            if pos != list(range(start, start + len(pos))):
                raise RuntimeError("Ray returned rows out of order")  # preserve_order guarantees it
            chunk = todo[start : start + len(pos)]
            errs = {i: str(e) for i, e in enumerate(batch["error"]) if e}
            ok = [i for i in range(len(pos)) if i not in errs]
            yield chunk, np.asarray(batch["emb"], np.float32)[ok], ok, errs
            start += len(pos)
