"""Images per second of the embedded default backbone: the full pipeline (decode PNG, preprocess, embed)
against the bare model forward on the same, already-decoded batches.

    python benchmarks/embed_throughput.py [--images 512] [--batch-size 64] [--out benchmarks/results]

Writes embed_throughput.json and prints a table. The gap between the two rows is the cost of decoding and
preprocessing (done in a thread pool one batch ahead of the model)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zscir.backbones.default import DefaultBackbone
from zscir.data.stream import iter_pixel_batches
from zscir.eval.engine import embed_images
from zscir.utils.runtime import configure_threads


def make_images(folder: Path, n: int, size: int = 128, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        p = folder / f"{i:06d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    configure_threads()
    model = DefaultBackbone().to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        cfg = model.preprocess_config
        # warm-up (first calls allocate)
        embed_images(model.encode_image, paths[: args.batch_size], cfg, args.device, args.batch_size, progress=False)
        full = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            embed_images(model.encode_image, paths, cfg, args.device, args.batch_size, progress=False)
            full.append(args.images / (time.perf_counter() - t))
        batches = [b.to(args.device) for b in iter_pixel_batches(paths, cfg, args.batch_size)]
        bare = []
        with torch.inference_mode():
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for b in batches:
                    model.encode_image(b)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                bare.append(args.images / (time.perf_counter() - t))
    result = {
        "benchmark": "embed_throughput",
        "backbone": "default (EfficientNet-Lite0 96px + attention head)",
        "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats, "device": args.device,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "torch": torch.__version__, "machine": platform.machine(),
        "full_pipeline_img_s": {"median": float(np.median(full)), "all": full},
        "bare_forward_img_s": {"median": float(np.median(bare)), "all": bare},
    }
    result["pipeline_overhead_pct"] = 100 * (1 - result["full_pipeline_img_s"]["median"] / result["bare_forward_img_s"]["median"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'stage':<40}{'images/s (median of ' + str(args.repeats) + ')':>28}")
    print(f"{'full pipeline (decode+preprocess+embed)':<40}{result['full_pipeline_img_s']['median']:>28.1f}")
    print(f"{'bare model forward (same batches)':<40}{result['bare_forward_img_s']['median']:>28.1f}")
    print(f"pipeline overhead: {result['pipeline_overhead_pct']:.1f}%  ->  {out / 'embed_throughput.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
