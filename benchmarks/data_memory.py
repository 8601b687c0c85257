"""Peak memory of the data layer when the data set grows: streaming (decode + preprocess in worker processes)
and building the frozen-feature cache, over N and 4N images, for WebDataset shards and a folder.

    python benchmarks/data_memory.py [--images 500] [--factor 4] [--workers 2] [--out benchmarks/results]

Each measurement runs in a fresh subprocess; it reports the peak RSS (ru_maxrss) of the process and the
largest of its DataLoader workers. "Flat" means the 4N row is within a few MB of the N row: nothing in the
pipeline grows with the data set. For contrast, `materialised` keeps every preprocessed image (what the
trainers did before the data layer: all features in RAM before step 1) and grows linearly.
Writes data_memory.json and data_memory.md."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("stream", "cache", "materialised")


def make_data(root: Path, n: int, size: int = 256, per_shard: int = 250, seed: int = 0) -> None:
    """n random-texture JPEGs, both as img2dataset shards (root/shards) and as a folder (root/folder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    (root / "folder").mkdir()
    tf = None
    for i in range(n):
        if i % per_shard == 0:
            if tf is not None:
                tf.close()
            tf = tarfile.open(root / "shards" / f"{i // per_shard:05d}.tar", "w")
        small = (rng.random((size // 16, size // 16, 3)) * 255).astype(np.uint8)
        im = Image.fromarray(small).resize((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        (root / "folder" / f"{i:07d}.jpg").write_bytes(data)
        for name, payload in ((f"{i:09d}.jpg", data), (f"{i:09d}.txt", f"a picture number {i}".encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload))
    if tf is not None:
        tf.close()


class PoolBackbone:
    """A stand-in frozen tower for the cache measurement: 8x8 average pooling of the pixels (192 floats)."""

    def __init__(self) -> None:
        import torch

        from zscir.backbones.preprocess import PreprocessConfig

        self.preprocess_config = PreprocessConfig(size=224)
        self.device = torch.device("cpu")

    def fingerprint(self) -> str:
        return "bench-pool8"

    def image_tokens(self, pixels):
        import torch.nn.functional as F

        return F.adaptive_avg_pool2d(pixels, 8).flatten(2).transpose(1, 2)  # (B, 64, 3)


def measure(source: str, mode: str, workers: int, batch_size: int, cache: str) -> dict:
    """Runs inside the subprocess."""
    import torch

    from zscir.backbones.preprocess import PreprocessConfig
    from zscir.data import StreamConfig, image_features, open_source, stream

    torch.set_num_threads(1)
    cfg = StreamConfig(batch_size=batch_size, workers=workers, max_bad_fraction=1.0)
    src = open_source(source)
    t0 = time.perf_counter()
    n = 0
    kept = []
    if mode == "cache":
        feats = image_features(PoolBackbone(), src, "image_tokens", cache=cache, config=cfg)
        n = len(feats)
    else:
        for b in stream(src, PreprocessConfig(size=224), cfg):
            n += len(b)
            if mode == "materialised":
                kept.append(b.pixels.half())
            else:
                float(b.pixels.mean())  # consume
    wall = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"items": n, "wall_s": round(wall, 2), "items_per_s": round(n / wall, 1),
            "peak_rss_mb": round(self_kb / 1024, 1), "peak_worker_rss_mb": round(child_kb / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        source, mode, cache = args._child
        print(json.dumps(measure(source, mode, args.workers, args.batch_size, cache)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.images, args.images * args.factor):
            root = Path(tmp) / f"n{n}"
            t = time.perf_counter()
            make_data(root, n)
            print(f"made {n} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            for kind in ("shards", "folder"):
                for mode in args.modes.split(","):
                    if mode == "materialised" and kind == "folder":
                        continue
                    r = subprocess.run([sys.executable, __file__, "--workers", str(args.workers), "--batch-size",
                                        str(args.batch_size), "--_child", str(root / kind), mode,
                                        str(Path(tmp) / f"cache-{n}-{kind}")],
                                       capture_output=True, text=True, check=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
                    row = {"images": n, "source": "webdataset" if kind == "shards" else "folder", "mode": mode,
                           **json.loads(r.stdout.strip().splitlines()[-1])}
                    rows.append(row)
                    print(row, file=sys.stderr)
    doc = {"benchmark": "data_memory", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "settings": {"workers": args.workers, "batch_size": args.batch_size, "image_px": 256,
                        "preprocess_px": 224}, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_memory.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["| images | source | mode | peak RSS MB | peak worker RSS MB | items/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['images']:,} | {r['source']} | {r['mode']} | {r['peak_rss_mb']} | "
                     f"{r['peak_worker_rss_mb']} | {r['items_per_s']} |")
    table = "\n".join(lines) + "\n"
    (out / "data_memory.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
