"""`zscir search INDEX --image REF --text "..."`: top-k of an index for a composed query."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index with reference image(s) + a modification text")
    p.add_argument("index", help="index folder made by `zscir index`")
    p.add_argument("--image", action="append", default=[], help="reference image file (repeat for several)")
    p.add_argument("--gallery-id", action="append", default=[], help="a gallery image (by id) as reference")
    p.add_argument("--text", default=None, help="what should differ from the reference")
    p.add_argument("--method", default="slerp")
    p.add_argument("--alpha", type=float, default=None, help="method weight (slerp: 0 = image, 1 = text)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--backbone", default=None, help="override the index's backbone spec (must match its fingerprint)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-verify", action="store_true", help="skip shard checksums (large indexes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zscir.data.sources import load_location
    from zscir.errors import InputError
    from zscir.index.search import Searcher
    from zscir.utils.io import check_utf8, load_image

    if args.text is not None:
        check_utf8(args.text, "--text")
    if args.k < 1:
        raise InputError(f"-k {args.k}: must be at least 1")
    s = Searcher.open(args.index, backbone=args.backbone, verify=not args.no_verify)
    images = [load_image(p) for p in args.image]
    # a gallery item's location is a file or an image inside a WebDataset tar (`<tar>#<member>`)
    images += [load_location(s.index.items[s.index.lookup(i)]["path"]) for i in args.gallery_id]
    hits = s.search(images, args.text, args.method, args.alpha, args.k, exclude_ids=args.gallery_id)
    if args.json:
        print(json.dumps({"index": args.index, "method": args.method, "alpha": args.alpha, "k": args.k,
                          "results": [h.to_json() for h in hits]}, indent=1))
    else:
        print(f"{'rank':>4}  {'score':>7}  path")
        for h in hits:
            print(f"{h.rank:>4}  {h.score:7.4f}  {h.path}")
    return 0
