"""Checkpoints are folders with fixed file names:

    config.json        {"kind": ..., "zscir_version": ..., "config": {...}, "fingerprint": ..., ...}
    model.safetensors  only the trained tensors (heads, adapters, mappers), never a pickle

`load_checkpoint(dir, kind)` refuses a folder of another kind, and callers compare the recorded backbone
fingerprint with the backbone at hand (`check_fingerprint`), so a mapper trained on one backbone is never
silently applied to another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import zscir
from zscir.errors import CheckpointError
from zscir.utils.io import atomic_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its kind, its config dict, its tensors and any extra metadata."""

    kind: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def tensor(self, name: str) -> torch.Tensor:
        """A named tensor, or a CheckpointError naming the missing one."""
        if name not in self.tensors:
            raise CheckpointError(f"{self.path}: missing tensor {name!r} in {WEIGHTS_NAME}")
        return self.tensors[name]

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    @property
    def backbone_fingerprint(self) -> str | None:
        return self.meta.get("backbone_fingerprint")


def tensors_fingerprint(tensors: dict[str, torch.Tensor], extra: Any = None) -> str:
    """A short content hash of named tensors (+ any JSON-able extra, e.g. the architecture config)."""
    h = hashlib.sha256()
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    kind: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    **meta: Any,
) -> Path:
    """Write a checkpoint folder atomically; returns its path. `meta` may carry `backbone_fingerprint`."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta.setdefault("fingerprint", tensors_fingerprint(tensors, {"kind": kind, "config": config}))
    doc = {"kind": kind, "zscir_version": zscir.__version__, "config": config, **meta}
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_checkpoint_doc(cfg_path: Path) -> dict[str, Any]:
    """A config.json as a JSON object, or a one-line CheckpointError (unreadable, not UTF-8, not JSON, not
    an object). Also used for Hugging Face folders, whose config.json has no zscir 'kind'."""
    try:
        raw = Path(cfg_path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{cfg_path}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{cfg_path}: corrupt config (not UTF-8 text: byte {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: corrupt config ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise CheckpointError(f"{cfg_path}: corrupt config (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{cfg_path}: corrupt config (expected a JSON object, got {type(doc).__name__})")
    return doc


def validate_checkpoint_doc(doc: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """The one check of a zscir checkpoint's config.json, by type: 'kind' a non-empty string, 'config' an
    object, fingerprints strings. The settings inside 'config' are checked by the loader of the kind, with
    zscir.config.from_dict (unknown keys and wrong types refused)."""
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"{cfg_path}: not a zscir checkpoint config (no 'kind')" if kind is None else
                              f"{cfg_path}: 'kind' must be a non-empty string, got {type(kind).__name__}")
    if "config" not in doc:
        raise CheckpointError(f"{cfg_path}: no 'config' (the settings of the {kind} checkpoint)")
    if not isinstance(doc["config"], dict):
        raise CheckpointError(f"{cfg_path}: 'config' must be an object, got {_json_type(doc['config'])}")
    for key in ("fingerprint", "backbone_fingerprint", "zscir_version"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise CheckpointError(f"{cfg_path}: '{key}' must be a string, got {_json_type(doc[key])}")
    return doc


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint folder (validate_checkpoint_doc)."""
    path = Path(path)
    cfg_path = path / CONFIG_NAME
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: not a zscir checkpoint (no {CONFIG_NAME})")
    return validate_checkpoint_doc(read_checkpoint_doc(cfg_path), cfg_path)


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] | None = None) -> Checkpoint:
    """Load a checkpoint folder (safetensors only: nothing is unpickled). Refuse one of another kind."""
    path = Path(path)
    doc = read_checkpoint_config(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and doc["kind"] not in kinds:
        raise CheckpointError(
            f"{path}: checkpoint of kind '{doc['kind']}', expected {' or '.join(repr(k) for k in kinds)}"
        )
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt weights ({' '.join(str(e).split())[:160]})") from None
    meta = {k: v for k, v in doc.items() if k not in ("kind", "config")}
    return Checkpoint(kind=doc["kind"], config=doc["config"], tensors=tensors, meta=meta, path=path)


def check_fingerprint(ckpt: Checkpoint, backbone_fingerprint: str, what: str = "checkpoint") -> None:
    """Refuse a checkpoint trained on top of another backbone."""
    recorded = ckpt.backbone_fingerprint
    if recorded is not None and recorded != backbone_fingerprint:
        raise CheckpointError(
            f"{ckpt.path}: {what} was trained for backbone {recorded}, but the backbone in use is "
            f"{backbone_fingerprint}; retrain it or load the matching backbone"
        )
