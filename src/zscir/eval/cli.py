"""`zscir eval`: a composition method on a registered benchmark (FashionIQ, CIRR, CIRCO, GeneCIS, and any
other module that registers one: zscir.datasets.registry)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from zscir.backbones.preprocess import MODES
from zscir.datasets import list_benchmarks
from zscir.datasets.fashioniq import CAPTION_ORDERS
from zscir.errors import InputError
from zscir.paths import cache_dir, data_home
from zscir.utils.cli import add_backbone_arg, add_device_arg

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a method on FashionIQ, CIRR, CIRCO or GeneCIS (exact protocols, test-server files)",
        description="Evaluate a composition method on a standard benchmark with its exact protocol, print the "
        "standard table and write a JSON record. --split test writes the CIRR / CIRCO server files (validated "
        "first). Dataset layouts: docs/benchmarks.md.",
    )
    p.add_argument("--benchmark", required=True, choices=list_benchmarks())
    p.add_argument("--root", required=True, type=Path, help="the benchmark's folder (layout in docs/benchmarks.md)")
    p.add_argument("--split", default="val", choices=("val", "test"), help="test: CIRR test1 / CIRCO test server files")
    p.add_argument("--method", default=None,
                   help="composition method (image, text, sum, slerp, ...; default: the checkpoint's method, else slerp)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint folder made by `zscir train` (a trained method needs one)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="--split test: write the server files even when the gallery is incomplete")
    add_backbone_arg(p)
    p.add_argument("--alpha", type=float, default=None, help="the method's interpolation weight, if it has one")
    p.add_argument("--preprocess", choices=MODES, default=None,
                   help="image preprocessing (default: the backbone's own): center_crop (CLIP), target_pad "
                   "(1.25, SEARLE/CIReVL), resize (MagicLens)")
    p.add_argument("--template", default="{caption}",
                   help="query text template; fields {caption} and, for CIRCO, {shared_concept} "
                   "(e.g. 'find {shared_concept} but {caption}')")
    p.add_argument("--caption-order", choices=CAPTION_ORDERS, default="both",
                   help="FashionIQ: 'c1 and c2', 'c2 and c1', or both with features averaged (default)")
    p.add_argument("--subsets", nargs="+", default=None, help="FashionIQ categories / GeneCIS tasks (default: all)")
    p.add_argument("--cache", type=Path, default=None, help="gallery embedding cache (default $ZSCIR_HOME/cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the gallery cache")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_arg(p)
    p.add_argument("--strict-counts", action="store_true", help="refuse anything but the full official split")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default $ZSCIR_HOME/results/<benchmark>-<split>-<method>.json)")
    p.add_argument("--submission-dir", type=Path, default=None,
                   help="where --split test writes the server files (default: the folder of --out)")
    p.set_defaults(func=run)


def build_method(name: str | None, backbone_spec: str, alpha: float | None, preprocess: str | None,
                 device: str | None, checkpoints: list[str] | None = None):
    """The method to evaluate, built by zscir.methods.build (refusals happen before the backbone loads)."""
    from zscir.backbones import load_backbone
    from zscir.eval.benchmarks import set_preprocess_mode
    from zscir.methods import build_method as build
    from zscir.methods.build import precheck
    from zscir.utils.runtime import pick_device

    name = precheck(name, checkpoints or [], alpha=alpha)
    backbone = load_backbone(backbone_spec, device=str(pick_device(device)))
    backbone = set_preprocess_mode(backbone, preprocess)
    return build(name, backbone, checkpoints or [], alpha=alpha)


def run(args: argparse.Namespace) -> int:
    from zscir.eval.benchmarks import EvalSettings, evaluate, format_table
    from zscir.utils.io import write_json

    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    from zscir.eval.benchmarks import check_template
    from zscir.methods.build import precheck
    from zscir.utils.io import check_output_file, check_utf8

    args.method = precheck(args.method, args.checkpoint, alpha=args.alpha)
    safe = args.method.replace("/", "_")
    bench = args.benchmark.replace("/", "_")
    out = args.out or data_home() / "results" / f"{bench}-{args.split}-{safe}.json"
    check_template(check_utf8(args.template, "--template"), args.benchmark)  # before any model or data is loaded
    check_output_file(out)
    settings = EvalSettings(
        benchmark=args.benchmark, root=args.root, split=args.split, subsets=args.subsets, template=args.template,
        caption_order=args.caption_order, cache_dir=None if args.no_cache else (args.cache or cache_dir()),
        batch_size=args.batch_size, strict_counts=args.strict_counts,
        submission_dir=args.submission_dir or out.parent, allow_incomplete=args.allow_incomplete,
    )
    method = build_method(args.method, args.backbone, args.alpha, args.preprocess, args.device, args.checkpoint)
    doc = evaluate(method, settings)
    print(format_table(doc))
    write_json(out, doc)
    print(f"results: {out}")
    return 0
