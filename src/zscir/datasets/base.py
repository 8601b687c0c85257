"""What every benchmark loader returns, and the checks they share (benchmarks.md).

A loader reads the official annotation files of one split and returns a `BenchmarkSplit`:

    gallery        `ImageItem`s (id + file, optionally a crop box), in the order of the official file
    queries        `Query`s: reference image, modification text(s), target(s) where the split has them

Loaders never drop a query silently. Every image a query or the gallery needs is checked before anything is
embedded; a missing one raises `InputError` naming the first few, how many, and where they were looked for.
The official full-split counts are compared with what was loaded: a mismatch is logged as a warning (numbers
are then not comparable with published tables) and recorded in `BenchmarkSplit.complete`; with
`strict_counts=True` it is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from zscir.errors import InputError
from zscir.utils.io import load_image, read_json

log = logging.getLogger(__name__)

SHOW_MISSING = 5


@dataclass(frozen=True)
class ImageItem:
    """One image of a benchmark: its id as the official files spell it, its file, and an optional crop.

    `bbox` is an instance box (x, y, w, h) in pixels; the crop is dilated by `dilation` as GeneCIS does and,
    with `pad_square`, padded to a square with black. The engine calls `load()` to decode it."""

    id: str
    path: Path
    bbox: tuple[float, float, float, float] | None = None
    dilation: float = 0.0
    pad_square: bool = False

    def load(self) -> Image.Image:
        im = load_image(self.path)
        if self.bbox is not None:
            im = crop_instance(im, self.bbox, self.dilation, self.pad_square)
        return im

    def cache_key(self) -> str:
        """Identifies the pixels (the engine's gallery cache key includes it)."""
        return f"{self.path}|{self.bbox}|{self.dilation}|{self.pad_square}" if self.bbox else str(self.path)


def crop_instance(image: Image.Image, bbox: Sequence[float], dilation: float, pad_square: bool) -> Image.Image:
    """GeneCIS's Visual Genome crop, exactly as its loader does it: the left/top edge moves out by
    dilation * w (h), clamped at 0, and the box spans (1 + dilation) * w (h) from there, clamped to the image;
    then the crop is pasted centred on a black square (`expand2square`)."""
    x, y, w, h = (float(v) for v in bbox)
    iw, ih = image.size
    if dilation:
        left, top = max(0.0, x - dilation * w), max(0.0, y - dilation * h)
        right, bottom = min(iw, left + (1 + dilation) * w), min(ih, top + (1 + dilation) * h)
    else:
        left, top, right, bottom = x, y, x + w, y + h
    im = image.crop((left, top, right, bottom))
    if pad_square and im.width != im.height:
        side = max(im.width, im.height)
        sq = Image.new(im.mode, (side, side), (0, 0, 0))
        sq.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        im = sq
    return im


@dataclass
class Query:
    """One composed query. `targets` is empty on splits without ground truth (CIRR test1, CIRCO test)."""

    qid: str
    reference: str  # an ImageItem id (in the gallery, or in `BenchmarkSplit.extra_images`)
    texts: list[str]  # the modification text(s): FashionIQ has two captions, the rest one
    targets: list[str] = field(default_factory=list)  # first = the query's own target
    members: list[str] = field(default_factory=list)  # CIRR img_set.members
    candidates: list[str] = field(default_factory=list)  # GeneCIS: [target] + gallery (target first)
    fields: dict[str, Any] = field(default_factory=dict)  # anything else the official file gives


@dataclass
class BenchmarkSplit:
    benchmark: str
    subset: str  # "dress", "val", "change_object", ...
    split: str
    root: Path
    gallery: list[ImageItem]
    queries: list[Query]
    extra_images: list[ImageItem] = field(default_factory=list)  # references that are not gallery images
    complete: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def has_targets(self) -> bool:
        return all(q.targets for q in self.queries)

    def images(self) -> dict[str, ImageItem]:
        return {im.id: im for im in (*self.extra_images, *self.gallery)}

    def gallery_index(self) -> dict[str, int]:
        return {im.id: i for i, im in enumerate(self.gallery)}

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "subset": self.subset,
            "split": self.split,
            "root": str(self.root),
            "queries": len(self.queries),
            "gallery": len(self.gallery),
            "complete": self.complete,
            "notes": list(self.notes),
        }


# --- files ---------------------------------------------------------------------------------------------


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of `candidates` (paths relative to root) that exists, or InputError listing all of them."""
    for rel in candidates:
        p = root / rel
        if p.is_file():
            return p
    tried = ", ".join(str(root / c) for c in candidates)
    raise InputError(f"{what}: not found under {root} (looked for {tried})")


def find_dir(root: Path, candidates: Sequence[str], what: str) -> Path:
    for rel in candidates:
        p = root / rel if rel else root
        if p.is_dir():
            return p
    tried = ", ".join(str(root / c) for c in candidates)
    raise InputError(f"{what}: no such folder under {root} (looked for {tried})")


def check_root(root: str | os.PathLike[str], benchmark: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{benchmark}: root folder {root} does not exist")
    return root


def load_json(path: Path, kind: type, what: str) -> Any:
    data = read_json(path)
    if not isinstance(data, kind):
        raise InputError(f"{path}: {what} should be a JSON {kind.__name__}, got {type(data).__name__}")
    return data


def modification_text(entry: Any, key: str, path: Path, query: str) -> str:
    """An official file's modification text, stripped. A blank or missing one is kept as "" (official files
    have a few, e.g. CIRR test1 pairid 27098; the evaluation counts them and warns); a `null` or a non-string
    is an error naming the query (never read as the text "None")."""
    if not isinstance(entry, dict) or key not in entry:
        return ""
    value = entry[key]
    if value is None:
        raise InputError(f"{path}: query {query}: '{key}' is null (expected a text; an empty string if blank)")
    if not isinstance(value, str):
        raise InputError(f"{path}: query {query}: '{key}' is a {type(value).__name__}, expected a text")
    return value.strip()


def require_keys(entry: Any, keys: Iterable[str], path: Path, index: int) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{path}: entry {index} is a {type(entry).__name__}, expected an object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise InputError(f"{path}: entry {index} lacks field(s) {', '.join(missing)}")


def list_files(folder: Path) -> set[str]:
    """File names in a folder (one directory scan: checking 123k images one stat at a time is slow)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except FileNotFoundError:
        return set()


def raise_missing(benchmark: str, missing: Sequence[str], where: str, needed_by: str = "") -> None:
    """InputError naming the first few missing images, how many, and where they were looked for."""
    if not missing:
        return
    shown = ", ".join(missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
    raise InputError(
        f"{benchmark}: {len(missing)} image(s) missing{needed_by} (looked in {where}): {shown}. "
        "Queries are never dropped silently; complete the image folder (see docs/benchmarks.md)."
    )


def check_paths_exist(benchmark: str, items: Iterable[ImageItem], where: str) -> None:
    """Every item's file exists (one scan per folder), else raise_missing."""
    by_dir: dict[Path, set[str]] = {}
    missing: list[str] = []
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            continue
        seen.add(it.id)
        d = it.path.parent
        if d not in by_dir:
            by_dir[d] = list_files(d)
        if it.path.name not in by_dir[d]:
            missing.append(str(it.path.name))
    raise_missing(benchmark, missing, where)


def check_counts(split: BenchmarkSplit, expected: dict[str, int], strict: bool) -> None:
    """Compare loaded counts with the official full-split counts; warn (or raise when strict)."""
    actual = {"queries": len(split.queries), "gallery": len(split.gallery)}
    diffs = [f"{k} {actual[k]:,} (official {v:,})" for k, v in expected.items() if k in actual and actual[k] != v]
    if not diffs:
        return
    msg = (
        f"{split.benchmark} {' '.join(dict.fromkeys([split.subset, split.split]))}: {'; '.join(diffs)}: "
        "not the full official split, "
        "so the numbers are not comparable with published tables"
    )
    if strict:
        raise InputError(msg)
    log.warning(msg)
    split.complete = False
    split.notes.append(msg)
