"""CIRCO (benchmarks.md §1.3): queries = annotations/{val,test}.json, gallery = **every** image of
COCO 2017 unlabeled's image_info_unlabeled2017.json (123,403; the same for val and test; references
included). Several ground truths per query (`gt_img_ids`, the first = `target_img_id`); `shared_concept` is
kept in `Query.fields` for methods whose template uses it.

Layout:
    annotations/{val,test}.json
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
    COCO2017_unlabeled/unlabeled2017/000000xxxxxx.jpg      (file names from image_info)

Protocol (`CIRCO` below): the whole gallery is ranked with the reference kept (as the official evaluation);
mAP@5/10/25/50 on the top 50, R@K of the caption's own target, and on val mAP@10 per semantic aspect.
`--split test` writes the server file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

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
from zscir.datasets.registry import Benchmark, register_benchmark, submission_dir, table_header, table_row
from zscir.errors import InputError
from zscir.eval import submission as sub
from zscir.eval.metrics import MAP_KS, average_precisions, map_at_k, recall_at_k, recall_hits
from zscir.eval.protocols import circo_protocol, per_query_record
from zscir.eval.rankings import check_rankings

SPLITS = ("val", "test")
GALLERY_SIZE = 123403
EXPECTED = {"val": {"queries": 220, "gallery": GALLERY_SIZE}, "test": {"queries": 800, "gallery": GALLERY_SIZE}}


def read_circo_annotations(path, split: str) -> list[Query]:
    """Parse an official CIRCO annotation file (no images needed)."""
    entries = load_json(path, list, "the annotation file")
    has_gt = split == "val"
    queries: list[Query] = []
    for i, e in enumerate(entries):
        require_keys(e, ["id", "reference_img_id", "shared_concept"]
                     + (["target_img_id", "gt_img_ids"] if has_gt else []), path, i)
        if int(e["id"]) != i:
            raise InputError(f"{path}: entry {i} has id {e['id']}; ids must be consecutive from 0")
        gts = [str(int(g)) for g in e["gt_img_ids"]] if has_gt else []
        if has_gt:
            if not gts or gts[0] != str(int(e["target_img_id"])):
                raise InputError(f"{path}: query {i}: gt_img_ids[0] is not target_img_id")
            if len(set(gts)) != len(gts):
                raise InputError(f"{path}: query {i}: duplicate gt_img_ids")
        queries.append(
            Query(
                qid=str(i),
                reference=str(int(e["reference_img_id"])),
                texts=[modification_text(e, "relative_caption", path, str(i))],
                targets=gts,
                fields={
                    "shared_concept": str(e["shared_concept"]).strip(),
                    "semantic_aspects": list(e.get("semantic_aspects", [])),
                },
            )
        )
    return queries


def load_circo(root: str | os.PathLike[str], split: str = "val", strict_counts: bool = False,
               check_images: bool = True) -> BenchmarkSplit:
    if split not in SPLITS:
        raise InputError(f"CIRCO split {split!r}: expected val or test")
    root = check_root(root, "CIRCO")
    ann = find_file(root, [f"annotations/{split}.json"], f"CIRCO {split} annotations")
    info_path = find_file(root, ["COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
                                 "annotations/image_info_unlabeled2017.json"], "CIRCO gallery list")
    image_dir = find_dir(root, ["COCO2017_unlabeled/unlabeled2017", "unlabeled2017"], "COCO 2017 unlabeled images")
    info = load_json(info_path, dict, "image_info_unlabeled2017")
    images = info.get("images")
    if not isinstance(images, list):
        raise InputError(f"{info_path}: no 'images' list")
    gallery = []
    for i, im in enumerate(images):
        require_keys(im, ["id", "file_name"], info_path, i)
        gallery.append(ImageItem(str(int(im["id"])), image_dir / str(im["file_name"])))
    ids = {g.id for g in gallery}
    if len(ids) != len(gallery):
        raise InputError(f"{info_path}: duplicate image ids")
    queries = read_circo_annotations(ann, split)
    for q in queries:
        unknown = [x for x in (q.reference, *q.targets) if x not in ids]
        if unknown:
            raise InputError(f"{ann}: query {q.qid}: image id(s) {', '.join(unknown)} not in {info_path.name}")
    if check_images:
        check_paths_exist("CIRCO", gallery, str(image_dir))
    out = BenchmarkSplit("circo", split, split, root, gallery, queries)
    check_counts(out, EXPECTED[split], strict_counts)
    return out


@register_benchmark("circo")
class CIRCO(Benchmark):
    title = "CIRCO"
    official_counts = EXPECTED
    template_fields = frozenset({"caption", "shared_concept"})
    protocol = "gallery = all of image_info_unlabeled2017; reference kept (as the official evaluation); top-50 mAP"

    def load(self, root, subset="", split="val", strict_counts=False, check_images=True) -> BenchmarkSplit:
        return load_circo(root, split, strict_counts, check_images)

    def evaluate(self, split, queries, gallery, settings) -> dict[str, Any]:
        ids = [g.id for g in split.gallery]
        test = not split.has_targets
        res = circo_protocol(queries, gallery, ids, None if test else [q.targets for q in split.queries],
                             None if test else [q.targets[0] for q in split.queries])
        if test:
            s = sub.circo_submission([q.qid for q in split.queries], [[ids[j] for j in row] for row in res.top])
            path = submission_dir(settings) / "circo_test_submission.json"
            return {"files": [str(sub.write_circo(path, s, len(split.queries), ids))]}
        return {"metrics": res.metrics,
                "semantic_mAP@10": semantic_map(split, [[ids[j] for j in row] for row in res.top]),
                "per_query": res.per_query_record([q.qid for q in split.queries])}

    def table_rows(self, doc, average) -> list[str]:
        cols = ["mAP@5", "mAP@10", "mAP@25", "mAP@50"]
        return [table_header(cols), table_row("circo", [doc["summary"][c] for c in cols])]

    def score_subset(self, split: BenchmarkSplit, predictions: Mapping[str, list[str]],
                     subset_predictions: Mapping[str, list[str]] | None, where: str) -> dict[str, Any]:
        """Query id -> ranked gallery ids (the server format); mAP@K on the top 50."""
        qids = [q.qid for q in split.queries]
        check_rankings(predictions, qids, {g.id for g in split.gallery}, max(MAP_KS), where)
        top = [predictions[q][:50] for q in qids]
        metrics = map_at_k(top, [q.targets for q in split.queries], MAP_KS)
        ranks = [p.index(q.targets[0]) if q.targets[0] in p else 50 for p, q in zip(top, split.queries)]
        metrics.update(recall_at_k(ranks, (5, 10, 25, 50), "R"))
        per_query = per_query_record(qids, {**average_precisions(top, [q.targets for q in split.queries], MAP_KS),
                                            **recall_hits(ranks, (5, 10, 25, 50), "R")})
        return {"data": split.summary(), "metrics": metrics, "per_query": per_query}


def semantic_map(split: BenchmarkSplit, preds: list[list[str]]) -> dict[str, float]:
    """mAP@10 over the queries tagged with each semantic aspect (val)."""
    by_aspect: dict[str, list[int]] = {}
    for i, q in enumerate(split.queries):
        for a in q.fields.get("semantic_aspects", []):
            by_aspect.setdefault(a, []).append(i)
    return {a: map_at_k([preds[i] for i in idx], [split.queries[i].targets for i in idx], (10,))["mAP@10"]
            for a, idx in sorted(by_aspect.items())}
