"""The index manifest: what made the embeddings, and what files hold them (with checksums).

manifest.json is the commit point of every write: a shard counts only once the manifest lists it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zscir
from zscir.errors import CheckpointError
from zscir.utils.io import read_json, write_json

FORMAT = "zscir.index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class ShardRecord:
    name: str  # shards/shard-00000 (without extension)
    count: int
    sha256: str  # of the .npy
    meta_sha256: str  # of the .jsonl
    failed: list[dict[str, str]] = field(default_factory=list)  # [{"id", "path", "error"}]


@dataclass
class FaissRecord:
    factory: str
    metric: str
    search: str  # faiss ParameterSpace string, e.g. "efSearch=128" ("" for none)
    file: str
    sha256: str
    count: int
    rerank: int  # candidates re-scored exactly = rerank * k (0: none)
    #: what `zscir index --target-recall` measured (kinds.TuningResult.to_json()); None: not tuned
    tuning: dict[str, Any] | None = None


@dataclass
class Manifest:
    backbone_spec: str
    backbone_fingerprint: str
    preprocess: dict[str, Any]
    preprocess_digest: str
    gallery_method: str
    gallery_id: str
    dim: int
    dtype: str = "float16"
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    faiss: FaissRecord | None = None
    sources: list[str] = field(default_factory=list)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    zscir_version: str = zscir.__version__
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["count"] = self.count
        return d

    def save(self, folder: Path) -> None:
        self.updated = time.time()
        write_json(Path(folder) / MANIFEST, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CheckpointError(f"{folder}: not a zscir index (no {MANIFEST})")
        try:
            d = read_json(path)
        except Exception as e:  # InputError from read_json: a corrupt manifest is a checkpoint problem
            raise CheckpointError(f"{path}: corrupt manifest ({e})") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a zscir index manifest")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{folder}: index format version {version}, this zscir reads version {FORMAT_VERSION}; "
                "rebuild it with `zscir index`"
            )
        try:
            d.pop("count", None)
            d["shards"] = [ShardRecord(**s) for s in d.get("shards", [])]
            d["faiss"] = FaissRecord(**d["faiss"]) if d.get("faiss") else None
            return cls(**d)
        except TypeError as e:
            raise CheckpointError(f"{path}: manifest does not match format version {FORMAT_VERSION} ({e})") from e
