"""Benchmark loaders (benchmarks.md): FashionIQ, CIRR, CIRCO, GeneCIS. Each returns a
`BenchmarkSplit` (gallery + queries) after checking every image it needs exists."""

from __future__ import annotations

import os

from zscir.datasets.base import BenchmarkSplit, ImageItem, Query, crop_instance
from zscir.datasets.circo import load_circo
from zscir.datasets.cirr import load_cirr
from zscir.datasets.fashioniq import CATEGORIES, load_fashioniq
from zscir.datasets.genecis import TASKS, load_genecis
from zscir.errors import InputError

BENCHMARKS = ("fashioniq", "cirr", "circo", "genecis")
#: the parts each benchmark is evaluated on separately (and averaged over, where the tables do)
SUBSETS: dict[str, tuple[str, ...]] = {"fashioniq": CATEGORIES, "cirr": ("",), "circo": ("",), "genecis": TASKS}


def load_benchmark(name: str, root: str | os.PathLike[str], subset: str = "", split: str = "val",
                   strict_counts: bool = False) -> BenchmarkSplit:
    if name == "fashioniq":
        return load_fashioniq(root, subset, split, strict_counts)
    if name == "cirr":
        return load_cirr(root, split, strict_counts)
    if name == "circo":
        return load_circo(root, split, strict_counts)
    if name == "genecis":
        return load_genecis(root, subset, split, strict_counts)
    raise InputError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")


__all__ = ["BENCHMARKS", "SUBSETS", "BenchmarkSplit", "ImageItem", "Query", "crop_instance", "load_benchmark",
           "load_circo", "load_cirr", "load_fashioniq", "load_genecis"]
