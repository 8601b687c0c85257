"""Micro-batching for the service: concurrent /search requests share model calls.

Requests are gathered for at most `max_wait_ms` (or until `max_batch` are waiting) and composed together in
one model thread (one model per process: no lock convoy, no oversubscribed cores). A batch waits only for
requests already being handled (e.g. an upload being decoded): a lone request is not delayed, and under load
the requests that arrive while the model works form the next batch.

  - text tower: the batch's distinct modification texts that are not in the method's LRU cache of text
    embeddings are encoded together (at most `max_text_batch` per call);
  - image tower: uploaded references are encoded together (at most `max_image_batch` per call); images are
    decoded and preprocessed off the event loop, in a bounded pool of `decode_workers` threads;
  - a gallery-id reference uses its stored embedding (no decoding, no image tower);
  - the queries are searched together, grouped so that every request gets exactly the answer it would get
    alone (same k, same number of excluded items: see zscir.index.store.search_vectors).

Methods that split a query into an image-tower vector and a text-tower vector (`embed_reference`,
`embed_texts`, `compose_parts`: Slerp, TAT, the baselines) get both towers batched and texts cached; other
methods (pseudo-token ones) are batched as whole `compose` / `compose_embedded` calls. The unbatched path
(`zscir serve --no-batching`) is Searcher.search, one request at a time; both give the same answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from zscir.index.search import Searcher, SearchHit, check_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    """How requests are gathered; `enabled=False` serves each request on its own (the side-by-side baseline)."""

    enabled: bool = True
    max_wait_ms: float = 3.0  # how long the first request of a batch waits for company
    max_batch: int = 64  # requests per micro-batch
    max_image_batch: int = 16  # image-tower rows per call
    max_text_batch: int = 64  # text-tower rows per call
    text_cache_size: int = 4096  # text embeddings kept per method (LRU)
    decode_workers: int = 2  # threads decoding + preprocessing uploaded images

    def __post_init__(self) -> None:
        if self.max_wait_ms < 0 or min(self.max_batch, self.max_image_batch, self.max_text_batch,
                                       self.decode_workers) < 1 or self.text_cache_size < 0:
            raise ValueError(f"invalid batching settings: {self}")


class TextCache:
    """LRU of text -> embedding (a CPU tensor row), for one method."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> torch.Tensor | None:
        v = self._d.get(text)
        if v is None:
            self.misses += 1
            return None
        self._d.move_to_end(text)
        self.hits += 1
        return v

    def put(self, text: str, emb: torch.Tensor) -> None:
        if self.size <= 0:
            return
        self._d[text] = emb
        self._d.move_to_end(text)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class _Request:
    method: str
    alpha: float | None
    text: str | None
    k: int
    pixels: torch.Tensor | None  # (1, 3, H, W) preprocessed upload
    ref: int | None  # gallery position of the reference
    future: asyncio.Future = field(repr=False)


def _pixels(r: _Request) -> torch.Tensor:
    assert r.pixels is not None  # an upload, or a gallery image loaded for a method that needs pixels
    return r.pixels


@dataclass
class _Caps:
    parts: bool  # embed_texts / compose_parts available
    embedded: bool  # compose_embedded available


class MicroBatcher:
    """Gathers concurrent searches into micro-batches run in one model thread. Use from one event loop."""

    def __init__(self, searcher: Searcher, config: BatchingConfig = BatchingConfig()) -> None:
        self.searcher = searcher
        self.config = config
        self._model = ThreadPoolExecutor(1, thread_name_prefix="zscir-model")
        self.decode_pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="zscir-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._active = 0  # requests inside the route (event-loop thread only)
        self._texts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # method -> TextCache
        self._caps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # method -> _Caps
        self.stats = {"batches": 0, "requests": 0, "max_batch_seen": 0, "text_encoded": 0, "images_encoded": 0}
        self._stats_lock = threading.Lock()

    # --- the event-loop side ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Mark a request as being handled (from its start, before decoding): batches wait for such requests."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    async def run_decode(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run image decoding/preprocessing in the bounded decode pool (never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    def preprocess(self, image) -> torch.Tensor:
        """PIL image -> (1, 3, H, W) pixels for the backbone (call in the decode pool)."""
        return self.searcher.backbone.preprocess([image])

    async def search(self, text: str | None, method: str = "slerp", alpha: float | None = None, k: int = 10,
                     pixels: torch.Tensor | None = None, ref: str | None = None) -> list[SearchHit]:
        """Top-k for one reference (preprocessed `pixels` or a gallery id `ref`, never listed) + `text`."""
        ref_pos = self.searcher.index.lookup(ref) if ref else None
        if not self.config.enabled:
            return await asyncio.get_running_loop().run_in_executor(
                self._model, self._search_one, text, method, alpha, k, pixels, ref_pos)
        loop = asyncio.get_running_loop()
        self._ensure_collector(loop)
        assert self._queue is not None  # made by _ensure_collector
        fut = loop.create_future()
        await self._queue.put(_Request(method, alpha, text, k, pixels, ref_pos, fut))
        return await fut

    def _ensure_collector(self, loop: asyncio.AbstractEventLoop) -> None:
        # A test client may run each request in a fresh loop: the queue and its collector follow the loop.
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect(self._queue))

    async def _collect(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        wait = self.config.max_wait_ms / 1000
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + wait
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0 or self._active <= len(batch):
                    break  # nobody else is on the way: do not wait for company
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            live = [r for r in batch if not r.future.done()]  # a client may have gone away
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._model, self._run_batch, live)
            except Exception as e:  # a bug, not a bad request: fail this batch, keep serving
                log.exception("micro-batch failed")
                results = [e] * len(live)
            for r, res in zip(live, results):
                if r.future.done():
                    continue
                if isinstance(res, BaseException):
                    r.future.set_exception(res)
                else:
                    r.future.set_result(res)

    def close(self) -> None:
        if self._task is not None and not self._task.done() and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._model.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # --- the model thread ---------------------------------------------------------------------------------
    def _search_one(self, text, method, alpha, k, pixels, ref_pos) -> list[SearchHit]:
        """The unbatched path: the same query path as `zscir search` (Searcher), one request at a time."""
        s = self.searcher
        with s._lock:
            m = s.method(method, alpha)
            with torch.inference_mode():
                if pixels is not None and m.uses_image:
                    q = F.normalize(m.compose(pixels, [check_text(m, text)]).float(), dim=-1).cpu().numpy()
                else:
                    q = s.query_vector(m, [], text, [ref_pos] if ref_pos is not None else [])
        scores, pos = s.index.search(q, k, [ref_pos] if ref_pos is not None else [])
        return s.index.hits(scores[0], pos[0])

    def _run_batch(self, batch: list[_Request]) -> list[Any]:
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
        s = self.searcher
        results: list[Any] = [None] * len(batch)
        queries: dict[int, np.ndarray] = {}
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(batch):
            groups.setdefault((r.method, r.alpha), []).append(i)
        with torch.inference_mode():
            for (name, alpha), idx in groups.items():
                try:
                    with s._lock:
                        m = s.method(name, alpha)
                    ok = []
                    for i in idx:
                        try:
                            batch[i].text = check_text(m, batch[i].text)
                            if m.uses_image and batch[i].pixels is None and batch[i].ref is None:
                                from zscir.errors import InputError

                                raise InputError(f"method {m.name!r} needs a reference image")
                            ok.append(i)
                        except Exception as e:  # noqa: BLE001 - the error is this request's answer, raised to its caller
                            results[i] = e
                    if ok:
                        q = self._compose(m, [batch[i] for i in ok])
                        for j, i in enumerate(ok):
                            queries[i] = q[j : j + 1]
                except Exception as e:  # noqa: BLE001 - each request of the group gets the error, raised to its caller
                    for i in idx:
                        if results[i] is None:
                            results[i] = e
        # search, grouped so that each row is answered as it would be alone
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in queries:
            by_shape.setdefault((batch[i].k, 0 if batch[i].ref is None else 1), []).append(i)
        for (k, _), idx in by_shape.items():
            try:
                q = np.concatenate([queries[i] for i in idx])
                excl = [[ref] if (ref := batch[i].ref) is not None else [] for i in idx]
                scores, pos = s.index.search(q, k, exclude_rows=excl)
                for j, i in enumerate(idx):
                    results[i] = s.index.hits(scores[j], pos[j])
            except Exception as e:  # noqa: BLE001 - each request of the group gets the error, raised to its caller
                for i in idx:
                    results[i] = e
        return results

    def _capabilities(self, m) -> _Caps:
        caps = self._caps.get(m)
        if caps is None:
            probe_text = ["."]
            parts = m.embed_texts(probe_text) is not None
            embedded = False
            if m.uses_image and len(self.searcher.index):
                emb = torch.from_numpy(self.searcher.index.vectors([0])).to(m.backbone.device)
                embedded = m.compose_embedded(emb, probe_text) is not None
            caps = self._caps[m] = _Caps(parts, embedded)
        return caps

    def _text_embeddings(self, m, texts: Sequence[str]) -> torch.Tensor:
        cache = self._texts.get(m)
        if cache is None:
            cache = self._texts[m] = TextCache(self.config.text_cache_size)
        found: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for t in dict.fromkeys(texts):
            v = cache.get(t)
            if v is None:
                missing.append(t)
            else:
                found[t] = v
        step = self.config.max_text_batch
        for s in range(0, len(missing), step):
            chunk = missing[s : s + step]
            w = m.embed_texts(chunk).float().cpu()
            with self._stats_lock:
                self.stats["text_encoded"] += len(chunk)
            for t, row in zip(chunk, w):
                cache.put(t, row)
                found[t] = row
        return torch.stack([found[t] for t in texts])

    def _compose(self, m, reqs: list[_Request]) -> np.ndarray:
        """(B, D) L2-normalised queries for requests of one method."""
        caps = self._capabilities(m)
        dev = m.backbone.device
        texts = cast(list[str], [r.text for r in reqs])  # check_text (in _run_batch) made each one a str
        if not m.uses_image:
            if caps.parts:
                q = m.compose_parts(None, self._text_embeddings(m, texts).to(dev))
            else:
                q = torch.cat([m.compose(None, texts[s : s + self.config.max_text_batch])
                               for s in range(0, len(texts), self.config.max_text_batch)])
            return F.normalize(q.float(), dim=-1).cpu().numpy()
        out = torch.empty(len(reqs), self.searcher.index.manifest.dim)
        refs = {i: r.ref for i, r in enumerate(reqs) if r.ref is not None}
        gal = list(refs)
        up = [i for i, r in enumerate(reqs) if r.ref is None]
        if gal and not caps.embedded:  # the method needs the stored images' pixels
            from zscir.serve.app import read_indexed_file  # only the file that was indexed (or its tar member)
            from zscir.utils.io import load_image_bytes

            for i in gal:
                item = self.searcher.index.items[refs[i]]
                reqs[i].pixels = self.searcher.backbone.preprocess([load_image_bytes(
                    read_indexed_file(item), f"gallery image {item['id']!r}")])
            up, gal = sorted(up + gal), []
        ref_emb: dict[int, torch.Tensor] = {}
        if gal:
            stored = torch.from_numpy(self.searcher.index.vectors([refs[i] for i in gal]))
            ref_emb.update(zip(gal, stored))
        pixel_rows = up
        if up and caps.parts:
            step = self.config.max_image_batch
            encoded: list[torch.Tensor] = []
            embedded = True
            for s in range(0, len(up), step):
                px = torch.cat([_pixels(reqs[i]) for i in up[s : s + step]]).to(dev)
                e = m.embed_reference(px)
                if e is None:
                    embedded = False
                    break
                encoded.append(e.float().cpu())
                with self._stats_lock:
                    self.stats["images_encoded"] += len(px)
            if embedded:
                ref_emb.update(zip(up, torch.cat(encoded)))
                pixel_rows = []
        if caps.parts and ref_emb:
            rows = sorted(ref_emb)
            w = self._text_embeddings(m, [texts[i] for i in rows]).to(dev)
            q = m.compose_parts(torch.stack([ref_emb[i] for i in rows]).to(dev), w)
            out[rows] = q.float().cpu()
        elif ref_emb:  # compose_embedded, batched
            rows = sorted(ref_emb)
            step = self.config.max_text_batch
            for s in range(0, len(rows), step):
                part = rows[s : s + step]
                q = m.compose_embedded(torch.stack([ref_emb[i] for i in part]).to(dev), [texts[i] for i in part])
                out[part] = q.float().cpu()
        step = self.config.max_image_batch
        for s in range(0, len(pixel_rows), step):  # whole compose calls (methods that need pixels)
            part = pixel_rows[s : s + step]
            px = torch.cat([_pixels(reqs[i]) for i in part]).to(dev)
            out[part] = m.compose(px, [texts[i] for i in part]).float().cpu()
            with self._stats_lock:
                self.stats["images_encoded"] += len(part)
        return F.normalize(out, dim=-1).numpy()

    def info(self) -> dict[str, Any]:
        with self._stats_lock:
            st: dict[str, Any] = dict(self.stats)
        st["mean_batch"] = round(st["requests"] / st["batches"], 2) if st["batches"] else None
        st["text_cache_entries"] = sum(len(c) for c in self._texts.values())
        st["enabled"] = self.config.enabled
        return st
