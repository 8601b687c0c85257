"""One cache for every trained artefact of an experiment (a pre-trained backbone, a mapper, adapters, ...).

An artefact is a folder built by a function; its key is a hash of what it is (`name`), the settings that
shape it and the fingerprints of its inputs (the backbone, the world, the artefacts it builds on). A folder
whose recorded key matches is reused; anything else is rebuilt. A build goes to a hidden sibling folder and is
renamed into place with its key, so a killed build is never mistaken for a finished one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "artifact.json"


def artifact_key(name: str, settings: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """The key of an artefact: settings and input fingerprints, JSON-canonicalised and hashed."""
    doc = {"name": name, "settings": dict(settings), "inputs": dict(inputs)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def recorded_key(folder: Path) -> str:
    """The key a finished artefact folder records ("" when it is not one)."""
    try:
        return str(json.loads((folder / MARKER).read_text(encoding="utf-8")).get("key", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def cached_artifact(root: str | os.PathLike[str], name: str, settings: Mapping[str, Any],
                    inputs: Mapping[str, str], build: Callable[[Path], Any], *, keyed_folder: bool = True) -> Path:
    """The folder of artefact `name` under `root`, built by `build(folder)` unless one with the same key exists.

    keyed_folder: the folder is `<name>-<key>` (variants with other settings live side by side); otherwise it is
    `<name>` and a different key rebuilds it in place (it is ours: it carries the marker)."""
    key = artifact_key(name, settings, inputs)
    root = Path(root)
    final = root / (f"{name}-{key}" if keyed_folder else name)
    if recorded_key(final) == key:
        return final
    if final.exists() and not recorded_key(final) and any(final.iterdir()):
        from zscir.errors import InputError

        raise InputError(f"{final}: exists but has no {MARKER} (made by you, or by a zscir older than the "
                         "experiments layer), so it is never overwritten: move it away or delete it to let it be "
                         "rebuilt here")
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    log.info("building %s -> %s", name, final)
    try:
        build(work)
        if not work.is_dir():
            raise RuntimeError(f"building {name} wrote nothing to {work}")
        (work / MARKER).write_text(json.dumps({"key": key, "name": name, "settings": dict(settings),
                                               "inputs": dict(inputs)}, indent=1, sort_keys=True, default=str)
                                   + "\n", encoding="utf-8")
        if final.exists():  # an artefact with another key (settings changed): ours to replace
            old = root / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
