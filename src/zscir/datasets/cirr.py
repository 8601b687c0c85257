"""CIRR (benchmarks.md §1.2): queries = cap.rc2.{split}.json, gallery = **all keys** of
split.rc2.{split}.json (not just the images the triplets mention), Recall_subset over `img_set.members`.

Layout (SEARLE's): the annotation clone in `cirr/` (or the annotation folders directly in the root), and the
image folders the split file points at, relative to the root:
    cirr/captions/cap.rc2.{val,test1}.json
    cirr/image_splits/split.rc2.{val,test1}.json      {"dev-244-0-img0": "./dev/dev-244-0-img0.png", ...}
    dev/  test1/  train/

The split name for test is `test1` ("test" is accepted as an alias). `img_set.reference_rank` and
`target_rank` are not indices into `members` and are ignored, as is `target_soft`.
"""

from __future__ import annotations

import os
from pathlib import Path

from zscir.datasets.base import (
    BenchmarkSplit,
    ImageItem,
    Query,
    check_counts,
    check_paths_exist,
    check_root,
    find_file,
    load_json,
    modification_text,
    require_keys,
)
from zscir.errors import InputError

SPLITS = ("train", "val", "test1")
EXPECTED = {"val": {"queries": 4181, "gallery": 2297}, "test1": {"queries": 4148, "gallery": 2315}}


def normalise_split(split: str) -> str:
    split = {"test": "test1", "dev": "val"}.get(split, split)
    if split not in SPLITS:
        raise InputError(f"CIRR split {split!r}: expected val or test1")
    return split


def load_cirr(root: str | os.PathLike[str], split: str = "val", strict_counts: bool = False,
              check_images: bool = True) -> BenchmarkSplit:
    split = normalise_split(split)
    root = check_root(root, "CIRR")
    cap_path = find_file(root, [f"cirr/captions/cap.rc2.{split}.json", f"captions/cap.rc2.{split}.json"],
                         f"CIRR {split} captions")
    split_path = find_file(root, [f"cirr/image_splits/split.rc2.{split}.json", f"image_splits/split.rc2.{split}.json"],
                           f"CIRR {split} image split")
    name_to_rel = load_json(split_path, dict, "the image split (name -> relative path)")
    entries = load_json(cap_path, list, "the captions file")

    gallery = [ImageItem(str(n), root / Path(str(rel))) for n, rel in name_to_rel.items()]
    in_gallery = set(name_to_rel)
    queries: list[Query] = []
    has_target = split != "test1"
    for i, e in enumerate(entries):
        require_keys(e, ["pairid", "reference", "img_set"] + (["target_hard"] if has_target else []), cap_path, i)
        members = e["img_set"].get("members") if isinstance(e["img_set"], dict) else None
        if not isinstance(members, list):
            raise InputError(f"{cap_path}: entry {i} (pairid {e['pairid']}): img_set.members missing")
        members = [str(m) for m in members]
        ref = str(e["reference"])
        if ref not in members:
            raise InputError(f"{cap_path}: pairid {e['pairid']}: the reference {ref} is not in img_set.members")
        if len(set(members)) != len(members):
            raise InputError(f"{cap_path}: pairid {e['pairid']}: duplicate img_set.members")
        targets = [str(e["target_hard"])] if has_target else []
        for name in [ref, *targets, *members]:
            if name not in in_gallery:
                raise InputError(f"{cap_path}: pairid {e['pairid']}: image {name} is not a key of {split_path.name}")
        if targets and targets[0] not in members:
            raise InputError(f"{cap_path}: pairid {e['pairid']}: target_hard {targets[0]} is not in img_set.members")
        queries.append(
            Query(qid=str(e["pairid"]), reference=ref, texts=[modification_text(e, "caption", cap_path, str(e["pairid"]))], targets=targets,
                  members=members, fields={"img_set_id": e["img_set"].get("id")})
        )
    qids = [q.qid for q in queries]
    if len(set(qids)) != len(qids):
        raise InputError(f"{cap_path}: duplicate pairids")
    if check_images:
        check_paths_exist("CIRR", gallery, f"{root} (paths from {split_path.name})")
    out = BenchmarkSplit("cirr", split, split, root, gallery, queries)
    if split in EXPECTED:
        check_counts(out, EXPECTED[split], strict_counts)
    return out
