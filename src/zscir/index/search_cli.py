"""`zscir search INDEX --image REF --text "..."`: top-k of an index for a composed query
(or `--query-vector q.npy`: a query composed elsewhere, e.g. by `zscir compose --out`)."""

from __future__ import annotations

import argparse
import json

from zscir.utils.cli import add_backbone_arg


def add_search_param_flags(p: argparse.ArgumentParser) -> None:
    """--ef-search / --nprobe / --rerank: override the search parameters the index's manifest records."""
    g = p.add_argument_group("search parameters (default: the ones `zscir index --target-recall` recorded)")
    g.add_argument("--ef-search", type=int, default=None, help="HNSW: candidate list size (more: better recall, slower)")
    g.add_argument("--nprobe", type=int, default=None, help="IVF: inverted lists visited per query")
    g.add_argument("--rerank", type=int, default=None,
                   help="approximate kinds: re-score rerank*k candidates exactly from the shards (0: off)")


def search_params(args: argparse.Namespace):
    from zscir.index.kinds import SearchParams

    return SearchParams(ef_search=args.ef_search, nprobe=args.nprobe, rerank=args.rerank)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index with reference image(s) + a modification text")
    p.add_argument("index", help="index folder made by `zscir index`")
    p.add_argument("--image", action="append", default=[], help="reference image file (repeat for several)")
    p.add_argument("--gallery-id", action="append", default=[],
                   help="a gallery image (by id) as reference: its stored embedding is used, and it is not listed")
    p.add_argument("--text", default=None, help="what should differ from the reference")
    p.add_argument("--query-vector", default=None, metavar="Q.npy",
                   help="search with this query embedding (.npy, shape (D,) or (1, D)) instead of composing one; "
                   "no model is loaded")
    p.add_argument("--method", default=None, help="composition method (default: the checkpoint's method, else slerp)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint folder of a trained method (made by `zscir train`)")
    p.add_argument("--alpha", type=float, default=None, help="method weight (slerp: 0 = image, 1 = text)")
    p.add_argument("-k", type=int, default=10)
    add_backbone_arg(p, None, "override the index's backbone (must match its fingerprint)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-verify", action="store_true", help="skip shard checksums (large indexes)")
    add_search_param_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zscir.errors import InputError
    from zscir.methods import check_settings, get_method_class
    from zscir.methods.build import precheck
    from zscir.utils.io import check_utf8, load_image

    if args.text is not None:
        check_utf8(args.text, "--text")
    if args.k < 1:
        raise InputError(f"-k {args.k}: must be at least 1")
    params = search_params(args)
    if args.query_vector:
        if args.image or args.gallery_id or args.text:
            raise InputError("--query-vector is a composed query already: do not pass --image, --gallery-id or --text")
        hits = _search_vector(args, params)
    else:
        from zscir.index.search import Searcher

        # refusals before any model loads; the checkpoints are what is loaded, so a training-free --method may
        # come with them (as on a server hosting both)
        if args.method and not get_method_class(args.method).needs_checkpoint():
            check_settings(get_method_class(args.method), {"alpha": args.alpha})
        else:
            args.method = precheck(args.method, args.checkpoint, alpha=args.alpha)
        s = Searcher.open(args.index, backbone=args.backbone, verify=not args.no_verify, checkpoints=args.checkpoint,
                          params=params)
        images = [load_image(p) for p in args.image]
        # gallery references use their stored embedding (methods that need pixels read the file or tar member)
        hits = s.search(images, args.text, args.method, args.alpha, args.k, refs=args.gallery_id)
    if args.json:
        doc = {"index": args.index, "k": args.k, "results": [h.to_json() for h in hits]}
        if args.query_vector:
            doc["query_vector"] = args.query_vector
        else:
            doc.update({"method": args.method, "alpha": args.alpha})
        print(json.dumps(doc, indent=1))
    else:
        print(f"{'rank':>4}  {'score':>7}  path")
        for h in hits:
            print(f"{h.rank:>4}  {h.score:7.4f}  {h.path}")
    return 0


def _search_vector(args: argparse.Namespace, params) -> list:
    import numpy as np

    from zscir.errors import InputError
    from zscir.index.store import GalleryIndex

    if args.k < 1:
        raise InputError(f"k={args.k}: must be at least 1")
    index = GalleryIndex(args.index, verify=not args.no_verify, params=params)
    try:
        q = np.load(args.query_vector, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{args.query_vector}: query vector file not found") from None
    except (ValueError, OSError) as e:
        raise InputError(f"{args.query_vector}: not a .npy array ({e})") from None
    q = index.check_query_vectors(q)
    if len(q) != 1:
        raise InputError(f"{args.query_vector}: holds {len(q)} query vectors; pass one (shape (D,) or (1, D))")
    scores, pos = index.search(q, args.k)
    return index.hits(scores[0], pos[0])
