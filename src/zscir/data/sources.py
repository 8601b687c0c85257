"""Sources: where a data set's images (and captions) live, read lazily as a stream of `Record`s.

A SOURCE string names one of:

    photos/                     a folder, walked recursively (sorted; dot-files skipped). A folder that holds
                                WebDataset tars and no images is read as those shards.
    'photos/**/*.jpg'           a glob pattern (sorted matches; a pattern matching only tars is a shard set)
    pairs.csv / pairs.jsonl     a listing, one row per image: image path column (relative paths are relative
                                to the listing's folder), optional caption and id columns, other columns = meta
    shards/00000.tar            WebDataset tar shards in img2dataset's layout (`key.jpg|png|webp` + `key.txt`
    'shards/{00000..00331}.tar' + `key.json`, grouped by key), also a brace pattern, a glob or a folder of tars

Every record carries a *location* string that `read_location` can re-open later (the index stores it, the
service shows it): a file path, or `<tar path>#<member name>` for an image inside a tar.

Problems found while listing (a dangling link, a symlink loop, a file name that is not UTF-8, a truncated
tar, a tar group without an image) never stop the stream: they are appended to `Source.failures` as
`{"id", "path", "error"}` rows, the shape of `zscir index`'s failures.jsonl. Structural problems the user must
fix (no such path, a listing without the image column, a line that is not JSON, a CSV that is not UTF-8) raise
`InputError` naming the file and line."""

from __future__ import annotations

import csv
import glob as globlib
import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from zscir.data.base import (  # noqa: F401 - re-exported: `zscir.data.sources` is the public home of every name
    CAPTION_COLUMNS,
    ID_COLUMNS,
    IMAGE_COLUMNS,
    IMAGE_EXTENSIONS,
    LISTING_EXTENSIONS,
    TAR_EXTENSIONS,
    TAR_SEP,
    Record,
    Source,
    SourceConfig,
    load_location,
    read_location,
    split_location,
)
from zscir.data.folders import FolderSource, GlobSource, PathsSource  # noqa: F401
from zscir.data.listings import ListingSource, _pick, iter_jsonl
from zscir.data.tars import TarSource
from zscir.errors import InputError
from zscir.utils.io import utf8_lines

# --- brace expansion and the entry point -----------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, as WebDataset shard specs use it: `a{00..03}.tar` (zero padding kept),
    `a{1,2}.tar`, several groups multiply. A pattern without braces is returned as is."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        lo, hi = int(a), int(b)
        width = max(len(a), len(b)) if (a.startswith("0") or b.startswith("0")) else 0
        step = 1 if hi >= lo else -1
        if abs(hi - lo) > 10_000_000:
            raise InputError(f"{pattern}: brace range {body} is too large")
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        raise InputError(f"{pattern}: cannot expand {{{body}}} (expected {{A..B}} or {{a,b,...}})")
    head, tail = pattern[: m.start()], pattern[m.end():]
    return [x for o in options for x in expand_braces(head + o + tail)]


def _is_tar(p: str) -> bool:
    return p.lower().endswith(TAR_EXTENSIONS)


def open_source(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    id_column: str | None = None,
    config: SourceConfig | None = None,
) -> Source:
    """Open a SOURCE (see the module docstring). Raises InputError when it names nothing usable.

    A list of specs is allowed only for tar shards (e.g. several brace patterns)."""
    cfg = config or SourceConfig(image_column=image_column, caption_column=caption_column, id_column=id_column)
    if not isinstance(spec, (str, os.PathLike)):
        specs = [str(s) for s in spec]
        tars = [t for s in specs for t in _tar_list(s)]
        return TarSource(" ".join(specs), tars, cfg)
    s = str(spec)
    p = Path(s).expanduser()
    if p.is_dir():
        return _folder_or_tars(s, p, cfg)
    if p.is_file():
        low = p.name.lower()
        if _is_tar(low):
            return TarSource(s, [str(p)], cfg)
        if low.endswith(LISTING_EXTENSIONS):
            return ListingSource(s, p, cfg)
        if low.endswith(IMAGE_EXTENSIONS):
            return GlobSource(s, [str(p)], cfg)
        raise InputError(f"{p}: expected a folder, a glob pattern, a .csv/.tsv/.jsonl listing or .tar shards")
    if "{" in s:
        return TarSource(s, _tar_list(s), cfg) if all(_is_tar(x) for x in expand_braces(s)) else \
            _globbed(s, [m for x in expand_braces(s) for m in _glob(x)], cfg)
    if any(ch in s for ch in "*?["):
        return _globbed(s, _glob(s), cfg)
    raise InputError(f"{p}: no such folder or file")


def _glob(pattern: str) -> list[str]:
    if not any(ch in pattern for ch in "*?["):
        return [pattern] if os.path.isfile(pattern) else []
    return sorted(m for m in globlib.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m))


def _globbed(spec: str, matches: list[str], cfg: SourceConfig) -> Source:
    if not matches:
        raise InputError(f"{spec}: the pattern matches no file")
    if all(_is_tar(m) for m in matches):
        return TarSource(spec, matches, cfg)
    images = [m for m in matches if m.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise InputError(f"{spec}: the pattern matches {len(matches)} file(s), none an image "
                         f"({', '.join(IMAGE_EXTENSIONS)}) or a tar shard")
    return GlobSource(spec, images, cfg)


def _tar_list(spec: str) -> list[str]:
    out: list[str] = []
    missing: list[str] = []
    for x in expand_braces(spec):
        found = _glob(x)
        if not found:
            missing.append(x)
        out += found
    if missing:
        shown = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        raise InputError(f"{spec}: {len(missing)} shard(s) not found: {shown}")
    not_tar = [x for x in out if not _is_tar(x)]
    if not_tar:
        raise InputError(f"{spec}: {not_tar[0]} is not a .tar shard")
    return out


def _folder_or_tars(spec: str, p: Path, cfg: SourceConfig) -> Source:
    src = FolderSource(spec, p, cfg)
    first = next(iter(src), None)
    if first is not None:
        return src
    names = [n for n in sorted(os.listdir(p)) if not n.startswith(".")]
    tars = [str(p / n) for n in names if _is_tar(n) and (p / n).is_file()]
    if tars:
        return TarSource(spec, tars, cfg)
    files = [f for f in itertools.islice(p.rglob("*"), 100_000) if f.is_file() and not f.name.startswith(".")]
    if not files and not src.failures:
        raise InputError(f"{p}: the folder is empty (no image to index)")
    if src.failures and not files:
        raise InputError(f"{p}: no readable image file ({len(src.failures)} problem(s), first: "
                         f"{src.failures[0]['path']}: {src.failures[0]['error']})")
    raise InputError(f"{p}: no image files among {len(files)} file(s) (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                     "or .tar shards)")


# --- caption lists ---------------------------------------------------------------------------------------


def iter_texts(path: str | os.PathLike[str], column: str | None = None) -> Iterator[str]:
    """Captions, streamed, whitespace-normalised, blank ones skipped, from:

    - a .jsonl/.ndjson or .csv/.tsv file: the `column` (default: the first of CAPTION_COLUMNS present);
    - a .json file: a list of strings or of objects with the column;
    - WebDataset shards / a folder of tars / a brace pattern: the records' captions;
    - any other file: plain text, one caption per line (refused if it looks like JSONL: name it .jsonl).

    Errors (missing column, bad JSON, not UTF-8) name the file and line."""
    s = str(path)
    p = Path(s).expanduser()
    low = p.name.lower()
    if not p.is_file() or _is_tar(low):
        src = open_source(s, caption_column=column) if not (p.is_file() and _is_tar(low)) else \
            TarSource(s, [str(p)], SourceConfig(caption_column=column))
        if not src.has_captions:
            raise InputError(f"{s}: a {src.kind} source has no captions; give a caption file or listing")
        for rec in src:
            if rec.caption:
                yield rec.caption
        return
    if low.endswith(LISTING_EXTENSIONS):
        if low.endswith((".jsonl", ".ndjson")):
            col = None
            for n, row in iter_jsonl(p, "(one caption per line)"):
                if col is None:
                    col = _pick(column, list(row), CAPTION_COLUMNS, "caption", f"{p}:{n}", "--caption-column", True)
                v = row.get(col)
                if not isinstance(v, str):
                    raise InputError(f"{p}:{n}: no string {col!r} (got {type(v).__name__})")
                if v.strip():
                    yield " ".join(v.split())
            return
        with open(p, "rb") as f:
            reader = csv.DictReader(utf8_lines(f, p), delimiter="\t" if low.endswith(".tsv") else ",")
            col = _pick(column, list(reader.fieldnames or []), CAPTION_COLUMNS, "caption", str(p),
                        "--caption-column", True)
            for row in reader:
                v = row.get(col)
                if isinstance(v, str) and v.strip():
                    yield " ".join(v.split())
        return
    if low.endswith(".json"):
        try:
            doc = json.loads(p.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{p}: not a UTF-8 JSON file ({e})") from None
        if not isinstance(doc, list):
            raise InputError(f"{p}: expected a JSON list of captions")
        col = column or "caption"
        for i, d in enumerate(doc):
            v = d.get(col) if isinstance(d, dict) else d
            if not isinstance(v, str):
                raise InputError(f"{p}: item {i} is not a caption string (or an object with {col!r})")
            if v.strip():
                yield " ".join(v.split())
        return
    with open(p, "rb") as f:
        for n, line in enumerate(utf8_lines(f, p), 1):
            t = line.strip()
            if not t:
                continue
            if n == 1 and t.startswith("{"):
                try:
                    if isinstance(json.loads(t), dict):
                        raise InputError(f"{p}:1: a JSON object, not a caption: name the file .jsonl (captions "
                                         "are read from its caption column) or give plain text")
                except json.JSONDecodeError:
                    pass
            yield " ".join(t.split())
