"""File and image helpers. Every write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from zscir.errors import ImageTooLargeError, InputError


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which would
    race with other threads creating files); falls back to that where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask; outputs follow it
    finally:
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
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 whatever the umask
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


def utf8_lines(f: BinaryIO, path: str | os.PathLike[str]) -> Iterator[str]:
    """The lines of a file opened in binary mode, decoded as UTF-8 (a leading BOM dropped); an undecodable
    line is an InputError naming the file, line and byte."""
    for n, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                             "save the listing as UTF-8") from None
        yield line[1:] if n == 1 and line.startswith("\ufeff") else line


def iter_jsonl_objects(path: str | os.PathLike[str], expected: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Streamed (line number, object) for each non-blank line of a JSONL file. A line that is not UTF-8, not
    valid JSON or not an object stops the read with an error naming the file and line; `expected` says what
    an object must hold (e.g. "with a 'path'")."""
    with open(path, "rb") as f:
        for n, line in enumerate(utf8_lines(f, path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: expected an object {expected}".rstrip())
            yield n, row


def read_jsonl_objects(path: str | os.PathLike[str], expected: str) -> list[tuple[int, dict[str, Any]]]:
    """`iter_jsonl_objects`, read whole."""
    return list(iter_jsonl_objects(path, expected))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- the one image loader (CLI, indexer, trainers, evaluation and service all decode through it) ----------
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_PIXELS = 80_000_000  # width * height from the header; refused before anything is decoded
LARGE_SIDE = 4096  # larger images are reduced (JPEG: while decoding) to at most this long side
_LARGE_PIXELS = 8_000_000  # decodes above this take a slot and give memory back to the OS afterwards
_LARGE_DECODE_SLOTS = threading.BoundedSemaphore(2)
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F")
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}
BACKGROUND = (255, 255, 255)  # transparency is composited onto this, by every entry point

# Pillow refuses only above 2 * MAX_IMAGE_PIXELS (and merely warns above it). We check the header ourselves,
# with the caller's limit, right after Image.open; Pillow's own check stays as a backstop for code that opens
# images directly, far enough above ours that our message (which names the size and the limit) is the one seen.
Image.MAX_IMAGE_PIXELS = 4 * MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, or raise InputError naming it (`name`, default the path) and what
    is wrong. See `decode_image` for what is accepted and how pixels are converted."""
    path = Path(path)
    label = name or str(path)
    if not path.exists():
        raise InputError(f"{label}: image not found")
    if not path.is_file():
        raise InputError(f"{label}: not a file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{label}: cannot be read ({e.strerror})") from None
    with f:
        return decode_image(f, label, max_pixels)


def load_image_bytes(data: bytes, name: str = "the upload", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`load_image` for bytes already in memory (the service's uploads): same formats, limits and pixels."""
    if not data:
        raise InputError(f"{name}: empty file")
    return decode_image(io.BytesIO(data), name, max_pixels)


def decode_image(fp: BinaryIO, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode one image from a binary file object into 8-bit RGB.

    - only ALLOWED_FORMATS are even identified (no plugin that calls out to Ghostscript or similar runs);
      animated GIF/WEBP/PNG give their first frame;
    - width * height is read from the header and refused above `max_pixels` (ImageTooLargeError) before
      any pixel is decoded; images with a side above LARGE_SIDE are reduced (JPEG: by the decoder itself)
      so that a small file cannot make a large decode hold much memory, and at most two such decodes run
      at once in the process;
    - EXIF orientation is applied; 16-bit and float greyscale are scaled to 8 bits, not clipped to white;
      transparency is composited onto BACKGROUND (white).
    """
    try:
        im = Image.open(fp, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InputError(f"{name}: unreadable image (not a valid file of an accepted format: "
                         f"{', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name}: image is over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; the limit is "
                                 f"{max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: unreadable image ({type(e).__name__}: {e})") from None
    w, h = im.size
    try:
        if w < 1 or h < 1:
            raise InputError(f"{name}: image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageTooLargeError(f"{name}: image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels")
        if w * h <= _LARGE_PIXELS:
            return _decode_open(im, name)
        with _LARGE_DECODE_SLOTS:
            try:
                return _decode_open(im, name)
            finally:
                im.close()  # frees the full-size pixels now, so the trim below can return them
                release_memory()
    finally:
        im.close()


def _decode_open(im: Image.Image, name: str) -> Image.Image:
    try:
        if im.format in ("JPEG", "MPO") and max(im.size) > LARGE_SIDE:
            # DCT scaling: decodes at 1/2, 1/4 or 1/8 size directly, never holding the full-size pixels
            scale = LARGE_SIDE / max(im.size)
            im.draft("RGB", (max(1, math.ceil(im.size[0] * scale)), max(1, math.ceil(im.size[1] * scale))))
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)  # read before a reduce drops the tags
        im.load()
        out: Image.Image = im
        if max(out.size) > LARGE_SIDE:
            if out.mode not in _REDUCIBLE:
                out = to_rgb(out)
            out = out.reduce(math.ceil(max(out.size) / LARGE_SIDE))
        rgb = to_rgb(out)
        # what ImageOps.exif_transpose does, applied after the reduce (it needs the tags of the original)
        method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
        return rgb.transpose(method) if method is not None else rgb
    except ImageTooLargeError:
        raise
    except InputError as e:  # from to_rgb, which does not know the name
        raise InputError(f"{name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, ZeroDivisionError) as e:
        raise InputError(f"{name}: unreadable image ({type(e).__name__}: {e})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image as a new 8-bit RGB image: high bit depths scaled (not clipped), transparency
    composited onto BACKGROUND. Every path from pixels to a model goes through this."""
    mode = im.mode
    if mode == "RGB" and not _has_alpha(im):
        return im.copy()
    if mode.startswith("I") or mode == "F":
        im = _greyscale_to_l(im)
        mode = "L"
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, BACKGROUND)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise InputError(f"image mode {mode!r} cannot be converted to RGB ({e})") from None


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _greyscale_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit L, scaled by the range the mode can hold."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        top = 1.0 if finite.size and finite.min() >= 0 and finite.max() <= 1.0 else 255.0
        a = np.nan_to_num(a, nan=0.0, posinf=top, neginf=0.0) * (255.0 / top)
    elif im.mode.startswith("I;16") or (a.size and a.min() >= 0 and a.max() <= 65535):
        a = a.astype(np.float64) / 257.0  # 16-bit samples (Pillow opens 16-bit PNG greyscale as I;16 or I)
    else:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / max(hi - lo, 1.0))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, so one burst of large decodes would
    keep a long-running service at its peak). A no-op where malloc_trim does not exist."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def return_large_allocations_promptly(threshold: int = 4 * 1024 * 1024) -> None:
    """For long-running processes (the service): allocations over `threshold` bytes get their own memory
    mapping, returned to the OS the moment they are freed. glibc's default threshold adapts upwards (to
    32 MB) after the first large free, after which decoded images land in the heap and fragment it. No-op
    where mallopt does not exist."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD (fixed: no adaptation)
    except (OSError, AttributeError):
        pass


def _find_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


def check_text(text: str, what: str = "text") -> str:
    """Return the stripped text, or raise InputError if it is empty, whitespace-only or not valid UTF-8
    (a command-line argument with undecodable bytes arrives as lone surrogates)."""
    if not isinstance(text, str):
        raise InputError(f"{what}: expected a string, got {type(text).__name__}")
    check_utf8(text, what)
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{what}: empty or whitespace-only text {text!r}")
    return stripped


def check_utf8(text: str, what: str) -> str:
    """Raise InputError if `text` holds characters that are not valid Unicode text (e.g. undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what}: not valid UTF-8 text (undecodable byte at position {e.start})") from None
    return text


def check_output_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse, before any work, an output path that is a folder or cannot be written (its folder, or the
    nearest existing folder above it, is not writable)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{what} {path}: not writable")
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: cannot write in {parent}")
    return path


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
