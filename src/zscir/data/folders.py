"""Sources that are files on disk: a folder (walked recursively), a glob pattern, an in-memory list of paths."""


import hashlib
import os
import stat as statlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from zscir.data.base import IMAGE_EXTENSIONS, Record, Source, SourceConfig, _is_utf8, _printable, _stat_key


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
        except OSError as err:
            self._fail(_printable(rel or "."), _printable(folder), f"unreadable folder ({err.strerror or err})")
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
