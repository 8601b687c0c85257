"""GeneCIS (benchmarks.md §1.4): four tasks, each a list of templates with its own small gallery; the
candidates of a template are `[target] + gallery` (the target is index 0 by construction), ranked by the
similarity of the composed query; R@1/2/3 per task, headline = the average R@1 over the four tasks.

Layout (annotation JSONs from the GeneCIS repo, images from COCO and Visual Genome):
    genecis/{focus_attribute,change_attribute,focus_object,change_object}.json
    coco2017/val2017/000000xxxxxx.jpg          (object tasks; also val2017/ or coco/val2017/)
    Visual_Genome/VG_100K_all/<image_id>.jpg   (attribute tasks; also VG_100K_all/)

Object tasks use whole COCO val2017 images; attribute tasks crop the instance box dilated by 0.7 and pad it to
a square (GeneCIS's own loader, reproduced in `crop_instance`). Like the official loader, templates whose
gallery length differs from the task's most common length are left out; this is logged and recorded.

Protocol (`GeneCIS` below): each template ranks its own candidates [target] + gallery; R@1/2/3 per task,
headline = the average R@1 over the tasks. There is one evaluation split and no server.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from zscir.datasets.base import (
    BenchmarkSplit,
    ImageItem,
    Query,
    check_counts,
    check_paths_exist,
    check_root,
    find_dir,
    find_file,
    load_json,
    modification_text,
    require_keys,
)
from zscir.datasets.registry import Benchmark, register_benchmark, table_header, table_row
from zscir.errors import InputError
from zscir.eval.metrics import recall_at_k, recall_hits, target_ranks
from zscir.eval.protocols import per_query_record

log = logging.getLogger(__name__)

TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
DILATION = 0.7
EXPECTED = {"focus_object": {"queries": 1960}, "change_object": {"queries": 1960}}
COCO_DIRS = ["coco2017/val2017", "val2017", "coco/val2017", "COCO2017/val2017"]
VG_DIRS = ["Visual_Genome/VG_100K_all", "VG_100K_all", "vg/VG_100K_all", "visual_genome/VG_100K_all"]


def _object_item(d: dict, image_dir: Path, where: str) -> ImageItem:
    if not isinstance(d, dict) or "val_image_id" not in d:
        raise InputError(f"{where}: expected {{'val_image_id': ...}}, got {d!r}")
    i = int(d["val_image_id"])
    return ImageItem(f"coco:{i}", image_dir / f"{i:012d}.jpg")


def _attribute_item(d: dict, image_dir: Path, where: str) -> ImageItem:
    if not isinstance(d, dict) or "image_id" not in d or "instance_bbox" not in d:
        raise InputError(f"{where}: expected {{'image_id': ..., 'instance_bbox': [x, y, w, h]}}, got {d!r}")
    box = tuple(float(v) for v in d["instance_bbox"])
    if len(box) != 4:
        raise InputError(f"{where}: instance_bbox should be [x, y, w, h], got {d['instance_bbox']!r}")
    i = int(d["image_id"])
    key = ",".join(f"{v:g}" for v in box)
    return ImageItem(f"vg:{i}:{key}", image_dir / f"{i}.jpg", bbox=box, dilation=DILATION, pad_square=True)


def load_genecis(root: str | os.PathLike[str], task: str, split: str = "val", strict_counts: bool = False,
                 check_images: bool = True) -> BenchmarkSplit:
    if task not in TASKS:
        raise InputError(f"GeneCIS task {task!r}: expected one of {', '.join(TASKS)}")
    root = check_root(root, "GeneCIS")
    ann = find_file(root, [f"genecis/{task}.json", f"{task}.json"], f"GeneCIS {task} templates")
    is_object = task.endswith("object")
    image_dir = find_dir(root, COCO_DIRS if is_object else VG_DIRS,
                         "COCO val2017 images" if is_object else "Visual Genome images (VG_100K_all)")
    make = _object_item if is_object else _attribute_item
    entries = load_json(ann, list, "the template list")
    if not entries:
        raise InputError(f"{ann}: no templates")
    for i, e in enumerate(entries):
        require_keys(e, ["reference", "target", "gallery"], ann, i)
        if not isinstance(e["gallery"], list):
            raise InputError(f"{ann}: template {i}: 'gallery' should be a list")
    modal = Counter(len(e["gallery"]) for e in entries).most_common(1)[0][0]
    images: dict[str, ImageItem] = {}
    refs: dict[str, ImageItem] = {}
    queries: list[Query] = []
    dropped = 0
    for i, e in enumerate(entries):
        if len(e["gallery"]) != modal:
            dropped += 1
            continue
        where = f"{ann}: template {i}"
        ref = make(e["reference"], image_dir, where)
        cands = [make(e["target"], image_dir, where)] + [make(g, image_dir, where) for g in e["gallery"]]
        refs[ref.id] = ref
        for c in cands:
            images[c.id] = c
        queries.append(Query(qid=str(i), reference=ref.id, texts=[modification_text(e, "condition", ann, str(i))],
                             targets=[cands[0].id], candidates=[c.id for c in cands]))
    gallery = list(images.values())
    extra = [r for k, r in refs.items() if k not in images]
    out = BenchmarkSplit("genecis", task, split, root, gallery, queries, extra)
    if dropped:
        note = (f"GeneCIS {task}: {dropped} template(s) left out because their gallery length is not the modal "
                f"{modal} (as the official loader does)")
        log.warning(note)
        out.notes.append(note)
    if check_images:
        check_paths_exist("GeneCIS", [*gallery, *extra], str(image_dir))
    if task in EXPECTED:
        raw = BenchmarkSplit("genecis", task, split, root, [], [None] * len(entries))  # type: ignore[list-item]
        check_counts(raw, EXPECTED[task], strict_counts)
        out.complete, out.notes = raw.complete, out.notes + raw.notes
    return out


@register_benchmark("genecis")
class GeneCIS(Benchmark):
    title = "GeneCIS"
    subsets = TASKS
    subset_noun = ("task", "tasks")
    official_counts = EXPECTED
    protocol = "candidates = [target] + gallery; templates with a non-modal gallery length left out (official)"
    test_split_refusal = "genecis has a single evaluation split with public answers and no server; use --split val"

    def load(self, root, subset="", split="val", strict_counts=False, check_images=True) -> BenchmarkSplit:
        return load_genecis(root, subset, split, strict_counts, check_images)

    def evaluate(self, split, queries, gallery, settings) -> dict[str, Any]:
        gidx = split.gallery_index()
        cidx = [[gidx[c] for c in q.candidates] for q in split.queries]
        cand = gallery[torch.as_tensor(cidx)]  # (Q, n, D)
        s = torch.einsum("qd,qnd->qn", queries, cand)
        ranks = target_ranks(s, torch.zeros(len(cidx), dtype=torch.long))  # the target is candidate 0
        return {"metrics": recall_at_k(ranks, (1, 2, 3), "R"), "candidates_per_query": len(cidx[0]),
                "per_query": per_query_record([q.qid for q in split.queries], recall_hits(ranks, (1, 2, 3), "R"))}

    def aggregate(self, per) -> dict[str, float]:
        ms = [r["metrics"] for r in per.values() if "metrics" in r]
        return {"average R@1": sum(m["R@1"] for m in ms) / len(ms)} if ms else {}

    def table_rows(self, doc, average) -> list[str]:
        return ([table_header(["R@1", "R@2", "R@3"])]
                + [table_row(k, [r["metrics"][f"R@{i}"] for i in (1, 2, 3)]) for k, r in doc["results"].items()]
                + [f"{average + ' R@1':<18}{doc['summary']['average R@1']:>10.2f}"])
