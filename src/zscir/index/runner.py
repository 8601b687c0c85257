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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from zscir.data.sources import split_location
from zscir.errors import CheckpointError, InputError
from zscir.index import kinds
from zscir.index.manifest import MANIFEST, FaissRecord, Manifest
from zscir.index.reader import read_items
from zscir.index.writer import (
    SHARDS,
    file_identity,
    gather_rows,
    read_shard_embeddings,
    read_shard_items,
    verify_shard,
    write_shard,
)
from zscir.utils.io import atomic_path, check_output_dir, sha256_file

if TYPE_CHECKING:
    from zscir.index.distributor import LocalDistributor, RayDistributor
    from zscir.index.embeddings import PrecomputedDistributor

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
    method: str | None = "slerp",
    checkpoints: Sequence[str] = (),
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
    target_recall: float = 0.95,
    recall_k: int = 50,
    embeddings: bool = False,
) -> Manifest:
    """Embed `source` (or, with embeddings=True, import the vectors in it: see zscir.index.embeddings) into
    the index folder `out`; build the faiss index of `kind` and tune its search parameters to
    `target_recall` (recall@`recall_k` against exact search; 0: keep the kind's defaults)."""
    out = Path(out)
    if shard_size < 1 or batch_size < 1:
        raise InputError("--shard-size and --batch-size must be at least 1")
    check_tuning_args(target_recall, recall_k)
    # The shared --out rule, before any work: only a previous index (or a folder holding nothing but the lock
    # of an interrupted first run) may be written into; anything else is refused and left untouched.
    check_output_dir(out, is_index_folder, "a zscir index")
    listing_failures: list[dict[str, str]] = []
    if embeddings:
        from zscir.index.embeddings import read_embeddings

        precomputed = read_embeddings(source)
        items = precomputed.items
    else:
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
        from zscir.index.embedder import load_gallery_encoder

        if man is None:
            enc_method, enc_ckpts = method, list(checkpoints)
        else:  # resume / --add: the encoder the manifest records
            enc_method, enc_ckpts = _recorded_encoder(man)
        bb, m = load_gallery_encoder(spec, enc_method, device, enc_ckpts)
        if embeddings and precomputed.dim != int(bb.embed_dim):
            raise InputError(f"{source}: {precomputed.dim}-d embeddings, but backbone {spec} embeds {bb.embed_dim}-d: "
                             "--backbone must name the model that made them")
        if man is None:
            pre = bb.preprocess_config
            from dataclasses import asdict

            from zscir.methods.build import checkpoint_fingerprint

            tuned = m.gallery_id != _plain_gallery_id(bb)
            man = Manifest(backbone_spec=spec, backbone_fingerprint=bb.fingerprint(), preprocess=asdict(pre),
                           preprocess_digest=pre.digest(), gallery_method=m.name, gallery_id=m.gallery_id,
                           dim=int(bb.embed_dim),
                           gallery_checkpoint=str(Path(enc_ckpts[0]).resolve()) if tuned and enc_ckpts else "",
                           gallery_checkpoint_fingerprint=checkpoint_fingerprint(m) if tuned else "")
            enc_method, enc_ckpts = _recorded_encoder(man)
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

        dist: LocalDistributor | RayDistributor | PrecomputedDistributor
        if embeddings:
            dist = precomputed.distributor()  # no model runs: the vectors are read as they are
        elif engine == "ray":
            from zscir.index.distributor import RayDistributor

            dist = RayDistributor(spec, enc_method, batch_size, workers, ray_actors, ray_address, ray_cpus,
                                  checkpoints=tuple(enc_ckpts))
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
        _build_faiss(out, man, kind, had_faiss, target_recall, recall_k,
                     tuning_text_directions(bb) if target_recall > 0 else None)
        man.complete = True
        man.save(out)
        if failures:
            log.warning("%d unreadable file(s) listed in %s", failures, out / FAILURES)
        return man


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


def is_index_folder(folder: Path) -> bool:
    """An index (complete or interrupted: it has a manifest), or a folder holding only an index lock."""
    return (folder / MANIFEST).is_file() or all(p.name == LOCK for p in folder.iterdir())


def _plain_gallery_id(backbone) -> str:
    """The gallery id of the backbone's own image tower (what every training-free method uses)."""
    from zscir.methods.base import backbone_gallery_id

    return backbone_gallery_id(backbone)


def _recorded_encoder(man: Manifest) -> tuple[str, list[str]]:
    """(method, checkpoints) that re-create the gallery encoder a manifest records: its checkpoint when one
    changed the gallery tower, else the backbone's own image tower (`image`)."""
    if man.gallery_checkpoint:
        return man.gallery_method, [man.gallery_checkpoint]
    from zscir.methods import get_method_class

    cls = get_method_class(man.gallery_method)
    return (man.gallery_method if not cls.needs_checkpoint() else "image"), []


def _write_failures(out: Path, man: Manifest, listing: Sequence[dict[str, str]] = ()) -> int:
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


TUNING_QUERIES = 200


def check_tuning_args(target_recall: float, recall_k: int) -> None:
    if not 0 <= target_recall <= 1:
        raise InputError(f"--target-recall {target_recall}: must be in [0, 1] (0: keep the kind's default parameters)")
    if recall_k < 1:
        raise InputError(f"--recall-k {recall_k}: must be at least 1")
#: `auto` falls back to exact search up to this size when no approximate kind reaches the recall target
AUTO_FLAT_FALLBACK_MAX = 1_000_000


def _build_faiss(out: Path, man: Manifest, kind: str, previous: FaissRecord | None, target_recall: float = 0.0,
                 recall_k: int = 50, text_dirs: np.ndarray | None = None) -> None:
    n, dim = man.count, man.dim
    old_path = out / previous.file if previous is not None else None
    # The new index never overwrites the one the manifest still names: a reader that opened the old manifest
    # (a search during `--add`) still finds its file. Two names alternate; the older is overwritten next time.
    name = FAISS_FILE if previous is None or previous.file != FAISS_FILE else FAISS_FILE_ALT
    path = out / name
    arrays = [read_shard_embeddings(out, rec) for rec in man.shards]
    tune = lambda index, params, rerank: _tune(index, arrays, n, params, rerank, target_recall, recall_k,  # noqa: E731
                                               text_dirs)
    if previous is not None and old_path is not None and kind == "auto" and old_path.is_file() and sha256_file(old_path) == previous.sha256 \
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
        tuning = tune(index, params, rerank)  # the gallery grew: measure (and re-tune) again
    else:
        candidates = kinds.auto_candidates(n) if kind == "auto" else [kind]
        best: tuple | None = None
        for cand in candidates:
            factory, params, rerank = kinds.factory_for(cand, n, dim)
            index = _build_kind(arrays, factory, n, dim)
            tuning = tune(index, params, rerank)
            if tuning is None or tuning.reached:
                best = (index, factory, params, rerank, tuning)
                break
            log.warning("%s: recall@%d %.3f < target %.3f at the most effort tried", factory, tuning.k, tuning.recall,
                        tuning.target_recall)
            if best is None or best[4] is None or tuning.recall > best[4].recall:
                best = (index, factory, params, rerank, tuning)
        else:
            if kind == "auto" and n <= AUTO_FLAT_FALLBACK_MAX:
                log.warning("no approximate kind reaches recall %.3f on this gallery: using exact search (flat)",
                            target_recall)
                factory, params, rerank = kinds.factory_for("flat", n, dim)
                best = (_build_kind(arrays, factory, n, dim), factory, params, rerank, tune(None, params, rerank))
        assert best is not None  # candidates is never empty
        index, factory, params, rerank, tuning = best
    if tuning is not None:
        params, rerank = tuning.search, tuning.rerank
        log.info("faiss %s: search %s, rerank %d: recall@%d %.4f (target %.3f%s)", factory, params or "-", rerank,
                 tuning.k, tuning.recall, tuning.target_recall, "" if tuning.reached else ", NOT reached")
    with atomic_path(path) as tmp:
        kinds.write(index, str(tmp))
    man.faiss = FaissRecord(factory=factory, metric="ip", search=params, file=name,
                            sha256=sha256_file(path), count=int(index.ntotal), rerank=rerank,
                            tuning=tuning.to_json() if tuning is not None else None)


def _build_kind(arrays: list[np.ndarray], factory: str, n: int, dim: int):
    import faiss

    sample = None
    if not faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT).is_trained:
        rng = np.random.default_rng(0)
        take = np.sort(rng.choice(n, size=min(n, 100_000), replace=False))
        sample = gather_rows(arrays, take)
    t0 = time.perf_counter()
    index = kinds.build(factory, dim, (np.asarray(a, np.float32) for a in arrays), n, sample)
    log.info("faiss %s over %d vectors built in %.1f s", factory, n, time.perf_counter() - t0)
    return index


def _tune(index, arrays: list[np.ndarray], n: int, params: str, rerank: int, target: float, k: int,
          text_dirs: np.ndarray | None) -> kinds.TuningResult | None:
    """Measure (and tune) recall@k of `index` on composed queries drawn from the gallery; None: no target."""
    if target <= 0:
        return None
    if not 0 < target <= 1:
        raise InputError(f"--target-recall {target}: must be in (0, 1]")
    k = max(1, min(k, n // 4))  # recall@k of a k close to n says nothing (everything is found)
    if index is None or _is_exact(index):
        return kinds.TuningResult(target_recall=target, k=k, queries=0, query_source="exact search (nothing to tune)",
                                  reached=True, recall=1.0, search=params, rerank=rerank, p50_ms=0.0)
    queries = kinds.composed_queries(lambda pos: gather_rows(arrays, pos), n, TUNING_QUERIES, text_dirs)
    source = "text tower" if text_dirs is not None and len(text_dirs) else "gallery items"
    return kinds.tune(index, arrays, queries, k, target, params, rerank, source)


def _is_exact(index) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def tuning_text_directions(backbone) -> np.ndarray | None:
    """Embeddings of generic modification texts by the backbone's text tower (None if it has none)."""
    import torch

    try:
        with torch.inference_mode():
            return backbone.encode_text(list(kinds.TUNING_TEXTS)).float().cpu().numpy()
    except (AttributeError, NotImplementedError):
        return None

