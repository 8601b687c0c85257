"""Frozen-feature cache on disk: a frozen tower's output for a data set is computed once, stored as
memory-mapped shards, and reused by every trainer, recipe and the demo.

An entry is a folder `<root>/<feature>-<key digest>/`:

    meta.json             the key (backbone fingerprint, preprocessing digest, source fingerprint, feature
                          name), row shape and dtype, shard list with row counts, failures count
    rows.jsonl            one line per row, in shard order: key, location, caption
    features-NNNNN.npy    (rows, *shape) arrays, opened with numpy's mmap (never read whole into RAM)
    failures.jsonl        the items that could not be decoded (not cached; a later source change retries)

An entry is built in a hidden sibling folder (`.<entry>.building`) and renamed into place when complete, so a
reader never sees a half-written entry. Rows are flushed to numbered shards every `shard_bytes` (memory stays
flat); a build that is killed is resumed by the next build of the same key, which skips the items already
written without decoding them; a refused build (too many unreadable items) is removed. Under DDP every rank
computes its own part of the stream into the same build folder, and rank 0 commits.

Keys: a different backbone (weights), preprocessing, source content (file sizes and mtimes, listing
bytes, tar stats; see each Source.fingerprint) or feature name is a different entry: a stale feature is never
served."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import zscir
from zscir.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

META = "meta.json"
ROWS = "rows.jsonl"
FAILURES = "failures.jsonl"
BUILD = "build.json"
CACHE_FORMAT = "zscir.feature-cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """What a cached feature depends on. `extra` holds anything else that changes the values (e.g. the
    dtype, a layer index)."""

    backbone: str  # Backbone.fingerprint()
    preprocess: str  # PreprocessConfig.digest() ("" for text features)
    source: str  # Source.fingerprint() (or a digest of the texts)
    feature: str  # "image_tokens", "image_embedding", "text_trunk", ...
    extra: str = ""

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    @property
    def dirname(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.feature)[:40]
        return f"{safe}-{self.digest()}"


class CachedFeatures:
    """A complete cache entry, memory-mapped: `len()`, `keys`, `locations`, `captions`, `shape` (per row),
    `dtype`, `[i]` (one row, numpy), `gather(indices)` (rows, numpy), `tensor(indices)` (a torch tensor),
    `position(key)`. Rows are in the order they were computed (the source order when streamed with one
    worker; otherwise use `keys` to align)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / META
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.folder}: not a complete feature-cache entry ({e})") from e
        if self.meta.get("format") != CACHE_FORMAT or self.meta.get("version") != CACHE_VERSION:
            raise CheckpointError(f"{self.folder}: feature-cache format {self.meta.get('version')} is not "
                                  f"{CACHE_VERSION}; delete the entry to rebuild it")
        self.shape = tuple(self.meta["shape"])
        self.dtype = np.dtype(self.meta["dtype"])
        self.arrays = []
        for sh in self.meta["shards"]:
            a = np.load(self.folder / sh["file"], mmap_mode="r", allow_pickle=False)
            if a.shape != (sh["rows"], *self.shape):
                raise CheckpointError(f"{self.folder / sh['file']}: shape {a.shape}, meta.json says "
                                      f"{(sh['rows'], *self.shape)}; delete the entry to rebuild it")
            self.arrays.append(a)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.keys: list[str] = []
        self.locations: list[str] = []
        self.captions: list[str | None] = []
        with open(self.folder / ROWS, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                self.keys.append(r["key"])
                self.locations.append(r["location"])
                self.captions.append(r.get("caption"))
        if len(self.keys) != self.offsets[-1]:
            raise CheckpointError(f"{self.folder}: {len(self.keys)} rows listed for {self.offsets[-1]} features")
        self._position: dict[str, int] | None = None

    @property
    def key(self) -> CacheKey:
        return CacheKey(**self.meta["key"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.arrays[s][i - self.offsets[s]]

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at `indices` (any order) as one array: reads only those rows from disk."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.shape), self.dtype)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.arrays[s][idx[sel] - self.offsets[s]]
        return out

    def tensor(self, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """Rows as a CPU tensor (all rows when `indices` is None: only for small entries)."""
        idx = np.arange(len(self)) if indices is None else indices
        return torch.from_numpy(self.gather(idx))

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """One epoch of (row indices, rows as a tensor) batches, read from the memory map batch by batch.

        Rows are permuted with (seed, epoch) and dealt to ranks round-robin, cut to the same count on every
        rank (DDP needs equal step counts), so each row is used at most once per epoch over all ranks."""
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be at least 1")
        n = len(self)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        per_rank = n // world_size
        mine = order[rank::world_size][:per_rank]
        stop = len(mine) - len(mine) % batch_size if drop_last else len(mine)
        for i in range(0, stop, batch_size):
            idx = mine[i : i + batch_size]
            # sorted reads are sequential on disk; the batch keeps the shuffled order
            srt = np.argsort(idx, kind="stable")
            rows = np.empty((len(idx), *self.shape), self.dtype)
            rows[srt] = self.gather(idx[srt])
            yield idx, torch.from_numpy(rows)

    def position(self, key: str) -> int:
        if self._position is None:
            self._position = {k: i for i, k in enumerate(self.keys)}
        return self._position[key]


class FeatureCache:
    """A folder of cache entries (default: $ZSCIR_HOME/cache/features)."""

    def __init__(self, root: str | Path | None = None) -> None:
        from zscir.paths import cache_dir

        self.root = Path(root) if root is not None else cache_dir() / "features"

    def path(self, key: CacheKey) -> Path:
        return self.root / key.dirname

    def get(self, key: CacheKey) -> CachedFeatures | None:
        """The entry for `key`, or None (a damaged entry is logged and treated as missing)."""
        folder = self.path(key)
        if not (folder / META).is_file():
            return None
        try:
            entry = CachedFeatures(folder)
        except (CheckpointError, OSError, ValueError, KeyError) as e:
            log.warning("ignoring a damaged feature-cache entry %s (%s)", folder, e)
            return None
        return entry if entry.key == key else None

    def build(self, key: CacheKey, batches: Iterable[tuple[Sequence[str], Sequence[str], Sequence[str | None], np.ndarray]]
              | Callable[[set[str]], Iterable[tuple[Sequence[str], Sequence[str], Sequence[str | None], np.ndarray]]],
              *, rank: int = 0, world_size: int = 1, barrier: Callable[[], None] | None = None,
              failures: Callable[[], list[dict[str, str]]] | None = None,
              shard_bytes: int = 64 << 20) -> CachedFeatures:
        """Write an entry from `batches` of (keys, locations, captions, features (B, *shape)) and return it.

        `batches` may be a callable taking the set of keys a previous, interrupted build of the same key
        already wrote (so that it does not compute them again); a plain iterable's rows with such keys are
        dropped. Rows are flushed to disk every `shard_bytes`, so memory stays flat. An interrupted build
        leaves a hidden `.<entry>.building` folder that the next build of the same key (and world size)
        resumes; a refused one (InputError) is removed.

        With world_size > 1 every rank calls build with its own part of the stream and the same key;
        `barrier` (e.g. torch.distributed.barrier) separates the writing from rank 0's commit."""
        final = self.path(key)
        if world_size > 1 and barrier is None:
            raise ValueError("build with world_size > 1 needs a barrier")
        # One builder per entry across processes (two trainers started at once): the second waits for the
        # lock, then finds the entry made. Under DDP rank 0 holds it for all ranks.
        lock = self._lock(final) if rank == 0 else None
        try:
            return self._build_locked(key, final, batches, rank, world_size, barrier, failures, shard_bytes)
        finally:
            if lock is not None:
                os.close(lock)

    @staticmethod
    def _lock(final: Path) -> int:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(final.parent / f".{final.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _build_locked(self, key: CacheKey, final: Path, batches: Any, rank: int, world_size: int,
                      barrier: Callable[[], None] | None, failures: Callable[[], list[dict[str, str]]] | None,
                      shard_bytes: int) -> CachedFeatures:
        work = final.parent / f".{final.name}.building"
        state = {"key": key.digest(), "world_size": world_size}
        if rank == 0 and self.get(key) is None:
            try:
                resumable = json.loads((work / BUILD).read_text(encoding="utf-8")) == state
            except (OSError, ValueError):
                resumable = False
            if work.exists() and not resumable:
                shutil.rmtree(work)  # another world size, or not ours: start over
            if not work.exists():
                tmp = final.parent / f".{final.name}.building-{os.getpid()}"
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / BUILD).write_text(json.dumps(state), encoding="utf-8")
                os.replace(tmp, work)
        if barrier is not None:
            barrier()
        if not (work / BUILD).is_file():  # rank 0 found the entry complete (made while it waited for the lock)
            entry = self.get(key)
            if entry is None:
                raise CheckpointError(f"{final}: the feature cache entry is neither built nor being built")
            return entry
        done, next_shard = self._resume_part(work, rank)
        if done:
            log.info("feature cache: resuming %s (%d rows already written by rank %d)", final.name, len(done), rank)
        stream_ = batches(done) if callable(batches) else batches
        try:
            self._write_part(work, rank, stream_, done, next_shard, shard_bytes)
            if failures is not None:
                with open(work / f"failures-r{rank:03d}.jsonl", "w", encoding="utf-8") as f:
                    for row in failures():
                        f.write(json.dumps(row, ensure_ascii=True) + "\n")
        except InputError:
            if world_size == 1:
                shutil.rmtree(work, ignore_errors=True)  # refused data: nothing worth resuming
            raise
        if barrier is not None:
            barrier()
        error: BaseException | None = None
        if rank == 0:
            try:
                self._commit(work, final, key, world_size)
            except BaseException as e:  # noqa: BLE001 - raised after the barrier, so no rank waits forever
                error = e
        if barrier is not None:
            barrier()
        if error is not None:
            raise error
        entry = self.get(key)
        if entry is None:
            raise CheckpointError(f"{final}: the feature cache entry was not written")
        return entry

    @staticmethod
    def _resume_part(work: Path, rank: int) -> tuple[set[str], int]:
        """Keys already written by this rank (complete shards only) and the next shard number."""
        done: set[str] = set()
        last = -1
        for f in sorted(work.glob(f"rows-r{rank:03d}-*.jsonl")):
            n = int(f.stem.rsplit("-", 1)[1])
            if not (work / f"features-r{rank:03d}-{n:05d}.npy").is_file():
                f.unlink()  # its features never landed
                continue
            with open(f, encoding="utf-8") as fh:
                done.update(json.loads(line)["key"] for line in fh)
            last = max(last, n)
        for f in work.glob(f".features-r{rank:03d}-*.tmp"):
            f.unlink()
        return done, last + 1

    @staticmethod
    def _write_part(work: Path, rank: int, batches: Iterable, done: set[str], n_shard: int, shard_bytes: int) -> None:
        buf_rows: list[dict[str, Any]] = []
        buf: list[np.ndarray] = []
        size = 0

        def flush() -> None:
            nonlocal buf_rows, buf, size, n_shard
            if not buf_rows:
                return
            name = f"r{rank:03d}-{n_shard:05d}"
            with open(work / f"rows-{name}.jsonl", "w", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in buf_rows))
            tmp = work / f".features-{name}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, np.concatenate(buf), allow_pickle=False)
            os.replace(tmp, work / f"features-{name}.npy")  # the shard's commit point
            n_shard += 1
            buf_rows, buf, size = [], [], 0

        for keys, locations, captions, feats in batches:
            arr = np.ascontiguousarray(feats)
            if not (len(keys) == len(locations) == len(captions) == len(arr)):
                raise ValueError("keys, locations, captions and features differ in length")
            if done:
                keep = [i for i, k in enumerate(keys) if k not in done]
                if len(keep) < len(keys):
                    arr, keys = arr[keep], [keys[i] for i in keep]
                    locations, captions = [locations[i] for i in keep], [captions[i] for i in keep]
            if len(arr) == 0:
                continue
            buf.append(arr)
            buf_rows += [{"key": k, "location": loc, "caption": c} for k, loc, c in zip(keys, locations, captions)]
            size += arr.nbytes
            if size >= shard_bytes:
                flush()
        flush()

    @staticmethod
    def _commit(work: Path, final: Path, key: CacheKey, world_size: int) -> None:
        shards: list[dict[str, Any]]
        shards, shape, dtype = [], None, None
        with open(work / ROWS, "w", encoding="utf-8") as rows_out, open(work / FAILURES, "w", encoding="utf-8") as fails:
            for r in range(world_size):
                for f in sorted(work.glob(f"features-r{r:03d}-*.npy")):
                    a = np.load(f, mmap_mode="r", allow_pickle=False)
                    if shape is None:
                        shape, dtype = a.shape[1:], a.dtype
                    elif a.shape[1:] != shape or a.dtype != dtype:
                        raise ValueError(f"{f.name}: rows {a.shape[1:]} {a.dtype}, expected {shape} {dtype}")
                    shards.append({"file": f.name, "rows": int(a.shape[0])})
                    part_rows = work / f"rows-{f.stem.split('-', 1)[1]}.jsonl"
                    rows_out.write(part_rows.read_text(encoding="utf-8"))
                    part_rows.unlink()
                part_fail = work / f"failures-r{r:03d}.jsonl"
                if part_fail.is_file():
                    fails.write(part_fail.read_text(encoding="utf-8"))
                    part_fail.unlink()
        (work / BUILD).unlink(missing_ok=True)
        if shape is None:
            shutil.rmtree(work, ignore_errors=True)
            raise InputError("no features to cache: every item was unreadable or the source is empty")
        n_fail = sum(1 for _ in open(work / FAILURES, encoding="utf-8"))
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "zscir_version": zscir.__version__,
                "key": asdict(key), "shape": list(shape), "dtype": str(dtype), "rows": sum(s["rows"] for s in shards),
                "shards": shards, "failures": n_fail}
        (work / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if final.exists():  # an entry of the same key (a concurrent build, or a damaged one): replace it
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
