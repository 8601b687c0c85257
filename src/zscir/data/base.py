"""The pieces every source is made of: `Record` and its location (a file, or `<tar>#<member>`, re-opened by
`read_location` / `load_location`), `SourceConfig` and the `Source` base class, and the constants naming what
counts as an image, a listing and a shard. The source kinds live in folders.py, listings.py and tars.py;
sources.py opens a SOURCE string as one of them."""


import functools
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from zscir.errors import InputError
from zscir.utils.io import load_image, load_image_bytes

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

    def without_data(self) -> "Record":
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


def _stat_key(h: "hashlib._Hash", path: str) -> None:
    try:
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    except OSError:
        h.update(f"{path}\0missing\n".encode("utf-8", "surrogateescape"))
