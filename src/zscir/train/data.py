"""Trainer inputs: the `--images SOURCE` / `--pairs SOURCE` options and the frozen features read through the
data layer (`zscir.data`: folders, globs, CSV/TSV/JSONL listings, WebDataset tar shards).

Every trainer that learns from images needs only a frozen tower's output for each image, so a SOURCE is
streamed once through that tower into the on-disk, memory-mapped feature cache (keyed by backbone fingerprint
+ preprocessing + source content), and training reads only the rows of each batch from it: memory stays flat
whatever the size of the data set, and a second run (or another trainer) on the same data and backbone does
not recompute anything."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from zscir.errors import InputError


def add_source_args(p: argparse.ArgumentParser, *, images: bool = False, pairs: bool = False) -> None:
    """--images / --pairs SOURCE with the column options and the feature cache."""
    g = p.add_argument_group("your data (a folder, a glob, a CSV/TSV/JSONL listing or WebDataset shards "
                             "such as 'shards/{00000..00331}.tar')")
    if images:
        g.add_argument("--images", default="", metavar="SOURCE", help="unlabelled training images")
    if pairs:
        g.add_argument("--pairs", default="", metavar="SOURCE",
                       help="image-caption pairs: a listing with image + caption columns, or shards with .txt captions")
    g.add_argument("--image-column", default="", help="listing column holding the image path (default: guessed)")
    g.add_argument("--caption-column", default="", help="listing column holding the caption (default: guessed)")
    g.add_argument("--feature-cache", default="", metavar="DIR",
                   help="frozen-feature cache folder (default: $ZSCIR_HOME/cache/features)")


def source_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields add_source_args declared."""
    out = {"image_column": args.image_column, "caption_column": args.caption_column,
           "feature_cache": args.feature_cache}
    for name in ("images", "pairs"):
        if hasattr(args, name):
            out[name] = getattr(args, name)
    return out


def open_training_source(spec: str, image_column: str = "", caption_column: str = ""):
    from zscir.data import open_source

    return open_source(spec, image_column=image_column or None, caption_column=caption_column or None)


class FeatureRows:
    """Row access to a memory-mapped cache entry as torch tensors: rows[idx] reads only those rows."""

    def __init__(self, feats: Any, rows: Sequence[int] | np.ndarray | None = None) -> None:
        self.feats = feats
        self.rows = np.arange(len(feats)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.feats.shape)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = np.arange(len(self.rows))[idx]
        elif isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        sel = self.rows[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(self.feats.gather(sel))


@dataclass
class SourceFeatures:
    """A source's frozen features: rows[i] belongs to keys[i] / locations[i] / captions[i]."""

    rows: FeatureRows
    keys: list[str]
    locations: list[str]
    captions: list[str | None]
    source: str
    failures: int


def source_image_features(backbone: Any, spec: str, feature: str = "image_tokens", *, image_column: str = "",
                          caption_column: str = "", cache: str = "", need_captions: bool = False,
                          fn: Any = None, dtype: torch.dtype = torch.float16) -> SourceFeatures:
    """The frozen `feature` of every readable image of SOURCE `spec` (cached on disk, memory-mapped).
    With need_captions, items without a caption are left out (and a source without any is refused)."""
    from zscir.data import image_features

    src = open_training_source(spec, image_column, caption_column)
    if need_captions and not src.has_captions:
        raise InputError(f"{spec}: no captions found (give a listing with a caption column, --caption-column, or "
                         "WebDataset shards with .txt files)")
    feats = image_features(backbone, src, feature, cache=cache or None, fn=fn, dtype=dtype)
    # rows in key order: an entry built by several processes lists its rows in another order than one built by
    # one process, and the data order (a permutation of the rows) must not depend on who built the cache
    keep = sorted(range(len(feats)), key=lambda i: feats.keys[i])
    caps = list(feats.captions)
    if need_captions:
        keep = [i for i in keep if caps[i] and str(caps[i]).strip()]
        if not keep:
            raise InputError(f"{spec}: no item with a non-empty caption")
    return SourceFeatures(FeatureRows(feats, keep), [feats.keys[i] for i in keep], [feats.locations[i] for i in keep],
                          [caps[i] for i in keep], spec, int(feats.meta.get("failures", 0) or 0))


def source_locations(spec: str, image_column: str = "", caption_column: str = "", need_captions: bool = False,
                     ) -> tuple[list[str], list[str | None]]:
    """(locations, captions) of a SOURCE's records without decoding them (small sources: TAT's pairs)."""
    src = open_training_source(spec, image_column, caption_column)
    if need_captions and not src.has_captions:
        raise InputError(f"{spec}: no captions found (give a listing with a caption column, --caption-column, or "
                         "WebDataset shards with .txt files)")
    locs, caps = [], []
    for rec in src:
        if need_captions and not (rec.caption and rec.caption.strip()):
            continue
        locs.append(rec.location)
        caps.append(rec.caption)
    if not locs:
        raise InputError(f"{spec}: no usable items")
    return locs, caps


@dataclass(frozen=True)
class Location:
    """An image location of the data layer (a file, or `<shard>.tar#<member>`) that the evaluation helpers can
    decode (`iter_pixel_batches` calls `load()`)."""

    location: str

    def load(self):
        from zscir.data import load_location

        return load_location(self.location)

    def __str__(self) -> str:
        return self.location


def world_image_features(backbone: Any, world: Any, universe: Sequence[str], ids: Sequence[str],
                         feature: str = "image_tokens", *, cache: str = "", fn: Any = None,
                         dtype: torch.dtype = torch.float16) -> FeatureRows:
    """The frozen `feature` of the synthetic world's images `ids`, rows in the order of `ids`.

    The cache entry covers the whole `universe` (a world split: its pairs', unlabelled or triplet images), so
    trainers that use different parts of one split (a `--max-images` prefix, a fraction of the triplets) and
    pre-training, which reads the same pairs through the same frozen trunk, share one trunk pass."""
    from zscir.data import PathsSource, image_features

    universe = list(dict.fromkeys(universe))
    src = PathsSource([world.image_path(i) for i in universe], keys=universe, spec=f"{world.root}")
    feats = image_features(backbone, src, feature, cache=cache or None, fn=fn, dtype=dtype)
    pos = {k: i for i, k in enumerate(feats.keys)}
    missing = [i for i in ids if i not in pos]
    if missing:  # a world's images are ours: one that cannot be read is a damaged world, never skipped quietly
        raise InputError(f"{world.root}: {len(missing)} world image(s) could not be read (e.g. {missing[0]}); "
                         "regenerate the world with `zscir world`")
    return FeatureRows(feats, [pos[i] for i in ids])


class LazyRows:
    """Rows computed per batch from other rows: `lazy[idx] == fn(rows[idx])` (e.g. the frozen image embedding
    of cached local features, or those features pooled onto another grid), so nothing of the data set's size
    is held in memory. `shape` is the full (N, ...) shape of what it yields."""

    def __init__(self, rows: Any, fn: Any, row_shape: Sequence[int]) -> None:
        self.rows, self.fn, self.row_shape = rows, fn, tuple(row_shape)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        with torch.no_grad():  # not inference_mode: the rows enter autograd graphs as constants
            return self.fn(self.rows[idx])


def pooled_rows(backbone: Any, tokens: Any) -> LazyRows:
    """The frozen, L2-normalised image embedding (float32, on the backbone's device) of cached local-feature
    rows, through the image head, batch by batch."""
    import torch.nn.functional as F

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(backbone.image_head(x.to(backbone.device, torch.float32)), dim=-1).float()

    return LazyRows(tokens, pool, (backbone.embed_dim,))


# --- data order helpers -------------------------------------------------------------------------------------------
_Draw = TypeVar("_Draw")  # what one epoch's draw is: a permutation tensor, a list of batches


class EpochSequence(Generic[_Draw]):
    """Epochs drawn one after the other from one seeded generator (the order older trainers used), made a
    pure function of the epoch: epoch e replays the generator from the start when it is not the next one."""

    def __init__(self, make_gen: Callable[[], Any], draw: Callable[[Any], _Draw]) -> None:
        self._make, self._draw = make_gen, draw
        self._gen: Any = None
        self._next = 0
        self._cache: dict[int, _Draw] = {}

    def __call__(self, epoch: int) -> _Draw:
        if epoch in self._cache:
            return self._cache[epoch]
        if self._gen is None or epoch < self._next:
            self._gen, self._next = self._make(), 0
        out: _Draw
        while self._next <= epoch:
            out = self._draw(self._gen)
            self._next += 1
        self._cache = {epoch: out}
        return out


def frozen_text_embeddings(backbone: Any, texts: Sequence[str], cache: str = "",
                           within: Sequence[str] | None = None) -> torch.Tensor:
    """The frozen, normalised text embedding of each text (N, D), from the shared feature cache: the text head
    on the cached trunk entry of a list of texts (another list, even a subset, is another key).

    `within`: the source's whole caption list, the one pre-training cached. When it holds every text verbatim
    and is at most twice as long, its entry is read and the texts' rows taken (a prefix keeps its own rows,
    otherwise a text's first occurrence), so the trainers that read the same captions share one trunk pass."""
    from zscir.data import text_features

    texts, whole = list(texts), list(within or [])
    rows: list[int] | None = None
    if whole and len(whole) <= 2 * len(texts):
        if whole[: len(texts)] == texts:
            rows = list(range(len(texts)))
        else:
            first: dict[str, int] = {}
            for i, t in enumerate(whole):
                first.setdefault(t, i)
            rows = [first[t] for t in texts] if all(t in first for t in texts) else None
    if rows is None:
        return text_features(backbone, texts, "text_embedding", cache=cache or None).tensor().float()
    return text_features(backbone, whole, "text_embedding", cache=cache or None).tensor().float()[rows]


def frozen_embeddings(backbone: Any, tokens: FeatureRows, cache: str = "") -> FeatureRows:
    """The frozen, L2-normalised image embedding of cached local-feature rows (through the image head), itself
    cached on disk and computed once in fixed chunks: its values never depend on how a run batches or shards
    the rows (`pooled_rows` pools per batch instead, whose last bits follow the batch)."""
    import torch.nn.functional as F

    from zscir.data.features import derived_features

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(backbone.image_head(x.to(backbone.device, torch.float32)), dim=-1).float()

    entry = derived_features(tokens.feats, pool, "image_embedding_from_tokens", backbone.fingerprint(),
                             cache=cache or None, device=backbone.device)
    pos = {k: i for i, k in enumerate(entry.keys)}
    return FeatureRows(entry, [pos[tokens.feats.keys[r]] for r in tokens.rows])
