"""`zscir serve INDEX`: the HTTP service and web page."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from zscir.serve.limits import Limits

    d = Limits()
    p = sub.add_parser("serve", help="serve an index over HTTP (web page at /, API docs at /docs)")
    p.add_argument("index", help="index folder made by `zscir index`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backbone", default=None, help="override the index's backbone spec (must match its fingerprint)")
    p.add_argument("--device", default=None)
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint folder of a trained method to host (repeat for several; GET /methods lists them)")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--no-verify", action="store_true", help="skip shard checksums at start-up (large indexes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from zscir.index.search import Searcher
    from zscir.serve.app import create_app
    from zscir.serve.limits import Limits

    searcher = Searcher.open(args.index, backbone=args.backbone, device=args.device, verify=not args.no_verify,
                             checkpoints=args.checkpoint)
    limits = Limits(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                    max_text_chars=args.max_text_chars, max_k=args.max_k)
    names = ", ".join(m["name"] for m in searcher.available())
    print(f"zscir serve: {len(searcher.index)} images ({searcher.index.kind}), methods {names}, on "
          f"http://{args.host}:{args.port}/")
    uvicorn.run(create_app(searcher, limits), host=args.host, port=args.port, log_level="warning")
    return 0
