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
import functools
import glob as globlib
import hashlib
import itertools
import json
import os
import re
import stat as statlib
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from zscir.errors import InputError
from zscir.utils.io import iter_jsonl_objects, load_image, load_image_bytes, utf8_lines

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
LISTING_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson")
#: columns tried, in order, when a listing's image / caption / id column is not named
IMAGE_COLUMNS = ("path", "image", "filepath", "file", "filename", "image_path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt")
ID_COLUMNS = ("id", "key")
TAR_SEP = "#"


# --- records and locations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One item of a source.

    key       unique, stable id within the source (folder: relative path; listing: id column or the path as
              written; tar: `<tar stem>/<member key>`)
    location  where the image lives: a file path, or `<tar path>#<member>` (see `read_location`)
    caption   the caption (listing column, or the tar's `.txt`), None when the source has none
    meta      free metadata (other listing columns, the tar's `.json`)
    data      the image bytes when the stream already read them (tar members), else None
    """

    key: str
    location: str
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    data: bytes | None = field(default=None, repr=False, hash=False, compare=False)

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else read_location(self.location)

    def load(self) -> Image.Image:
        """The image as RGB (InputError naming the location if it cannot be decoded)."""
        if self.data is not None:
            return load_image_bytes(self.data, self.location)
        return load_location(self.location)

    def without_data(self) -> Record:
        return Record(self.key, self.location, self.caption, self.meta) if self.data is not None else self


def split_location(location: str) -> tuple[str, str | None]:
    """(file, tar member or None). A location that is an existing file is a file even if it holds '#'."""
    if TAR_SEP in location and not os.path.exists(location):
        tar, member = location.rsplit(TAR_SEP, 1)
        if tar.endswith(TAR_EXTENSIONS):
            return tar, member
    return location, None


def read_location(location: str) -> bytes:
    """The raw bytes at a location: a file, or a member of a tar (random access through a cached member
    table for uncompressed tars; compressed tars are scanned)."""
    path, member = split_location(location)
    if member is None:
        _no_url(path)
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path}: image not found")
        return p.read_bytes()
    try:
        table = _tar_members(path, os.stat(path).st_mtime_ns)
    except OSError as e:
        raise InputError(f"{path}: cannot open the tar ({e.strerror or e})") from e
    except tarfile.TarError as e:
        raise InputError(f"{path}: not a readable tar ({e})") from e
    if member not in table:
        raise InputError(f"{location}: no member {member!r} in {path}")
    offset, size = table[member]
    if offset < 0:  # compressed: no random access
        with tarfile.open(path, "r:*") as tf:
            f = tf.extractfile(member)
            return f.read() if f is not None else b""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def load_location(location: str) -> Image.Image:
    """Decode the image at a location as RGB (zscir.utils.io.load_image for files)."""
    path, member = split_location(location)
    if member is None:
        _no_url(path)
        return load_image(path)
    return load_image_bytes(read_location(location), location)


def _no_url(path: str) -> None:
    if "://" in path:
        raise InputError(f"{path}: a URL; images are not downloaded here (fetch them first, e.g. with img2dataset, "
                         "and give the shards or a listing of local files)")


@functools.lru_cache(maxsize=16)
def _tar_members(path: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size); offset -1 for a compressed tar. Keyed by mtime: a rewritten tar
    is re-read."""
    del mtime_ns
    compressed = path.endswith((".gz", ".tgz"))
    out: dict[str, tuple[int, int]] = {}
    with tarfile.open(path, "r:*" if compressed else "r:") as tf:
        for ti in tf:
            if ti.isfile():
                out[ti.name] = (-1 if compressed else ti.offset_data, ti.size)
    return out


# --- source specification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """How to read a listing or a tar: which columns hold what. None = auto (see *_COLUMNS)."""

    image_column: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    #: the tar member extension holding the caption (img2dataset: txt); `caption_column` instead reads the
    #: caption from the member `.json`
    caption_ext: str = "txt"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]


class Source:
    """A lazily read data set. Iterate `records()` (or the source itself) for a stream of `Record`s in a
    deterministic order; `units()` are the independent pieces (one per tar; a single one otherwise) that
    streaming splits across workers and ranks; `fingerprint()` identifies the content for caches."""

    kind: str = "?"

    def __init__(self, spec: str, config: SourceConfig) -> None:
        self.spec = spec
        self.config = config
        self.failures: list[dict[str, str]] = []
        self._failed: set[tuple[str, str]] = set()

    def units(self) -> list[Any]:
        return [None]

    def records(self, unit: Any = None) -> Iterator[Record]:
        """The records of one unit (None: all units, in order). Listing problems go to `self.failures`."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        if len(self.units()) == 1:
            yield from self.records(self.units()[0])
        else:
            for u in self.units():
                yield from self.records(u)

    def fingerprint(self) -> str:
        raise NotImplementedError

    @property
    def has_captions(self) -> bool:
        return False

    def _fail(self, key: str, location: str, error: str) -> None:
        if (key, error) not in self._failed:  # a second pass (another epoch) reports a problem once
            self._failed.add((key, error))
            self.failures.append({"id": key, "path": location, "error": error})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def _printable(name: str) -> str:
    """A file name that may hold surrogate escapes (bytes that are not UTF-8), made printable."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _stat_key(h: hashlib._Hash, path: str) -> None:
    try:
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    except OSError:
        h.update(f"{path}\0missing\n".encode("utf-8", "surrogateescape"))


class FolderSource(Source):
    """Image files under a folder, recursively, in sorted order. Keys are POSIX paths relative to the folder.

    Dot-files and dot-folders are skipped silently; a dangling symbolic link, a symbolic-link loop, an
    unreadable sub-folder and a file name that is not valid UTF-8 go to `failures` (rename such files)."""

    kind = "folder"

    def __init__(self, spec: str, root: Path, config: SourceConfig) -> None:
        super().__init__(spec, config)
        self.root = root
        self.base = Path(os.path.abspath(root))

    def _walk(self, rel: str, real: str) -> Iterator[tuple[str, str]]:
        """(relative key, absolute path) of image files, depth first in sorted order. `real` is the folder's
        path with symbolic links resolved. Only symbolic links are stat-ed (the entry type of everything else
        comes with the directory listing: no stat per file, which matters for millions of files)."""
        folder = os.path.join(str(self.base), rel) if rel else str(self.base)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self._fail(_printable(rel or "."), _printable(folder), f"unreadable folder ({e.strerror or e})")
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            key = f"{rel}/{e.name}" if rel else e.name
            full = os.path.join(folder, e.name)
            if not _is_utf8(e.name):
                if e.name.lower().endswith(IMAGE_EXTENSIONS) or e.is_dir(follow_symlinks=False):
                    self._fail(_printable(key), _printable(full),
                               "file name is not valid UTF-8; rename it (e.g. `convmv -f latin1 -t utf8`)")
                continue
            try:
                if e.is_symlink():
                    try:
                        st = os.stat(full)  # follows the link
                    except OSError as err:
                        what = "symbolic link loop" if getattr(err, "errno", None) == 40 else "dangling symbolic link"
                        self._fail(key, full, f"{what} ({os.readlink(full)!r})")
                        continue
                    is_dir, is_file = statlib.S_ISDIR(st.st_mode), statlib.S_ISREG(st.st_mode)
                    child_real = os.path.realpath(full)
                    if is_dir and (real == child_real or real.startswith(child_real.rstrip(os.sep) + os.sep)):
                        self._fail(key, full, "symbolic link loop (a link to a folder that contains it); skipped")
                        continue
                else:
                    is_dir, is_file = e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)
                    child_real = os.path.join(real, e.name)
            except OSError as err:
                self._fail(key, full, f"cannot stat ({err.strerror or err})")
                continue
            if is_dir:
                yield from self._walk(key, child_real)
            elif is_file and e.name.lower().endswith(IMAGE_EXTENSIONS):
                yield key, full

    def _files(self) -> Iterator[tuple[str, str]]:
        return self._walk("", os.path.realpath(self.base))

    def records(self, unit: Any = None) -> Iterator[Record]:
        for key, full in self._files():
            yield Record(key=key, location=full)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"folder\0{self.base}\n".encode("utf-8", "surrogateescape"))
        for _, full in self._files():
            _stat_key(h, full)
        return h.hexdigest()[:16]


class GlobSource(Source):
    """The image files a glob pattern matches (recursive `**`), sorted; keys are the matched paths."""

    kind = "glob"

    def __init__(self, spec: str, matches: Sequence[str], config: SourceConfig) -> None:
        super().__init__(spec, config)
        self.matches = list(matches)

    def records(self, unit: Any = None) -> Iterator[Record]:
        for m in self.matches:
            if not _is_utf8(m):
                self._fail(_printable(m), _printable(m), "file name is not valid UTF-8; rename it")
                continue
            yield Record(key=m, location=os.path.abspath(m))

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"glob\0{self.spec}\n".encode("utf-8", "surrogateescape"))
        for m in self.matches:
            _stat_key(h, os.path.abspath(m))
        return h.hexdigest()[:16]


class PathsSource(Source):
    """An in-memory list of image files (e.g. a synthetic world's images), with optional keys and captions:
    what trainers that already hold a file list hand to the feature cache."""

    kind = "paths"

    def __init__(self, paths: Sequence[str | os.PathLike[str]], keys: Sequence[str] | None = None,
                 captions: Sequence[str | None] | None = None, spec: str = "<paths>") -> None:
        super().__init__(spec, SourceConfig())
        self.paths = [os.path.abspath(p) for p in paths]
        self.keys = [str(k) for k in keys] if keys is not None else list(self.paths)
        self.captions = list(captions) if captions is not None else None
        if len(self.keys) != len(self.paths) or (self.captions is not None and len(self.captions) != len(self.paths)):
            raise ValueError("paths, keys and captions must have the same length")

    @property
    def has_captions(self) -> bool:
        return self.captions is not None

    def records(self, unit: Any = None) -> Iterator[Record]:
        for i, (k, p) in enumerate(zip(self.keys, self.paths)):
            yield Record(key=k, location=p, caption=self.captions[i] if self.captions is not None else None)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"paths\n")
        for i, (k, p) in enumerate(zip(self.keys, self.paths)):
            h.update(f"{k}\0{self.captions[i] if self.captions is not None else ''}\0".encode("utf-8", "surrogateescape"))
            _stat_key(h, p)
        return h.hexdigest()[:16]


def _pick(name: str | None, fields: Sequence[str], candidates: Sequence[str], what: str, where: str,
          flag: str, required: bool) -> str | None:
    if name is not None:
        if name not in fields:
            raise InputError(f"{where}: no column {name!r} ({flag}); the columns are {', '.join(fields) or 'none'}")
        return name
    lower = {f.lower(): f for f in fields}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise InputError(f"{where}: no {what} column (looked for {', '.join(candidates)}; the columns are "
                         f"{', '.join(fields) or 'none'}); name it with {flag}")
    return None


def iter_jsonl(path: str | Path, expected: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Streamed `(line number, object)` for each non-blank line (zscir.utils.io.iter_jsonl_objects)."""
    return iter_jsonl_objects(path, expected)


class ListingSource(Source):
    """A CSV/TSV (header row) or JSONL listing, one image per row, streamed (never held in memory).

    Image column: `config.image_column`, else the first of IMAGE_COLUMNS present; caption column likewise
    (CAPTION_COLUMNS; optional); id column likewise (ID_COLUMNS; default: the image path as written). Every
    other column becomes metadata. Relative image paths are relative to the listing's folder."""

    kind = "listing"

    def __init__(self, spec: str, path: Path, config: SourceConfig) -> None:
        super().__init__(spec, config)
        self.path = path
        self.base = Path(os.path.abspath(path.parent))
        self.format = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv"
        self.columns = self._columns()

    def _rows(self, expected: str = "with an image path") -> Iterator[tuple[int, dict[str, Any]]]:
        if self.format == "jsonl":
            yield from iter_jsonl(self.path, expected)
            return
        delim = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with open(self.path, "rb") as f:
            reader = csv.DictReader(utf8_lines(f, self.path), delimiter=delim)
            try:
                for row in reader:
                    if None in row:
                        raise InputError(f"{self.path}:{reader.line_num}: more fields than the header has")
                    yield reader.line_num, row
            except csv.Error as e:
                raise InputError(f"{self.path}:{reader.line_num}: malformed CSV ({e})") from None

    def _columns(self) -> tuple[str, str | None, str | None]:
        cfg, where = self.config, str(self.path)
        if self.format == "csv":
            with open(self.path, "rb") as f:
                reader = csv.reader(utf8_lines(f, self.path), delimiter="\t" if self.path.suffix.lower() == ".tsv" else ",")
                fields = next(reader, None)
            if not fields:
                raise InputError(f"{self.path}: empty listing (no header row)")
        else:
            first = next(self._rows(), None)
            if first is None:
                raise InputError(f"{self.path}: the listing has no rows")
            fields = list(first[1])
        img = _pick(cfg.image_column, fields, IMAGE_COLUMNS, "image path", where, "--image-column", True)
        cap = _pick(cfg.caption_column, fields, CAPTION_COLUMNS, "caption", where, "--caption-column", False)
        ident = _pick(cfg.id_column, fields, ID_COLUMNS, "id", where, "--id-column", False)
        return img, cap, ident

    @property
    def has_captions(self) -> bool:
        return self.columns[1] is not None

    def records(self, unit: Any = None) -> Iterator[Record]:
        img, cap, ident = self.columns
        for n, row in self._rows(f"with a {img!r}"):
            where = f"{self.path}:{n}"
            path = row.get(img)
            if not isinstance(path, str) or not path.strip():
                raise InputError(f"{where}: missing {img!r}")
            path = path.strip()
            if "://" in path:
                full = path  # decoding reports it: URLs are not downloaded here
            else:
                p = Path(path).expanduser()
                full = os.path.normpath(p if p.is_absolute() else self.base / p)
            key = row.get(ident) if ident else None
            key = path if key is None or key == "" else str(key)
            caption = None
            if cap is not None:
                c = row.get(cap)
                caption = " ".join(c.split()) if isinstance(c, str) else (None if c is None else str(c))
            meta = {k: v for k, v in row.items() if k not in (img, ident)}
            yield Record(key=key, location=full, caption=caption or None, meta=meta)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"listing\0{os.path.abspath(self.path)}\0{self.config.digest()}\n".encode())
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()[:16]


class TarSource(Source):
    """WebDataset tar shards (img2dataset layout), streamed with the standard library's tarfile.

    Members are grouped by key (the member name up to the first dot of its file name, folders kept), as
    WebDataset does: `000012.jpg`, `000012.txt`, `000012.json` form one record. The image is the first member
    with an image extension; the caption is the `.txt` member (or `config.caption_column` of the `.json`);
    the `.json` is the metadata. Record keys are `<tar name without extension>/<member key>`. A tar that is
    truncated or corrupt keeps the records read before the damage and reports the rest as one failure."""

    kind = "webdataset"

    def __init__(self, spec: str, tars: Sequence[str], config: SourceConfig) -> None:
        super().__init__(spec, config)
        self.tars = [os.path.abspath(t) for t in tars]

    def units(self) -> list[Any]:
        return list(self.tars)

    @property
    def has_captions(self) -> bool:
        return True

    def records(self, unit: Any = None, with_data: bool = True) -> Iterator[Record]:
        """With `with_data=False` the image bytes are not read (an uncompressed tar is then listed by
        seeking past them): records carry only their location, as `zscir index` wants."""
        for tar in ([unit] if unit is not None else self.tars):
            yield from self._tar_records(tar, with_data)

    def _tar_records(self, tar: str, with_data: bool = True) -> Iterator[Record]:
        stem = os.path.basename(tar)
        for ext in TAR_EXTENSIONS:
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        group: dict[str, tuple[str, bytes]] = {}
        current: str | None = None
        n = 0
        try:
            seekable = not with_data and not tar.lower().endswith((".gz", ".tgz"))
            with tarfile.open(tar, "r:" if seekable else "r|*") as tf:
                for ti in tf:
                    if not ti.isfile():
                        continue
                    name = ti.name
                    if not _is_utf8(name):
                        self._fail(_printable(f"{stem}/{name}"), _printable(f"{tar}{TAR_SEP}{name}"),
                                   "member name is not valid UTF-8; skipped")
                        continue
                    base = name.rsplit("/", 1)[-1]
                    if base.startswith(".") or "." not in base:
                        continue
                    folder = name[: len(name) - len(base)]
                    gkey = folder + base.split(".", 1)[0]
                    ext = base.split(".", 1)[1].lower()
                    if gkey != current:
                        if current is not None:
                            rec = self._record(tar, stem, current, group)
                            if rec is not None:
                                n += 1
                                yield rec
                        current, group = gkey, {}
                    if not with_data and "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                        group[ext] = (name, b"")
                        continue
                    f = tf.extractfile(ti)
                    group[ext] = (name, f.read() if f is not None else b"")
        except (tarfile.TarError, OSError, EOFError) as e:
            self._fail(f"{stem}/*", tar, f"truncated or corrupt tar after {n} record(s) ({type(e).__name__}: {e})")
            return
        if current is not None:
            rec = self._record(tar, stem, current, group)
            if rec is not None:
                yield rec

    def _record(self, tar: str, stem: str, gkey: str, group: dict[str, tuple[str, bytes]]) -> Record | None:
        key = f"{stem}/{gkey}"
        image = next((group[e] for e in group if "." + e in IMAGE_EXTENSIONS), None)
        if image is None:
            self._fail(key, f"{tar}{TAR_SEP}{gkey}", f"no image member (found {', '.join(sorted(group))})")
            return None
        meta: dict[str, Any] = {}
        if "json" in group:
            try:
                meta = json.loads(group["json"][1].decode("utf-8"))
                meta = meta if isinstance(meta, dict) else {"json": meta}
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        caption = None
        col = self.config.caption_column
        if col is not None:
            v = meta.get(col)
            caption = v if isinstance(v, str) else None
        elif self.config.caption_ext in group:
            caption = group[self.config.caption_ext][1].decode("utf-8", "replace")
        caption = " ".join(caption.split()) if caption else None
        return Record(key=key, location=f"{tar}{TAR_SEP}{image[0]}", caption=caption or None, meta=meta,
                      data=image[1] if image[1] else None)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"webdataset\0{self.config.digest()}\n".encode())
        for t in self.tars:
            _stat_key(h, t)
        return h.hexdigest()[:16]


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
