"""Read a world folder written by `generate_world`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir.errors import InputError
from zscir.utils.io import read_json
from zscir.world.generate import VERSION
from zscir.world.scene import Scene

FILES = ("world.json", "scenes.json", "pairs.json", "unlabelled.json", "text_triplets.json", "cir_train.json",
         "eval_cirr.json", "eval_circo.json")


@dataclass
class World:
    root: Path
    meta: dict[str, Any]
    scenes_raw: dict[str, dict]
    pairs: list[dict]
    unlabelled: list[str]
    text_triplets: list[dict]
    cir_train: list[dict]
    cirr: dict
    circo: dict
    heldout_combos: list[tuple[str, str]] = field(default_factory=list)

    def image_path(self, image_id: str) -> Path:
        if image_id not in self.scenes_raw:
            raise InputError(f"{self.root}: no image {image_id!r} in this world")
        return self.root / "images" / f"{image_id}.png"

    def scene(self, image_id: str) -> Scene:
        if image_id not in self.scenes_raw:
            raise InputError(f"{self.root}: no scene {image_id!r} in this world")
        return Scene.from_dict(self.scenes_raw[image_id])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])


def load_world(root: str | os.PathLike[str]) -> World:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: world folder not found (make one with `zscir world --out {root}`)")
    for f in FILES:
        if not (root / f).is_file():
            raise InputError(f"{root}: not a complete world folder ({f} missing); regenerate it with `zscir world`")
    if not (root / "images").is_dir():
        raise InputError(f"{root}: not a complete world folder (images/ missing)")
    d = {f: read_json(root / f) for f in FILES}
    meta = d["world.json"]
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise InputError(f"{root}/world.json: unsupported or corrupt world (version {meta.get('version') if isinstance(meta, dict) else '?'})")
    try:
        scenes = d["scenes.json"]
        cirr, circo = d["eval_cirr.json"], d["eval_circo.json"]
        ids = set(scenes)
        used = set(d["unlabelled.json"]) | {p["image"] for p in d["pairs.json"]}
        used |= {t[k] for t in d["cir_train.json"] for k in ("reference", "target")}
        used |= {n for t in d["cir_train.json"] for n in t.get("negatives", ())}
        used |= set(cirr["gallery"]) | set(circo["gallery"])
        for q in cirr["queries"] + circo["queries"]:
            used |= {q["reference"], q["target"]}
    except (KeyError, TypeError) as e:
        raise InputError(f"{root}: corrupt world folder ({type(e).__name__}: {e})") from e
    missing = used - ids
    if missing:
        raise InputError(f"{root}/scenes.json: {len(missing)} image ids without a scene, e.g. {sorted(missing)[0]}")
    on_disk = {n[:-4] for n in os.listdir(root / "images") if n.endswith(".png")}
    lacking = ids - on_disk
    if lacking:
        raise InputError(f"{root}/images: {len(lacking)} images missing, e.g. {sorted(lacking)[0]}.png")
    return World(root=root, meta=meta, scenes_raw=scenes, pairs=d["pairs.json"], unlabelled=d["unlabelled.json"],
                 text_triplets=d["text_triplets.json"], cir_train=d["cir_train.json"], cirr=cirr, circo=circo,
                 heldout_combos=[tuple(c) for c in meta.get("heldout_combos", [])])
