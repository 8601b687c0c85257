"""`zscir index SOURCE --out INDEX`: embed a gallery into a persistent, resumable index."""

from __future__ import annotations

import argparse

from zscir.data.cli import add_source_arguments
from zscir.index.kinds import KINDS
from zscir.index.runner import DEFAULT_SHARD_SIZE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="embed a folder / glob / CSV / JSONL / WebDataset shards of images into a searchable index",
        description="Embed images into INDEX (float16 shards + manifest + faiss index). Re-running the same "
        "command after an interruption resumes it; --add appends the images of a new SOURCE.",
    )
    p.add_argument("source", help="a folder (recursive), a glob pattern, a .csv/.tsv/.jsonl listing (image column "
                   "'path'/'image'/'filepath'/... or --image-column; optional id and caption columns; other columns "
                   "become metadata), or WebDataset tar shards: a .tar, a folder of tars, or a brace pattern such "
                   "as 'shards/{00000..00331}.tar' (quote it); see docs/data.md")
    add_source_arguments(p, failures=False)  # --image-column, --caption-column, --id-column
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--backbone", default="", help="backbone spec (default: 'default', or the index's own on resume/--add)")
    p.add_argument("--add", action="store_true", help="append to a complete index")
    p.add_argument("--kind", default="auto", help=f"index kind: {', '.join(KINDS)} or a faiss factory string")
    p.add_argument("--method", default="slerp", help="composition method whose gallery encoder embeds the images")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="decoding threads (per actor with --engine ray)")
    p.add_argument("--device", default=None)
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--ray-actors", type=int, default=2, help="actor pool size (one model each)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zscir.index.runner import build_index

    man = build_index(
        args.source, args.out, args.backbone or ("" if _exists(args.out) else "default"), add=args.add,
        kind=args.kind, method=args.method, engine=args.engine, shard_size=args.shard_size,
        batch_size=args.batch_size, workers=args.workers, device=args.device, ray_address=args.ray_address,
        ray_actors=args.ray_actors, progress=not args.no_progress, image_column=args.image_column,
        caption_column=args.caption_column, id_column=args.id_column,
    )
    failed = sum(1 for _ in open(f"{args.out}/failures.jsonl", encoding="utf-8"))
    print(f"{args.out}: {man.count} images, {man.dim}-d, {man.faiss.factory}; {failed} unreadable "
          f"(listed in {args.out}/failures.jsonl)" if failed else f"{args.out}: {man.count} images, {man.dim}-d, "
          f"{man.faiss.factory}")
    return 0


def _exists(out: str) -> bool:
    from pathlib import Path

    return (Path(out) / "manifest.json").is_file()
