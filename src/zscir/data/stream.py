"""Streaming: a torch IterableDataset over a `Source` that decodes and preprocesses in DataLoader worker
processes, and a loader wrapper that keeps the failures report and enforces the refusal threshold.

Splitting (each item exactly once per epoch across all workers of all ranks): with P = world_size x workers
parts, part p = rank x workers + worker id. When the source has at least P units (tar shards), part p reads
whole units p, p+P, ... (no tar is opened twice); otherwise every part walks the same record stream and keeps
the records at positions p, p+P, ... (cheap: only the kept records are decoded).

Memory: a worker holds at most `shuffle_buffer` records plus one batch; the loader prefetches
`prefetch_factor` batches per worker. Nothing is ever proportional to the size of the data set.

Batches are formed inside the workers (full batches of good items, the last one possibly short), so an
unreadable item never shrinks a batch; each batch carries the failures its worker met since its previous
batch, and a failures-only batch (len 0) may close a worker's stream."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zscir.backbones.preprocess import PreprocessConfig, preprocess_image
from zscir.data.sources import Record, Source, open_source
from zscir.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

Transform = Callable[[Any], torch.Tensor]


@dataclass
class Batch:
    """A batch of decoded items. `pixels` is (B, 3, H, W) (None when the stream has no transform: then
    `images` holds the PIL images). `failures` are `{"id", "path", "error"}` rows skipped since the previous
    batch of the same worker."""

    keys: list[str]
    locations: list[str]
    captions: list[str | None]
    metas: list[dict[str, Any]]
    pixels: torch.Tensor | None = None
    images: list[Any] | None = None
    failures: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


@dataclass(frozen=True)
class StreamConfig:
    """How a source is streamed. `workers` are DataLoader worker processes (0: decode in this process)."""

    batch_size: int = 64
    workers: int = 2
    shuffle: bool = False
    shuffle_buffer: int = 1000
    seed: int = 0
    drop_last: bool = False
    #: records without a caption are skipped into the failures (training on pairs needs them)
    need_captions: bool = False
    #: cycle epochs forever (steps-based training; each pass reshuffled with seed + epoch)
    repeat: bool = False
    #: refuse the data set (InputError) once more than this fraction of the items seen were unreadable ...
    max_bad_fraction: float = 0.05
    #: ... counted only after this many items (a few early bad files do not stop a large run)
    min_seen: int = 200
    prefetch_factor: int = 2
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}: must be at least 1")
        if self.workers < 0:
            raise InputError(f"workers {self.workers}: must be >= 0")
        if not 0.0 <= self.max_bad_fraction <= 1.0 or math.isnan(self.max_bad_fraction):
            raise InputError(f"max bad fraction {self.max_bad_fraction}: must be in [0, 1]")


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StreamingDataset(IterableDataset):
    """Yields `Batch`es of the source's records, decoded by `transform` (a PreprocessConfig, a callable
    PIL image -> tensor, or None for PIL images), split across DataLoader workers and DDP ranks.

    rank / world_size default to torch.distributed's when it is initialised, else 0 / 1. Records whose key
    is in `skip_keys` are passed over without decoding."""

    def __init__(self, source: Source | str, transform: PreprocessConfig | Transform | None,
                 config: StreamConfig = StreamConfig(), rank: int | None = None,
                 world_size: int | None = None, skip_keys: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.skip_keys = skip_keys  # records already handled (a resumed feature-cache build): not decoded
        self.source = open_source(source) if isinstance(source, str) else source
        self.transform = transform
        self.config = config
        r, w = _dist_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    # -- which records this part reads -------------------------------------------------------------------
    def _part(self) -> tuple[int, int]:
        info = get_worker_info()
        nw, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * nw + wid, self.world_size * nw

    def _records(self, part: int, nparts: int, epoch: int) -> Iterator[Record | dict[str, str]]:
        """This part's records for one epoch, interleaved with failure rows (dicts) found while listing."""
        src, cfg = self.source, self.config
        units = src.units()
        if cfg.shuffle and len(units) > 1:
            units = list(units)
            random.Random(f"{cfg.seed}/{epoch}/units").shuffle(units)
        by_unit = len(units) > 1 and len(units) >= nparts
        reported = 0  # from the start: problems met while the source was opened belong to the report too

        def new_failures() -> Iterator[dict[str, str]]:
            nonlocal reported
            fresh = src.failures[reported:]
            reported = len(src.failures)
            if by_unit or part == 0:  # item split: every part sees the same listing problems; one reports
                yield from fresh

        if by_unit:
            for u in units[part::nparts]:
                for rec in src.records(u):
                    yield from new_failures()
                    yield rec
                yield from new_failures()
            return
        i = 0
        for u in units:
            for rec in src.records(u):
                yield from new_failures()
                if i % nparts == part:
                    yield rec
                i += 1
            yield from new_failures()

    def _shuffled(self, stream: Iterator[Record | dict], part: int, epoch: int) -> Iterator[Record | dict]:
        cfg = self.config
        if not cfg.shuffle or cfg.shuffle_buffer <= 1:
            yield from stream
            return
        rng = random.Random(f"{cfg.seed}/{epoch}/{part}")
        buf: list[Record] = []
        for x in stream:
            if isinstance(x, dict):
                yield x
                continue
            if len(buf) < cfg.shuffle_buffer:
                buf.append(x)
                continue
            j = rng.randrange(len(buf))
            buf[j], x = x, buf[j]
            yield x
        rng.shuffle(buf)
        yield from buf

    # -- decoding ----------------------------------------------------------------------------------------
    def _decode(self, rec: Record) -> Any:
        image = rec.load()
        t = self.transform
        if t is None:
            return image
        if isinstance(t, PreprocessConfig):
            return preprocess_image(image, t)
        return t(image)

    def _batch(self, items: list[tuple[Record, Any]], failures: list[dict[str, str]]) -> Batch:
        recs = [r for r, _ in items]
        decoded = [d for _, d in items]
        pixels = torch.stack(decoded) if decoded and isinstance(decoded[0], torch.Tensor) else None
        return Batch(keys=[r.key for r in recs], locations=[r.location for r in recs],
                     captions=[r.caption for r in recs], metas=[r.meta for r in recs], pixels=pixels,
                     images=None if pixels is not None or not decoded else decoded, failures=failures)

    def __iter__(self) -> Iterator[Batch]:
        part, nparts = self._part()
        cfg = self.config
        epoch = self.epoch
        while True:
            items: list[tuple[Record, Any]] = []
            failures: list[dict[str, str]] = []
            for x in self._shuffled(self._records(part, nparts, epoch), part, epoch):
                if isinstance(x, dict):
                    failures.append(x)
                    continue
                if self.skip_keys and x.key in self.skip_keys:
                    continue
                if cfg.need_captions and not x.caption:
                    failures.append({"id": x.key, "path": x.location, "error": "no caption"})
                    continue
                try:
                    items.append((x, self._decode(x)))
                except InputError as e:
                    failures.append({"id": x.key, "path": x.location, "error": str(e)})
                    continue
                if len(items) == cfg.batch_size:
                    yield self._batch(items, failures)
                    items, failures = [], []
            if items and not cfg.drop_last:
                yield self._batch(items, failures)
                items, failures = [], []
            if failures or items:  # failures (and dropped items) after the last full batch still get reported
                yield self._batch([], failures)
            if not cfg.repeat:
                return
            epoch += 1


def _identity(x: Any) -> Any:
    return x


class StreamingLoader:
    """Iterate `Batch`es from a DataLoader over a StreamingDataset; record every skipped item (appended to
    `failures_path` as JSON lines when given, and kept in `failures`), refuse the data set when too many are
    unreadable, and refuse an epoch that yielded nothing. `seen`/`ok` count items of this rank."""

    def __init__(self, dataset: StreamingDataset, failures_path: str | Path | None = None) -> None:
        self.dataset = dataset
        cfg = dataset.config
        kwargs: dict[str, Any] = {}
        if cfg.workers > 0:
            kwargs["prefetch_factor"] = cfg.prefetch_factor
            kwargs["multiprocessing_context"] = "spawn" if torch.cuda.is_initialized() else "fork"
        # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, so whether
        # a feature pass ran (a cache miss) would change every later random draw, e.g. a model's init
        self.loader = DataLoader(dataset, batch_size=None, num_workers=cfg.workers, collate_fn=_identity,
                                 pin_memory=cfg.pin_memory, generator=torch.Generator().manual_seed(cfg.seed), **kwargs)
        self.failures_path = Path(failures_path) if failures_path else None
        self.failures: list[dict[str, str]] = []
        self._reported: set[tuple[str, str]] = set()
        self.seen = 0
        self.ok = 0
        if self.failures_path is not None:
            self.failures_path.parent.mkdir(parents=True, exist_ok=True)
            self.failures_path.write_text("", encoding="utf-8")

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _where(self) -> str:
        return f"; see {self.failures_path}" if self.failures_path else ""

    def _record(self, failures: list[dict[str, str]]) -> None:
        # Each distinct problem once, although every epoch (and every worker of an item split) meets it again.
        fresh = []
        for row in failures:
            ident = (row.get("id", ""), row.get("error", ""))
            if ident not in self._reported:
                self._reported.add(ident)
                fresh.append(row)
        failures = fresh
        self.failures += failures
        if self.failures_path is not None:
            with open(self.failures_path, "a", encoding="utf-8") as f:
                for row in failures:
                    f.write(json.dumps(row, ensure_ascii=True) + "\n")
        for row in failures[:3]:
            log.debug("skipped %s: %s", row["id"], row["error"])

    def check(self, final: bool = False) -> None:
        """Raise InputError if the failure rate is over the threshold (or, at the end, nothing was read)."""
        cfg = self.dataset.config
        bad = len(self.failures)
        if final and self.ok == 0:
            first = f" (first: {self.failures[0]['error']})" if self.failures else ""
            raise InputError(f"{self.dataset.source.spec}: none of the {self.seen} item(s) could be read{first}"
                             f"{self._where()}")
        if self.seen and (final or self.seen >= cfg.min_seen) and bad / self.seen > cfg.max_bad_fraction:
            raise InputError(
                f"{self.dataset.source.spec}: {bad} of {self.seen} items unreadable ({bad / self.seen:.1%} > "
                f"the allowed {cfg.max_bad_fraction:.1%}; first: {self.failures[0]['id']}: "
                f"{self.failures[0]['error']}){self._where()}")

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            self.seen += len(batch) + len(batch.failures)
            if batch.failures:
                self._record(batch.failures)
            self.ok += len(batch)
            self.check()
            if len(batch):
                yield batch
        if not self.dataset.config.repeat:
            self.check(final=True)


def stream(source: Source | str, transform: PreprocessConfig | Transform | None = None,
           config: StreamConfig = StreamConfig(), *, rank: int | None = None, world_size: int | None = None,
           failures_path: str | Path | None = None) -> StreamingLoader:
    """The one-call entry point: `for batch in stream(open_source(spec), backbone.preprocess_config,
    StreamConfig(batch_size=256, workers=4, shuffle=True, repeat=True)): ...`"""
    return StreamingLoader(StreamingDataset(source, transform, config, rank, world_size), failures_path)


def _decode_location(location: str, cfg: PreprocessConfig) -> torch.Tensor | str:
    from zscir.data.sources import load_location

    try:
        return preprocess_image(load_location(location), cfg)
    except InputError as e:
        return str(e)


class LoadableImage(Protocol):
    """An image that decodes itself (datasets.base.ImageItem: a file, maybe a crop; train.data.Location)."""

    def load(self) -> Image.Image: ...


# what `iter_pixel_batches` decodes: a file path, or an item with `load()`
ImageRef = Path | str | LoadableImage


def _decode_item(item: Any, cfg: PreprocessConfig) -> torch.Tensor:
    """A path, or an item with `load()` (a training Location, a benchmark image that may be a crop)."""
    from zscir.utils.io import load_image

    image = item.load() if hasattr(item, "load") else load_image(Path(item))
    return preprocess_image(image, cfg)


def iter_pixel_batches(paths: Sequence[ImageRef], cfg: PreprocessConfig, batch_size: int = 64, workers: int = 2,
                       ) -> Iterator[torch.Tensor]:
    """Yield (B, 3, H, W) batches of `paths` (file paths or items with `load()`), in order; decoding runs in a
    thread pool one batch ahead of the model. A missing or unreadable image raises InputError naming the file
    (evaluation and training must not drop images silently; `iter_location_batches` is the tolerant twin)."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = None
        for i in range(len(batches) + 1):
            nxt = pool.map(_decode_item, batches[i], [cfg] * len(batches[i])) if i < len(batches) else None
            if pending is not None:
                yield torch.stack(list(pending))
            pending = nxt


def iter_location_batches(locations: list[str], cfg: PreprocessConfig, batch_size: int = 64, workers: int = 2,
                          ) -> Iterator[tuple[torch.Tensor | None, list[int], dict[int, str]]]:
    """Thread-pool decoding of locations (files or tar members), one batch ahead of the consumer, for
    galleries where a bad file must not stop the run: yields (pixels of the readable ones or None, their
    positions within the batch, {position: error}). What `zscir index`'s mapper runs."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [locations[i : i + batch_size] for i in range(0, len(locations), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = None
        for i in range(len(batches) + 1):
            nxt = pool.map(_decode_location, batches[i], [cfg] * len(batches[i])) if i < len(batches) else None
            if pending is not None:
                results = list(pending)
                ok = [j for j, r in enumerate(results) if isinstance(r, torch.Tensor)]
                pixels = [r for r in results if isinstance(r, torch.Tensor)]  # in the order of `ok`
                errors = {j: r for j, r in enumerate(results) if not isinstance(r, torch.Tensor)}
                yield (torch.stack(pixels) if ok else None), ok, errors
            pending = nxt
