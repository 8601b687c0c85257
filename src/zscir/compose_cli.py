"""`zscir compose`: one composed query, from the command line, as a vector.

    zscir compose --image ref.jpg --text "make it red" --method slerp --alpha 0.8 --out query.npy
    zscir compose --image ref.jpg --text "make it red" --checkpoint runs/p2w     # a trained method

Prints the embedding's dimension and norm (or the vector as JSON with --json). Useful to query any vector
store; for search over a gallery see `zscir index` / `zscir search`."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from zscir.backbones import load_backbone
from zscir.methods import build_method
from zscir.methods.build import precheck
from zscir.utils.cli import add_backbone_arg, add_device_arg
from zscir.utils.io import atomic_path, check_output_file, check_text, load_image


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compose",
        help="compose one query (reference image + text) into an embedding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_backbone_arg(p)
    p.add_argument("--method", default=None,
                   help="composition method (default: the checkpoint's method, else slerp)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="checkpoint folder made by `zscir train` (a trained method needs one)")
    p.add_argument("--image", help="reference image (not needed by the text-only method)")
    p.add_argument("--text", required=True, help="what should differ, e.g. 'make it red'")
    p.add_argument("--alpha", type=float, default=None, help="Slerp weight of the text in [0, 1] (default 0.8)")
    p.add_argument("--out", help="write the vector as .npy here (atomically)")
    p.add_argument("--json", action="store_true", help="print the vector as JSON")
    add_device_arg(p)

    def run(args: argparse.Namespace) -> int:
        text = check_text(args.text, "--text")
        if args.out:
            check_output_file(args.out)  # before the model is loaded, not after the work
        name = precheck(args.method, args.checkpoint, alpha=args.alpha)  # refuse before loading a model
        image = load_image(args.image) if args.image else None
        backbone = load_backbone(args.backbone, args.device)
        method = build_method(name, backbone, args.checkpoint, alpha=args.alpha)
        args.method = method.name
        with torch.inference_mode():
            pixels = backbone.preprocess(image) if image is not None else None
            q = method.compose(pixels, [text])[0].float().cpu().numpy()
        if args.out:
            with atomic_path(args.out) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, q, allow_pickle=False)
        if args.json:
            json.dump({"method": args.method, "backbone": backbone.fingerprint(), "vector": q.tolist()}, sys.stdout)
            print()
        else:
            print(f"{args.method} query: dim {q.shape[0]}, norm {np.linalg.norm(q):.4f}" + (f" -> {args.out}" if args.out else ""))
        return 0

    p.set_defaults(func=run)
