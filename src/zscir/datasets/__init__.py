"""Benchmarks (benchmarks.md): each module of this package declares one (FashionIQ, CIRR, CIRCO, GeneCIS):
its loader, which returns a `BenchmarkSplit` (gallery + queries) after checking every image it needs exists,
and its protocol, registered with `register_benchmark` (zscir.datasets.registry). `zscir eval` and
`zscir score` find them through the registry; a new benchmark is a new module here and nothing else."""

from __future__ import annotations

import os

from zscir.datasets.base import BenchmarkSplit, ImageItem, Query, crop_instance

# The built-in loaders, importable from the package as before; a new benchmark needs no line here.
from zscir.datasets.circo import load_circo
from zscir.datasets.cirr import load_cirr
from zscir.datasets.fashioniq import load_fashioniq
from zscir.datasets.genecis import load_genecis
from zscir.datasets.registry import (
    Benchmark,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
    unregister_benchmark,
)


def load_benchmark(name: str, root: str | os.PathLike[str], subset: str = "", split: str = "val",
                   strict_counts: bool = False) -> BenchmarkSplit:
    """One subset of one split of a registered benchmark (every file checked)."""
    return get_benchmark(name).load(root, subset, split, strict_counts)


__all__ = ["Benchmark", "BenchmarkSplit", "ImageItem", "Query", "crop_instance", "get_benchmark", "list_benchmarks",
           "load_benchmark", "load_circo", "load_cirr", "load_fashioniq", "load_genecis", "register_benchmark",
           "unregister_benchmark"]
