"""`zscir world`: generate the synthetic CIR world."""

from __future__ import annotations

import argparse
from pathlib import Path

from zscir.errors import InputError
from zscir.utils.cli import add_seed_arg


def _is_world(path: Path) -> bool:
    return (path / "world.json").is_file()


def _run(args: argparse.Namespace) -> int:
    from zscir.utils.io import check_output_dir
    from zscir.world.generate import generate_world

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    check_output_dir(args.out, _is_world, "a zscir world")  # before any rendering: never replace someone's folder
    out = generate_world(Path(args.out), seed=args.seed, size=args.size, workers=args.workers)
    print(out)
    return 0


def register(subparsers) -> None:
    from zscir.world.generate import SIZES

    sizes = ", ".join(f"{k}: {v['pairs']} pairs / {v['cirr_queries']} CIRR-like / {v['circo_queries']} CIRCO-like queries"
                      for k, v in SIZES.items())
    p = subparsers.add_parser(
        "world", help="generate the synthetic CIR world (training data + two evaluation protocols)",
        description="Generate a deterministic synthetic composed-image-retrieval world: scenes of 1-3 shapes on a "
        "3x3 grid, captions, text triplets, CIR training triplets and CIRR-like/CIRCO-like evaluation sets. "
        f"Same seed -> identical files. Sizes: {sizes}.")
    p.add_argument("--out", required=True,
                   help="output folder (an existing world there is replaced atomically; any other non-empty folder "
                        "is refused)")
    add_seed_arg(p)
    p.add_argument("--size", choices=list(SIZES), default="quick", help="how much data (default quick)")
    p.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    p.set_defaults(func=_run)
