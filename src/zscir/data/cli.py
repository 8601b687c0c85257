"""`zscir data ...`: look at a data source the way every command reads it, and make synthetic CIR triplets
from image-caption pairs. Also the shared source flags (`add_source_arguments`) that `zscir index` and the
trainers use, so `--image-column` etc. mean the same everywhere."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from zscir.errors import InputError
from zscir.utils.cli import add_backbone_arg, add_device_arg, add_seed_arg


def add_source_arguments(p: argparse.ArgumentParser, *, failures: bool = True) -> None:
    """--image-column, --caption-column, --id-column (and --max-bad-fraction) for commands reading a SOURCE."""
    g = p.add_argument_group("data source (docs/data.md)")
    g.add_argument("--image-column", default=None,
                   help="listing column holding the image path (default: the first of path, image, filepath, file...)")
    g.add_argument("--caption-column", default=None,
                   help="listing column holding the caption (default: caption, text, title...); for WebDataset "
                   "shards, a key of each sample's .json instead of the .txt")
    g.add_argument("--id-column", default=None, help="listing column holding a unique id (default: id/key if "
                   "present, else the image path as written)")
    if failures:
        g.add_argument("--max-bad-fraction", type=_fraction, default=0.05,
                       help="refuse the data once more than this fraction of the items are unreadable (default 0.05)")


def _fraction(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not 0.0 <= x <= 1.0 or math.isnan(x):
        raise argparse.ArgumentTypeError(f"{v}: must be between 0 and 1")
    return x


def source_from_args(spec: str, args: argparse.Namespace):
    """open_source(spec) with the columns of add_source_arguments."""
    from zscir.data.sources import open_source

    return open_source(spec, image_column=getattr(args, "image_column", None),
                       caption_column=getattr(args, "caption_column", None), id_column=getattr(args, "id_column", None))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect a data source; make synthetic CIR triplets from image-caption pairs",
                       description="Tools over the data layer every command reads through (docs/data.md).")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    q = dsub.add_parser("inspect", help="what a SOURCE holds, read exactly as index/train read it",
                        description="Stream SOURCE (without decoding images unless --decode) and print its kind, "
                        "the first records and the counts of records, captions and problems.")
    q.add_argument("source")
    add_source_arguments(q, failures=False)
    q.add_argument("-n", type=int, default=3, help="records to show (default 3)")
    q.add_argument("--decode", action="store_true", help="also decode every image (counts unreadable ones)")
    q.set_defaults(data_func=run_inspect)

    t = dsub.add_parser(
        "make-triplets", help="synthetic CIR triplets (reference, modification, target) from image-caption pairs",
        description="For each image-caption pair, a rule-based edit of the caption (swap an attribute word, add or "
        "remove a phrase) gives a modification text and an edited caption; the target is the image whose "
        "embedding is nearest to the edited caption's (the reference excluded), kept only when the cosine is at "
        "least --min-similarity (and, with --min-margin, the target matches the edited caption better than the "
        "original one by that margin). Writes JSONL {reference, modification, target} with image paths relative to OUT "
        "(the input of `zscir train composing --cir-triplets`) and prints the kept fraction.")
    t.add_argument("source", help="image-caption pairs: a listing with a caption column, or WebDataset shards")
    t.add_argument("--out", required=True, help="the triplets JSONL to write")
    t.add_argument("--targets", default=None, metavar="SOURCE",
                   help="more candidate target images (e.g. unlabelled ones; same columns as SOURCE), besides the "
                   "pairs' own images")
    add_backbone_arg(t, "default", "backbone whose embeddings pick the targets")
    add_source_arguments(t)
    t.add_argument("--per-caption", type=int, default=2, help="edits tried per caption (default 2)")
    t.add_argument("--min-similarity", type=float, default=0.2,
                   help="keep a triplet only if cos(target image, edited caption) >= this (default 0.2; CLIP "
                   "ViT-B/32 matched pairs score about 0.3)")
    t.add_argument("--min-margin", type=float, default=float("nan"),
                   help="... and, when given, the target is closer to the edited than to the original caption by "
                   "this much (default: no such check; it barely raised precision in benchmarks/triplet_quality.py)")
    t.add_argument("--max-triplets", type=int, default=None)
    add_seed_arg(t)
    t.add_argument("--cache", default=None, help="feature-cache folder (default $ZSCIR_HOME/cache/features)")
    add_device_arg(t)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0: this process)")
    t.set_defaults(data_func=run_make_triplets)
    p.set_defaults(func=run, data_help=p.print_help)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_func", None) is None:
        args.data_help()
        return 2
    return args.data_func(args)


def run_inspect(args: argparse.Namespace) -> int:
    from zscir.data.sources import TarSource

    src = source_from_args(args.source, args)
    n = records = captions = bad = 0
    units = src.units()
    print(f"{args.source}: {src.kind} source" + (f", {len(units)} shard(s)" if len(units) > 1 else ""))
    recs = src.records(None, with_data=args.decode) if isinstance(src, TarSource) else iter(src)
    for rec in recs:
        records += 1
        captions += bool(rec.caption)
        if n < args.n:
            cap = f"  caption={rec.caption!r}" if rec.caption else ""
            print(f"  {rec.key}  {rec.location}{cap}")
            n += 1
        if args.decode:
            try:
                rec.load()
            except InputError as e:
                bad += 1
                src.failures.append({"id": rec.key, "path": rec.location, "error": str(e)})
    print(f"{records} record(s), {captions} with a caption, {len(src.failures)} problem(s)"
          + (f" ({bad} unreadable image(s))" if args.decode else ""))
    for f in src.failures[:5]:
        print(f"  ! {f['id']}: {f['error']}")
    return 0 if records else 2


def _triplets_file(path: Path) -> bool:
    """A previous triplets JSONL (may be replaced); anything else is refused."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        row = json.loads(first)
        return isinstance(row, dict) and {"reference", "modification", "target"} <= set(row)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def run_make_triplets(args: argparse.Namespace) -> int:
    from zscir.backbones import load_backbone
    from zscir.data.stream import StreamConfig
    from zscir.data.triplets import make_cir_triplets
    from zscir.train.triplets import generate_triplets
    from zscir.utils.io import check_output_file

    out = check_output_file(args.out, "--out")  # a folder, an unwritable place: refused before any work
    if out.exists() and out.stat().st_size and not _triplets_file(out):
        raise InputError(f"{out}: exists and is not a triplets file; refusing to replace it")
    if args.per_caption < 1:
        raise InputError(f"--per-caption {args.per_caption}: must be at least 1")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    if not math.isfinite(args.min_similarity):
        raise InputError("--min-similarity must be a finite number")
    margin = None if math.isnan(args.min_margin) else args.min_margin
    src = source_from_args(args.source, args)
    backbone = load_backbone(args.backbone, device=args.device)
    report = make_cir_triplets(
        backbone, src, out, lambda caps, k, seed: generate_triplets(caps, per_caption=k, seed=seed),
        per_caption=args.per_caption, min_similarity=args.min_similarity, min_margin=margin, seed=args.seed,
        max_triplets=args.max_triplets, cache=args.cache,
        targets=source_from_args(args.targets, args) if args.targets else None,
        config=StreamConfig(batch_size=args.batch_size, workers=args.workers, max_bad_fraction=args.max_bad_fraction),
    )
    print(report.summary())
    return 0
