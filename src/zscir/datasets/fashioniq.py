"""FashionIQ (benchmarks.md §1.1): per category, queries = every entry of cap.{cat}.{split}.json, gallery =
split.{cat}.{split}.json; images are `<ASIN>.png` or `<ASIN>.jpg` depending on the mirror (both are tried).

Accepted layouts under the root (SEARLE's first, then Pic2Word's):
    captions/cap.{cat}.{split}.json     or json/cap.{cat}.{split}.json
    image_splits/split.{cat}.{split}.json
    images/<ASIN>.{png|jpg}

Protocol (`FashionIQ` below): per category on val, the reference kept in the gallery; R@10 and R@50 per
category, their averages over the categories and the mean of the two averages. The two captions become one
text ("c1 and c2"), the reverse, or both with their features averaged (`--caption-order`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zscir.datasets.base import (
    BenchmarkSplit,
    ImageItem,
    Query,
    check_counts,
    check_root,
    find_dir,
    find_file,
    list_files,
    load_json,
    raise_missing,
    require_keys,
)
from zscir.datasets.registry import Benchmark, register_benchmark, table_header, table_row
from zscir.errors import InputError
from zscir.eval.protocols import single_target_protocol
from zscir.eval.rankings import score_single_target

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
EXTENSIONS = (".png", ".jpg", ".jpeg")
CAPTION_ORDERS = ("forward", "reverse", "both")
# Official counts (benchmarks.md §1.1): queries and gallery per category.
EXPECTED = {
    ("dress", "val"): {"queries": 2017, "gallery": 3817},
    ("shirt", "val"): {"queries": 2038, "gallery": 6346},
    ("toptee", "val"): {"queries": 1961, "gallery": 5373},
    ("dress", "test"): {"queries": 2024, "gallery": 3818},
    ("shirt", "test"): {"queries": 2038, "gallery": 6346},
    ("toptee", "test"): {"queries": 2056, "gallery": 5374},
}


def clean_caption(caption: str) -> str:
    """Strip whitespace (val has leading spaces) and trailing/leading '.', '?', ',' (SEARLE's strip)."""
    return caption.strip().strip(".?, ").strip()


def join_captions(captions: Sequence[str], order: str = "forward") -> list[str]:
    """The modification text(s) for one query: "c1 and c2" ("forward"), "c2 and c1" ("reverse"), or both
    (the features of the two are averaged, as SEARLE / LinCIR do). Empty captions are left out; a query whose
    captions are all empty has one empty modification."""
    if order not in CAPTION_ORDERS:
        raise InputError(f"caption order {order!r}: expected one of {', '.join(CAPTION_ORDERS)}")
    parts = [c for c in (clean_caption(c) for c in captions) if c]
    if not parts:  # kept as an empty modification (counted and warned about by the evaluation)
        return {"forward": [""], "reverse": [""], "both": ["", ""]}[order]
    fwd = " and ".join(parts)
    rev = " and ".join(reversed(parts))
    return {"forward": [fwd], "reverse": [rev], "both": [fwd, rev]}[order]


def load_fashioniq(
    root: str | os.PathLike[str], category: str, split: str = "val", strict_counts: bool = False
) -> BenchmarkSplit:
    if category not in CATEGORIES:
        raise InputError(f"FashionIQ category {category!r}: expected one of {', '.join(CATEGORIES)}")
    if split not in SPLITS:
        raise InputError(f"FashionIQ split {split!r}: expected one of {', '.join(SPLITS)}")
    root = check_root(root, "FashionIQ")
    cap_path = find_file(root, [f"captions/cap.{category}.{split}.json", f"json/cap.{category}.{split}.json"],
                         f"FashionIQ {category} {split} captions")
    split_path = find_file(root, [f"image_splits/split.{category}.{split}.json", f"json/split.{category}.{split}.json"],
                           f"FashionIQ {category} {split} image split")
    image_dir = find_dir(root, ["images", "image_data"], "FashionIQ images")
    names = load_json(split_path, list, "the image split")
    entries = load_json(cap_path, list, "the captions file")

    files = list_files(image_dir)

    def resolve(asin: str) -> Path | None:
        for ext in EXTENSIONS:
            if asin + ext in files:
                return image_dir / (asin + ext)
        return None

    queries: list[Query] = []
    for i, e in enumerate(entries):
        require_keys(e, ["candidate", "captions"], cap_path, i)
        caps = e["captions"]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise InputError(f"{cap_path}: query {category}-{i} (candidate {e.get('candidate')}): 'captions' should be "
                             f"a list of strings, got {caps!r}"[:300])
        target = e.get("target")
        queries.append(
            Query(
                qid=f"{category}-{i}",
                reference=str(e["candidate"]),
                texts=[c.strip() for c in caps],
                targets=[str(target)] if target is not None else [],
            )
        )

    gallery_set = set(names)
    if len(gallery_set) != len(names):
        raise InputError(f"{split_path}: duplicate image names in the split")
    bad_targets = sorted({t for q in queries for t in q.targets if t not in gallery_set})
    if bad_targets:
        raise InputError(
            f"{cap_path}: {len(bad_targets)} target(s) are not in {split_path.name}: {', '.join(bad_targets[:5])}"
        )
    extra_ids = sorted({q.reference for q in queries if q.reference not in gallery_set})
    needed = list(names) + extra_ids
    resolved = {a: resolve(a) for a in needed}
    missing = [a for a in needed if resolved[a] is None]
    raise_missing("FashionIQ", missing, f"{image_dir} as <ASIN>{'|'.join(EXTENSIONS)}",
                  f" ({category} {split})")
    gallery = [ImageItem(a, resolved[a]) for a in names]  # type: ignore[arg-type]
    extra = [ImageItem(a, resolved[a]) for a in extra_ids]  # type: ignore[arg-type]
    out = BenchmarkSplit("fashioniq", category, split, root, gallery, queries, extra)
    if (category, split) in EXPECTED:
        check_counts(out, EXPECTED[(category, split)], strict_counts)
    return out


@register_benchmark("fashioniq")
class FashionIQ(Benchmark):
    title = "FashionIQ"
    subsets = CATEGORIES
    subset_noun = ("category", "categories")
    official_counts = EXPECTED
    protocol = "val, per category; gallery = image_splits; reference kept; ties by gallery order"
    test_split_refusal = ("fashioniq has no test server and no public test targets (nobody reports FashionIQ "
                          "test); use --split val")

    def load(self, root, subset="", split="val", strict_counts=False, check_images=True) -> BenchmarkSplit:
        # images are always looked at: their extension (.png or .jpg) depends on the mirror
        return load_fashioniq(root, subset, split, strict_counts)

    def modification_texts(self, query, caption_order) -> list[str]:
        return join_captions(query.texts, caption_order)

    def is_blank(self, query) -> bool:
        return not join_captions(query.texts, "forward")[0]

    def text_settings(self, settings) -> dict[str, Any]:
        return {"caption_order": settings.caption_order}

    def evaluate(self, split, queries, gallery, settings) -> dict[str, Any]:
        gidx = split.gallery_index()
        res = single_target_protocol(queries, gallery, [gidx[q.targets[0]] for q in split.queries], ks=(10, 50))
        return {"metrics": res.metrics, "per_query": res.per_query_record([q.qid for q in split.queries])}

    def aggregate(self, per) -> dict[str, float]:
        ms = [r["metrics"] for r in per.values() if "metrics" in r]
        if not ms:
            return {}
        r10 = sum(m["R@10"] for m in ms) / len(ms)
        r50 = sum(m["R@50"] for m in ms) / len(ms)
        return {"R@10": r10, "R@50": r50, "mean": (r10 + r50) / 2}

    def table_rows(self, doc, average) -> list[str]:
        s = doc["summary"]
        return ([table_header(["R@10", "R@50"])]
                + [table_row(k, [r["metrics"]["R@10"], r["metrics"]["R@50"]]) for k, r in doc["results"].items()]
                + [table_row(average, [s["R@10"], s["R@50"]]), f"{'mean of averages':<18}{s['mean']:>10.2f}"])

    def score_subset(self, split: BenchmarkSplit, predictions: Mapping[str, list[str]],
                     subset_predictions: Mapping[str, list[str]] | None, where: str) -> dict[str, Any]:
        """Keys "<category>-<i>" -> ranked ids (i = the query's index in cap.<category>.val.json)."""
        return score_single_target(split, predictions, (10, 50), where)
