"""File helpers. Every write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

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
