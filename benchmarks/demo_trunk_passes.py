"""How many images the embedded default's image trunk computes during `zscir demo` (and the seconds spent there).

The shared feature cache exists so that the same frozen-trunk pass is never computed twice (pre-training ->
stage 1, pic2word -> ISA); this counts what a demo run really computes. Runs `run_demo` in this process on a
fresh $ZSCIR_HOME (default: the tiny world), wrapping `DefaultBackbone.image_tokens`; blank one-image shape
probes are not counted. Writes JSON with the count, trunk seconds, wall and CPU seconds.

    .venv/bin/python benchmarks/demo_trunk_passes.py --size tiny --methods image,text,sum,slerp,pic2word,...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

DEFAULT_METHODS = ("image,text,sum,slerp,pic2word,two-stage/mapping-only,two-stage,pic2word+rtd,two-stage+rtd,"
                   "isa,isa/symmetric")  # slerp+tat: TAT's batch of 128 does not fit the tiny world


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--out", default="benchmarks/results/demo_trunk_passes.json")
    args = ap.parse_args(argv)
    home = tempfile.mkdtemp(prefix="zscir-trunk-passes-")
    os.environ["ZSCIR_HOME"] = home

    from zscir.backbones.default import DefaultBackbone
    from zscir.experiments.demo import DemoConfig, run_demo

    stats = {"trunk_images": 0, "trunk_calls": 0, "trunk_s": 0.0}
    real = DefaultBackbone.image_tokens

    def counting(self, pixels):
        t = time.perf_counter()
        out = real(self, pixels)
        if pixels.abs().sum() > 0:  # not a shape probe on a blank image
            stats["trunk_images"] += len(pixels)
            stats["trunk_calls"] += 1
        stats["trunk_s"] += time.perf_counter() - t
        return out

    DefaultBackbone.image_tokens = counting  # type: ignore[method-assign]
    t0 = time.time()
    run_demo(DemoConfig(out=str(Path(home) / "demo"), quick=True, size=args.size, methods=args.methods, examples=1))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    doc = {"size": args.size, "methods": args.methods.split(","), **stats, "trunk_s": round(stats["trunk_s"], 1),
           "wall_s": round(time.time() - t0, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
