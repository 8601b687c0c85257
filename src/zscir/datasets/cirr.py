"""CIRR (benchmarks.md §1.2): queries = cap.rc2.{split}.json, gallery = **all keys** of
split.rc2.{split}.json (not just the images the triplets mention), Recall_subset over `img_set.members`.

Layout (SEARLE's): the annotation clone in `cirr/` (or the annotation folders directly in the root), and the
image folders the split file points at, relative to the root:
    cirr/captions/cap.rc2.{val,test1}.json
    cirr/image_splits/split.rc2.{val,test1}.json      {"dev-244-0-img0": "./dev/dev-244-0-img0.png", ...}
    dev/  test1/  train/

The split name for test is `test1` ("test" is accepted as an alias). `img_set.reference_rank` and
`target_rank` are not indices into `members` and are ignored, as is `target_soft`.

Protocol (`CIRR` below): the reference is removed from the ranking; R@1/5/10/50, Recall_subset@1/2/3 over
`img_set.members` in the global order, and (R@5 + Rs@1)/2. `--split test` writes the server's two files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
from zscir.datasets.registry import Benchmark, register_benchmark, submission_dir, table_header, table_row
from zscir.errors import InputError
from zscir.eval import submission as sub
from zscir.eval.metrics import RECALL_KS, SUBSET_KS, recall_at_k, recall_hits
from zscir.eval.protocols import cirr_protocol, per_query_record
from zscir.eval.rankings import check_rankings, rank_of

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


TABLE_COLUMNS = ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "(R@5+Rs@1)/2")


@register_benchmark("cirr")
class CIRR(Benchmark):
    title = "CIRR"
    official_counts = EXPECTED
    protocol = "reference removed; Recall_subset over img_set.members in the global order; gallery = all split keys"
    subset_predictions = True

    def load(self, root, subset="", split="val", strict_counts=False, check_images=True) -> BenchmarkSplit:
        return load_cirr(root, split, strict_counts, check_images)

    def evaluate(self, split, queries, gallery, settings) -> dict[str, Any]:
        gidx = split.gallery_index()
        test = not split.has_targets
        res = cirr_protocol(queries, gallery, [gidx[q.reference] for q in split.queries],
                            None if test else [gidx[q.targets[0]] for q in split.queries],
                            [[gidx[m] for m in q.members] for q in split.queries])
        if test:
            names = [g.id for g in split.gallery]
            recall, subset = sub.cirr_submissions([q.qid for q in split.queries],
                                                  [[names[j] for j in row] for row in res.top],
                                                  [[names[j] for j in row] for row in res.extra["subset_top"]])
            return {"files": [str(p) for p in sub.write_cirr(
                submission_dir(settings), recall, subset, {q.qid: q.reference for q in split.queries},
                {q.qid: q.members for q in split.queries}, names)]}
        m = dict(res.metrics)
        m["(R@5+Rs@1)/2"] = (m["R@5"] + m["Rs@1"]) / 2
        return {"metrics": m, "per_query": res.per_query_record([q.qid for q in split.queries])}

    def table_rows(self, doc, average) -> list[str]:
        m = doc["summary"]
        return [table_header([c if len(c) < 10 else "Avg" for c in TABLE_COLUMNS]),
                table_row("cirr", [m[c] for c in TABLE_COLUMNS])]

    def score_subset(self, split: BenchmarkSplit, predictions: Mapping[str, list[str]],
                     subset_predictions: Mapping[str, list[str]] | None, where: str) -> dict[str, Any]:
        """Pairid -> ranked names, the reference left out (removed if listed). The group ranking comes from
        `subset_predictions` (the server's recall_subset file) or else from the global list filtered to the
        group's members, where a target not listed counts as last in its group."""
        qids = [q.qid for q in split.queries]
        refs = {q.qid: q.reference for q in split.queries}
        preds = {k: [x for x in v if x != refs[k]] if k in refs else v for k, v in predictions.items()}
        check_rankings(preds, qids, {g.id for g in split.gallery}, max(RECALL_KS), where)
        ranks = [rank_of(preds[q.qid], q.targets[0]) for q in split.queries]
        metrics = recall_at_k(ranks, RECALL_KS, "R")
        sub_ranks = []
        for q in split.queries:
            members = [m for m in q.members if m != q.reference]
            if subset_predictions is not None:
                if q.qid not in subset_predictions:
                    raise InputError(f"subset predictions: no ranking for query {q.qid}")
                lst = [m for m in subset_predictions[q.qid] if m != q.reference]
                if any(m not in members for m in lst):
                    raise InputError(f"subset predictions: query {q.qid} ranks an image outside its group")
                sub_ranks.append(rank_of(lst, q.targets[0]))
            else:
                listed = [x for x in preds[q.qid] if x in set(members)]
                sub_ranks.append(listed.index(q.targets[0]) if q.targets[0] in listed else len(members) - 1)
        metrics.update(recall_at_k(sub_ranks, SUBSET_KS, "Rs"))
        metrics["(R@5+Rs@1)/2"] = (metrics["R@5"] + metrics["Rs@1"]) / 2
        per_query = per_query_record(qids, {**recall_hits(ranks, RECALL_KS, "R"), **recall_hits(sub_ranks, SUBSET_KS, "Rs")})
        return {"data": split.summary(), "metrics": metrics, "per_query": per_query,
                "subset_source": "subset predictions" if subset_predictions is not None else "global lists"}
