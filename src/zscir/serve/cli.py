"""`zscir serve INDEX`: the HTTP service and web page.

With `--workers N` (N > 1) uvicorn runs N processes, each built by `app_from_env` from the settings this
command puts in the environment; each worker reads its own copy of the index into memory (never
memory-mapped: a file damaged on disk cannot crash a running server, docs/security.md) and holds its own model."""

from __future__ import annotations

import argparse
import gc
import json
import os

from zscir.utils.cli import add_backbone_arg, add_device_arg

ENV = "ZSCIR_SERVE_CONFIG"


def register(sub: argparse._SubParsersAction) -> None:
    from zscir.index.search_cli import add_search_param_flags
    from zscir.serve.batching import BatchingConfig
    from zscir.serve.limits import Limits

    d, b = Limits(), BatchingConfig()
    p = sub.add_parser("serve", help="serve an index over HTTP (web page at /, API docs at /docs)")
    p.add_argument("index", help="index folder made by `zscir index`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_backbone_arg(p, None, "override the index's backbone (must match its fingerprint)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint folder of a trained method to host (repeat for several; GET /methods lists them)")
    add_device_arg(p)
    p.add_argument("--workers", type=int, default=1,
                   help="service processes sharing the port (each with its own model and copy of the index)")
    p.add_argument("--no-batching", action="store_true",
                   help="serve each request on its own (no micro-batching, no text cache): the baseline")
    p.add_argument("--batch-wait-ms", type=float, default=b.max_wait_ms,
                   help="how long a request waits for others to share its model call")
    p.add_argument("--max-batch", type=int, default=b.max_batch, help="requests per micro-batch")
    p.add_argument("--text-cache", type=int, default=b.text_cache_size,
                   help="text embeddings cached per method (LRU; 0: off)")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                   help="seconds a client may take to send a request's headers, or pause while sending a body")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s, help="seconds for a whole request body")
    p.add_argument("--no-verify", action="store_true", help="skip shard checksums at start-up (large indexes)")
    add_search_param_flags(p)
    p.set_defaults(func=run)


def _limits(args: argparse.Namespace) -> dict:
    return {"max_upload_bytes": args.max_upload_bytes, "max_pixels": args.max_pixels,
            "max_text_chars": args.max_text_chars, "max_k": args.max_k, "read_timeout_s": args.read_timeout,
            "body_timeout_s": args.body_timeout}


def _config(args: argparse.Namespace) -> dict:
    return {
        "index": str(args.index), "backbone": args.backbone, "device": args.device, "verify": not args.no_verify,
        "workers": args.workers,
        "checkpoints": [str(c) for c in args.checkpoint],
        "limits": _limits(args),
        "params": {"ef_search": args.ef_search, "nprobe": args.nprobe, "rerank": args.rerank},
        "batching": {"enabled": not args.no_batching, "max_wait_ms": args.batch_wait_ms, "max_batch": args.max_batch,
                     "text_cache_size": args.text_cache},
    }


def build_app(cfg: dict):
    """The app for a config made by `_config` (one per process)."""
    import torch

    from zscir.errors import InputError
    from zscir.index.kinds import SearchParams
    from zscir.index.search import Searcher
    from zscir.serve.app import create_app
    from zscir.serve.batching import BatchingConfig
    from zscir.serve.limits import Limits
    from zscir.utils.runtime import pick_device

    workers = max(1, int(cfg.get("workers", 1)))
    if workers > 1:  # N processes on C cores: C/N threads each, not C each
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        batching = BatchingConfig(**cfg["batching"])
    except ValueError as e:
        raise InputError(str(e)) from None
    device = str(pick_device(cfg.get("device")))
    searcher = Searcher.open(cfg["index"], backbone=cfg.get("backbone"), device=device, verify=cfg.get("verify", True),
                             params=SearchParams(**cfg["params"]), checkpoints=cfg.get("checkpoints", []))
    app = create_app(searcher, Limits(**cfg["limits"]), batching)
    # The gallery's item records and the model are long-lived: keep them out of the garbage collector's
    # full passes, which otherwise stall every request now and then (one dict per gallery item).
    gc.collect()
    gc.freeze()
    return searcher, app


def app_from_env():
    """uvicorn app factory for `--workers N`: the settings come from $ZSCIR_SERVE_CONFIG."""
    return build_app(json.loads(os.environ[ENV]))[1]


def _release_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, just not returned
        pass


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from zscir.errors import InputError
    from zscir.serve.limits import Limits, guarded_h11_protocol

    # every argument is checked before the index and the model are loaded
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: must be between 0 and 65535")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    try:
        limits = Limits(**_limits(args))
    except ValueError as e:
        raise InputError(str(e).replace("Limits.", "--").replace("_", "-")) from None
    from zscir.utils.io import return_large_allocations_promptly

    return_large_allocations_promptly()  # a burst of large uploads must not leave the service at its peak
    cfg = _config(args)
    searcher, app = build_app(cfg)  # also checks index, backbone, checkpoints and settings before any worker starts
    mode = "batched" if cfg["batching"]["enabled"] else "unbatched"
    names = ", ".join(m["name"] for m in searcher.available())
    print(f"zscir serve: {len(searcher.index)} images ({searcher.index.kind}, search "
          f"{searcher.index.search_params or '-'}{f', rerank x{searcher.index.rerank}' if searcher.index.rerank else ''})"
          f", methods {names}, on http://{args.host}:{args.port}/ ({args.workers} worker(s), {mode}, "
          f"{searcher.backbone.device})", flush=True)
    # slow clients: a deadline for each request's headers (the body has its own, in BodyLimitMiddleware)
    server = dict(host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5,
                  h11_max_incomplete_event_size=64 * 1024)
    if args.workers == 1:
        uvicorn.run(app, http=guarded_h11_protocol(limits.read_timeout_s), **server)
        return 0
    del searcher, app
    _release_memory()  # the supervisor only forwards signals: give the validation model's memory back
    from zscir.serve import h11_guard

    os.environ[ENV] = json.dumps(cfg)
    os.environ[h11_guard.ENV] = str(limits.read_timeout_s)
    uvicorn.run("zscir.serve.cli:app_from_env", factory=True, workers=args.workers, http=h11_guard.PATH, **server)
    return 0
