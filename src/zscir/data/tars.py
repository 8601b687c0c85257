"""WebDataset tar shards in img2dataset's layout (`key.jpg|png|webp` + `key.txt` + `key.json`, grouped by key)."""


import hashlib
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

from zscir.data.base import (
    IMAGE_EXTENSIONS,
    TAR_EXTENSIONS,
    TAR_SEP,
    Record,
    Source,
    SourceConfig,
    _is_utf8,
    _printable,
    _stat_key,
)


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
