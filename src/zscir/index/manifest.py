"""The index manifest: what made the embeddings, and what files hold them (with checksums).

manifest.json is the commit point of every write: a shard counts only once the manifest lists it."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zscir
from zscir.config import from_dict
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

    def validate(self) -> None:
        if not re.fullmatch(r"shards/shard-\d{5,}", self.name):
            raise ValueError(f"name={self.name!r}: not a shard name (shards/shard-NNNNN)")
        if self.count < 0:
            raise ValueError(f"count={self.count}: must be >= 0")
        for key in ("sha256", "meta_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", getattr(self, key)):
                raise ValueError(f"{key}: not a SHA-256 hex digest")


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

    def validate(self) -> None:
        if not self.factory:
            raise ValueError("factory: empty")
        if self.metric != "ip":
            raise ValueError(f"metric={self.metric!r}: only 'ip' is supported")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+\.faiss", self.file) or self.file.startswith("."):
            raise ValueError(f"file={self.file!r}: must be a file name inside the index folder (*.faiss)")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("sha256: not a SHA-256 hex digest")
        if self.count < 0:
            raise ValueError(f"count={self.count}: must be >= 0")
        if not 0 <= self.rerank <= 1000:
            raise ValueError(f"rerank={self.rerank}: must be between 0 and 1000")
        if self.search and not re.fullmatch(r"[A-Za-z_]+=[0-9.]+(,[A-Za-z_]+=[0-9.]+)*", self.search):
            raise ValueError(f"search={self.search!r}: expected faiss parameters such as 'nprobe=16,efSearch=64'")


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
    #: the checkpoint that changes the gallery encoder (TAT tunes the image tower), "" when the gallery is the
    #: backbone's own image tower (every other method, ISA included: it keeps the large tower for the gallery)
    gallery_checkpoint: str = ""
    gallery_checkpoint_fingerprint: str = ""

    def validate(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim={self.dim}: must be positive")
        if self.dtype != "float16":
            raise ValueError(f"dtype={self.dtype!r}: only float16 shards are written by this zscir")
        if not self.backbone_spec:
            raise ValueError("backbone_spec: empty")

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
    def load(cls, folder: str | Path) -> Manifest:
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
        d.pop("count", None)
        where = str(path)
        shards = d.get("shards", [])
        if not isinstance(shards, list):
            raise CheckpointError(f"{where}: shards: expected a list, got {type(shards).__name__}")
        d["shards"] = [from_dict(ShardRecord, s, f"{where}: shards[{i}]") for i, s in enumerate(shards)]
        d["faiss"] = from_dict(FaissRecord, d["faiss"], f"{where}: faiss") if d.get("faiss") is not None else None
        return from_dict(cls, d, where)
