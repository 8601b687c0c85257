"""File helpers. Every write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image, UnidentifiedImageError

from zscir.errors import InputError

# Refuse absurd images before decoding them (decompression bombs); 80 MP is far above any photo we expect.
Image.MAX_IMAGE_PIXELS = 80_000_000


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` (a previous one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1, **kwargs: Any) -> None:
    """Write JSON atomically (UTF-8, no NaN: a NaN in results is a bug we want to see)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, allow_nan=False, **kwargs)
            f.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e


def read_jsonl_objects(path: str | os.PathLike[str], expected: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file. A line that is not valid JSON, or not an
    object, stops the read with an error naming the file and line; `expected` says what an object must hold
    (e.g. "with a 'path'")."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: expected an object {expected}")
            rows.append((n, row))
    return rows


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image as RGB, or raise InputError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: image not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: image too large ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def load_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an image held in memory (e.g. a member of a WebDataset tar) as RGB, or raise InputError naming
    `name` (where the bytes came from) and what is wrong, exactly as `load_image` does for a file."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        raise InputError(f"{name}: unreadable image (not a format PIL can identify)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: unreadable image ({type(e).__name__}: {e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparency on white rather than letting it become black.
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")


def check_text(text: str, what: str = "text") -> str:
    """Return the stripped text, or raise InputError if it is empty or whitespace-only."""
    if not isinstance(text, str):
        raise InputError(f"{what}: expected a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{what}: empty or whitespace-only text {text!r}")
    return stripped


def check_output_dir(path: str | os.PathLike[str], is_ours: Callable[[Path], bool], what: str) -> Path:
    """The shared `--out` rule: `path` may be missing, an empty folder, or a folder `is_ours` recognises (a
    previous output of the same kind, e.g. an index or a checkpoint of the same trainer). Anything else is
    refused with an InputError naming it: a file, a non-empty folder of other things (hidden files count), the
    current folder or one of its parents, the home folder or the filesystem root. Returns `path` as a Path.
    `what` names the output in the message ("an index", "a pic2word checkpoint")."""
    path = Path(path)
    full = Path(os.path.abspath(path.expanduser()))
    cwd = Path(os.getcwd())
    if full == Path(full.anchor) or full == Path.home() or full == cwd or full in cwd.parents:
        raise InputError(f"{path}: refusing to write {what} there (the current folder, one of its parents, "
                         "the home folder or /); choose a new folder")
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path}: a dangling symbolic link; refusing to write {what} through it")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder; refusing to replace it with {what}")
    if path.is_dir() and any(path.iterdir()) and not is_ours(path):
        raise InputError(f"{path}: a non-empty folder that is not {what}; refusing to write into or replace it "
                         "(choose a new or empty folder)")
    return path


@contextlib.contextmanager
def safe_output_dir(path: str | os.PathLike[str], is_ours: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """`atomic_dir` behind the `check_output_dir` rule: refuse a foreign `path` before any work, yield a
    temporary sibling folder to write into, and on success rename it into place (replacing only a previous
    output that `is_ours` recognises, checked again at commit time); on failure the sibling is removed and
    `path` is left untouched."""
    path = check_output_dir(path, is_ours, what)
    with atomic_dir(path) as tmp:
        yield tmp
        check_output_dir(path, is_ours, what)  # something else may have appeared there while we worked
