"""`zscir serve INDEX`: the HTTP service and web page.

With `--workers N` (N > 1) uvicorn runs N processes, each built by `app_from_env` from the settings this
command puts in the environment; the index's shards and faiss file are memory-mapped, so the workers share
one copy of the gallery in the page cache (each holds its own model)."""

from __future__ import annotations

import argparse
import gc
import json
import os

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
    p.add_argument("--backbone", default=None, help="override the index's backbone spec (must match its fingerprint)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--workers", type=int, default=1,
                   help="service processes sharing the port and one memory-mapped index (each with its own model)")
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
    p.add_argument("--no-verify", action="store_true", help="skip shard checksums at start-up (large indexes)")
    add_search_param_flags(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> dict:
    return {
        "index": str(args.index), "backbone": args.backbone, "device": args.device, "verify": not args.no_verify,
        "workers": args.workers,
        "limits": {"max_upload_bytes": args.max_upload_bytes, "max_pixels": args.max_pixels,
                   "max_text_chars": args.max_text_chars, "max_k": args.max_k},
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
                             params=SearchParams(**cfg["params"]))
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

    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    cfg = _config(args)
    searcher, app = build_app(cfg)  # also checks index, backbone and settings before any worker starts
    mode = "batched" if cfg["batching"]["enabled"] else "unbatched"
    print(f"zscir serve: {len(searcher.index)} images ({searcher.index.kind}, search "
          f"{searcher.index.search_params or '-'}{f', rerank x{searcher.index.rerank}' if searcher.index.rerank else ''})"
          f" on http://{args.host}:{args.port}/ ({args.workers} worker(s), {mode}, {searcher.backbone.device})",
          flush=True)
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    del searcher, app
    _release_memory()  # the supervisor only forwards signals: give the validation model's memory back
    os.environ[ENV] = json.dumps(cfg)
    uvicorn.run("zscir.serve.cli:app_from_env", factory=True, workers=args.workers, host=args.host, port=args.port,
                log_level="warning")
    return 0
