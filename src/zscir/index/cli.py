"""`zscir index SOURCE --out INDEX`: embed a gallery into a persistent, resumable index."""

from __future__ import annotations

import argparse

from zscir.data.cli import add_source_arguments
from zscir.index.kinds import KINDS
from zscir.index.runner import DEFAULT_SHARD_SIZE
from zscir.utils.cli import add_backbone_arg, add_device_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="embed a folder / glob / CSV / JSONL / WebDataset shards of images into a searchable index",
        description="Embed images into INDEX (float16 shards + manifest + faiss index). Re-running the same "
        "command after an interruption resumes it; --add appends the images of a new SOURCE.",
    )
    p.add_argument("source", nargs="?", default=None,
                   help="a folder (recursive), a glob pattern, a .csv/.tsv/.jsonl listing (image column "
                   "'path'/'image'/'filepath'/... or --image-column; optional id and caption columns; other columns "
                   "become metadata), or WebDataset tar shards: a .tar, a folder of tars, or a brace pattern such "
                   "as 'shards/{00000..00331}.tar' (quote it); see docs/data.md")
    add_source_arguments(p, failures=False)  # --image-column, --caption-column, --id-column
    p.add_argument("--embeddings", default=None, metavar="DIR",
                   help="index vectors made elsewhere instead of images: clip-retrieval output (img_emb/img_emb_N.npy "
                   "+ metadata/metadata_N.parquet) or .npy + .jsonl pairs; --backbone must name the model that "
                   "made them (its dimension is checked, the manifest records it)")
    p.add_argument("--out", required=True, help="index folder")
    add_backbone_arg(p, "", "backbone (default: 'default', or the index's own on resume/--add)")
    p.add_argument("--add", action="store_true", help="append to a complete index")
    p.add_argument("--kind", default="auto", help=f"index kind: {', '.join(KINDS)} or a faiss factory string")
    p.add_argument("--method", default=None, help="composition method whose gallery encoder embeds the images "
                   "(default: the checkpoint's method, else slerp)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint folder of a trained method (slerp+tat embeds the gallery with its tuned tower)")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="decoding threads (per actor with --engine ray)")
    add_device_arg(p)
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--ray-actors", type=int, default=2, help="actor pool size (one model each)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="tune the search parameters to reach this recall@k against exact search, measured on composed "
                   "queries drawn from the gallery (recorded in the manifest with the recall reached); auto picks "
                   "the kind that reaches it. 0: keep the kind's fixed defaults")
    p.add_argument("--recall-k", type=int, default=50, help="k of the recall@k that --target-recall measures")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zscir.errors import InputError
    from zscir.index.runner import build_index

    if (args.source is None) == (args.embeddings is None):
        raise InputError("give either a SOURCE of images or --embeddings DIR (not both, not neither)")
    if args.embeddings and not args.backbone and not _exists(args.out):
        raise InputError("--embeddings needs --backbone naming the model that made the vectors")
    man = build_index(
        args.source or args.embeddings, args.out, args.backbone or ("" if _exists(args.out) else "default"), add=args.add,
        kind=args.kind, method=args.method, checkpoints=args.checkpoint, engine=args.engine, shard_size=args.shard_size,
        batch_size=args.batch_size, workers=args.workers, device=args.device, ray_address=args.ray_address,
        ray_actors=args.ray_actors, progress=not args.no_progress, image_column=args.image_column,
        caption_column=args.caption_column, id_column=args.id_column, target_recall=args.target_recall,
        recall_k=args.recall_k, embeddings=bool(args.embeddings),
    )
    failed = sum(1 for _ in open(f"{args.out}/failures.jsonl", encoding="utf-8"))
    fa = man.faiss
    assert fa is not None  # build_index always writes one
    t = fa.tuning
    tuned = "; exact search" if t and not t["queries"] else (f"; search {fa.search or '-'}{f', rerank x{fa.rerank}' if fa.rerank else ''}: "
             f"recall@{t['k']} {t['recall']:.3f} (target {t['target_recall']}"
             f"{'' if t['reached'] else ', NOT reached'})") if t else ""
    print(f"{args.out}: {man.count} images, {man.dim}-d, {fa.factory}{tuned}; {failed} unreadable "
          f"(listed in {args.out}/failures.jsonl)" if failed else f"{args.out}: {man.count} images, {man.dim}-d, "
          f"{fa.factory}{tuned}")
    return 0


def _exists(out: str) -> bool:
    from pathlib import Path

    return (Path(out) / "manifest.json").is_file()
