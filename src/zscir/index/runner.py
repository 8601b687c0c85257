"""Runner: plan what is left to embed, move shard-sized chunks from a distributor to the writer, commit
each shard in the manifest, then build the faiss index.

Resumable by construction: ids already listed in a committed shard are skipped, so re-running the same
command after an interruption embeds exactly the rest (no duplicate, no loss). `add=True` appends the
items of a new source to a complete index the same way."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from zscir.data.sources import split_location
from zscir.errors import CheckpointError, InputError
from zscir.index import kinds
from zscir.index.manifest import MANIFEST, FaissRecord, Manifest
from zscir.index.reader import read_items
from zscir.index.writer import (SHARDS, file_identity, read_shard_embeddings, read_shard_items, verify_shard,
                                write_shard)
from zscir.utils.io import atomic_path, check_output_dir, sha256_file

log = logging.getLogger(__name__)

FAISS_FILE = "gallery.faiss"
FAISS_FILE_ALT = "gallery-next.faiss"
FAILURES = "failures.jsonl"
LOCK = ".lock"
DEFAULT_SHARD_SIZE = 4096


@contextlib.contextmanager
def index_lock(folder: Path) -> Iterator[None]:
    """One writer per index folder; a second `zscir index` (e.g. two concurrent --add) is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"{folder}: another `zscir index` run is writing this index (lock held); "
                                  "wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _eta(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def build_index(
    source: str | Path,
    out: str | Path,
    backbone: str = "default",
    *,
    add: bool = False,
    kind: str = "auto",
    method: str = "slerp",
    engine: str = "local",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 64,
    workers: int = 4,
    device: str | None = None,
    ray_address: str | None = None,
    ray_actors: int = 2,
    ray_cpus: int | None = None,
    progress: bool = True,
    image_column: str | None = None,
    caption_column: str | None = None,
    id_column: str | None = None,
) -> Manifest:
    out = Path(out)
    if shard_size < 1 or batch_size < 1:
        raise InputError("--shard-size and --batch-size must be at least 1")
    # The shared --out rule, before any work: only a previous index (or a folder holding nothing but the lock
    # of an interrupted first run) may be written into; anything else is refused and left untouched.
    check_output_dir(out, is_index_folder, "a zscir index")
    items, listing_failures = read_items(source, image_column=image_column, caption_column=caption_column,
                                         id_column=id_column)
    with index_lock(out):
        man = Manifest.load(out) if (out / MANIFEST).exists() else None
        if man is not None and man.complete and not add:
            raise InputError(f"{out}: already a complete index of {man.count} images; pass --add to append, "
                             "or choose another --out")
        indexed: dict[str, str] = {}  # id -> path of every image already in the index
        if man is not None:
            for rec in man.shards:
                verify_shard(out, rec)
                indexed.update((r["id"], r["path"]) for r in read_shard_items(out, rec))
            _refuse_id_collisions(items, indexed, source)
        if man is None or not backbone:
            spec = backbone if man is None else man.backbone_spec
            if spec.startswith("py:") and man is not None:
                from zscir.backbones import refuse_code_spec

                refuse_code_spec(spec, f"{out}/{MANIFEST}")
        else:
            spec = backbone
        from zscir.index.mapper import load_gallery_encoder

        bb, m = load_gallery_encoder(spec, method if man is None else man.gallery_method, device)
        if man is None:
            pre = bb.preprocess_config
            from dataclasses import asdict

            man = Manifest(backbone_spec=spec, backbone_fingerprint=bb.fingerprint(), preprocess=asdict(pre),
                           preprocess_digest=pre.digest(), gallery_method=m.name, gallery_id=m.gallery_id,
                           dim=int(bb.embed_dim))
        elif bb.fingerprint() != man.backbone_fingerprint or m.gallery_id != man.gallery_id:
            raise CheckpointError(f"{out}: made with backbone {man.backbone_spec} (fingerprint "
                                  f"{man.backbone_fingerprint}); {spec} has fingerprint {bb.fingerprint()}")
        expected = len(indexed) + len([it for it in items if it.id not in indexed])
        if kind != "auto" or man.faiss is None:  # pre-flight: a kind faiss cannot build fails now, not after embedding
            factory = kinds.factory_for(kind, expected, man.dim)[0]
            kinds.check_buildable(factory, expected, man.dim)
        for stale in (out / SHARDS).glob(".*.tmp") if (out / SHARDS).is_dir() else []:
            stale.unlink()  # a write interrupted before its rename
        done: set[str] = set()
        for rec in man.shards:
            done.update(r["id"] for r in read_shard_items(out, rec))
            if not add:  # a resume does not retry files already found unreadable; --add does
                done.update(f["id"] for f in rec.failed)
        todo = [it for it in items if it.id not in done]
        if str(source) not in man.sources:
            man.sources.append(str(source))
        log.info("%s: %d item(s) in %s, %d already indexed, %d to embed", out, len(items), source,
                 len(items) - len(todo), len(todo))
        had_faiss = man.faiss
        man.complete = False
        man.save(out)

        if engine == "ray":
            from zscir.index.distributor import RayDistributor

            dist = RayDistributor(spec, man.gallery_method, batch_size, workers, ray_actors, ray_address, ray_cpus)
        elif engine == "local":
            from zscir.index.distributor import LocalDistributor

            dist = LocalDistributor(m, batch_size, workers)
        else:
            raise InputError(f"--engine {engine!r}: expected local or ray")

        t0, n_done = time.perf_counter(), 0
        with tqdm(total=len(todo), desc="index", unit="img", disable=not progress) as bar:
            for chunk, emb, ok, errors in dist.run(todo, shard_size):
                kept = [chunk[i] for i in ok]
                failed = [{"id": chunk[i].id, "path": chunk[i].path, "error": e} for i, e in sorted(errors.items())]
                number = len(man.shards)
                # an image inside a WebDataset tar is identified by its tar file
                files = [file_identity(split_location(it.path)[0]) for it in kept]
                man.shards.append(write_shard(out, number, emb, kept, failed, files))
                man.save(out)  # the commit point
                n_done += len(chunk)
                bar.update(len(chunk))
                rate = n_done / max(1e-9, time.perf_counter() - t0)
                log.info("shard %d: %d image(s), %d unreadable; %d/%d, %.1f img/s, ETA %s", number, len(kept),
                         len(failed), n_done, len(todo), rate, _eta((len(todo) - n_done) / max(rate, 1e-9)))

        failures = _write_failures(out, man, listing_failures)
        if man.count == 0:
            raise InputError(f"{source}: none of the {len(items)} file(s) could be read as an image; "
                             f"see {out / FAILURES}")
        _build_faiss(out, man, kind, had_faiss)
        man.complete = True
        man.save(out)
        if failures:
            log.warning("%d unreadable file(s) listed in %s", failures, out / FAILURES)
        return man


def is_index_folder(folder: Path) -> bool:
    """An index (complete or interrupted: it has a manifest), or a folder holding only an index lock."""
    return (folder / MANIFEST).is_file() or all(p.name == LOCK for p in folder.iterdir())


def _refuse_id_collisions(items, indexed: dict[str, str], source) -> None:
    """An id already in the index for another file would be skipped as "already indexed", and that file
    could never be found: refuse the whole source, loudly, before anything is embedded. (The same id for
    the same file is a resume or a repeated --add, and is skipped.)"""
    clashes = [it for it in items if it.id in indexed and indexed[it.id] != it.path]
    if clashes:
        ex = clashes[0]
        raise InputError(
            f"{source}: {len(clashes)} of its {len(items)} image id(s) are already in the index for other files "
            f"(e.g. id {ex.id!r}); ids of a folder are its relative paths, so give this source distinct ids "
            "(a .csv/.jsonl listing with an 'id' column) or index it into another --out")


def _write_failures(out: Path, man: Manifest, listing: list[dict[str, str]] = ()) -> int:
    indexed: set[str] = set()
    for rec in man.shards:
        indexed.update(r["id"] for r in read_shard_items(out, rec))
    last: dict[str, dict] = {}
    for rec in man.shards:
        for f in rec.failed:
            if f["id"] not in indexed:
                last[f["id"]] = f
    for f in listing:  # found while listing the source (dangling links, truncated tars, ...): never embedded
        if f["id"] not in indexed:
            last.setdefault(f["id"], f)
    with atomic_path(out / FAILURES) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for f in last.values():
                fh.write(json.dumps(f, ensure_ascii=False) + "\n")
    return len(last)


def _build_faiss(out: Path, man: Manifest, kind: str, previous: FaissRecord | None) -> None:
    n, dim = man.count, man.dim
    old_path = out / previous.file if previous is not None else None
    # The new index never overwrites the one the manifest still names: a reader that opened the old manifest
    # (a search during `--add`) still finds its file. Two names alternate; the older is overwritten next time.
    name = FAISS_FILE if previous is None or previous.file != FAISS_FILE else FAISS_FILE_ALT
    path = out / name
    arrays = [read_shard_embeddings(out, rec) for rec in man.shards]
    if previous is not None and kind == "auto" and old_path.is_file() and sha256_file(old_path) == previous.sha256 \
            and previous.count <= n:
        # Append to the existing index (same factory, trained quantizers kept).
        import faiss

        index = faiss.read_index(str(old_path))
        skip = previous.count
        for a in arrays:
            if skip >= len(a):
                skip -= len(a)
                continue
            index.add(np.ascontiguousarray(a[skip:], dtype=np.float32))
            skip = 0
        factory, params, rerank = previous.factory, previous.search, previous.rerank
    else:
        factory, params, rerank = kinds.factory_for(kind, n, dim)
        sample = None
        import faiss

        if not faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT).is_trained:
            rng = np.random.default_rng(0)
            take = np.sort(rng.choice(n, size=min(n, 100_000), replace=False))
            sample = _gather(arrays, take)
        t0 = time.perf_counter()
        index = kinds.build(factory, dim, (np.asarray(a, np.float32) for a in arrays), n, sample)
        log.info("faiss %s over %d vectors built in %.1f s", factory, n, time.perf_counter() - t0)
    with atomic_path(path) as tmp:
        kinds.write(index, str(tmp))
    man.faiss = FaissRecord(factory=factory, metric="ip", search=params, file=name,
                            sha256=sha256_file(path), count=int(index.ntotal), rerank=rerank)


def _gather(arrays: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    offsets = np.cumsum([0] + [len(a) for a in arrays])
    out = np.empty((len(positions), arrays[0].shape[1]), np.float32)
    shard = np.searchsorted(offsets, positions, side="right") - 1
    for s in np.unique(shard):
        sel = shard == s
        out[sel] = arrays[s][positions[sel] - offsets[s]]
    return out
