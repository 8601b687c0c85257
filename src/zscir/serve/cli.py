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
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                   help="seconds a client may take to send a request's headers, or pause while sending a body")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s, help="seconds for a whole request body")
    p.add_argument("--no-verify", action="store_true", help="skip shard checksums at start-up (large indexes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from zscir.errors import InputError
    from zscir.serve.limits import Limits, guarded_h11_protocol

    # every argument is checked before the index and the model are loaded
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: must be between 0 and 65535")
    try:
        limits = Limits(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                        max_text_chars=args.max_text_chars, max_k=args.max_k, read_timeout_s=args.read_timeout,
                        body_timeout_s=args.body_timeout)
    except ValueError as e:
        raise InputError(str(e).replace("Limits.", "--").replace("_", "-")) from None
    from zscir.index.search import Searcher
    from zscir.serve.app import create_app
    from zscir.utils.io import return_large_allocations_promptly

    return_large_allocations_promptly()  # a burst of large uploads must not leave the service at its peak

    searcher = Searcher.open(args.index, backbone=args.backbone, device=args.device, verify=not args.no_verify)
    print(f"zscir serve: {len(searcher.index)} images ({searcher.index.kind}) on http://{args.host}:{args.port}/")
    uvicorn.run(create_app(searcher, limits), host=args.host, port=args.port, log_level="warning",
                http=guarded_h11_protocol(limits.read_timeout_s), timeout_keep_alive=5,
                h11_max_incomplete_event_size=64 * 1024)
    return 0
