"""Training throughput of every trainer, and whether its data pipeline keeps the model fed.

    python benchmarks/train_throughput.py [--steps 6] [--batch-size 16] [--out benchmarks/results]

On a tiny synthetic world turned into a user's data (a folder of images, a JSONL of image-caption pairs,
WebDataset shards, CIR triplets, text triplets), every trainer runs from the CLI (`zscir pretrain`, then
`zscir train mapping|pic2word|composing|rtd|isa|tat` on the embedded default backbone just pre-trained), on
the CPU in fp32, in the same run on the CPU in bf16 when the CPU computes bf16 natively (AVX512-BF16 / AMX:
what `--precision auto` and the demo's settings pick there), and, when a GPU is present, on CUDA in bf16.
For each run the engine's `fit` is wrapped to
measure, on the trainer's own first batch:

- bare forward: the loss's forward pass, no gradient (items/s);
- step in memory: forward + backward on that same batch, again and again (the model's speed, no data work);
- step (fed): the real training loop over fresh batches, optimiser included (FitResult.items_per_s);
- fed ratio = step (fed) / step in memory: >= 0.9 means the data pipeline keeps the model fed.

Trainers read frozen features from the data layer's memory-mapped cache, so their per-step data work is
reading rows; the expensive part of their data pipeline is the one streaming pass that fills the cache. It is
measured once: `image_features` (decode + preprocess in DataLoader workers + the frozen image trunk) against
the trunk's bare forward on the same, already-decoded pixels.

Writes train_throughput.json and train_throughput.md (a table, plus the CPU's bf16 / fp32 speed ratio of each
trainer's step when both ran) into --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TRAINERS = ("pretrain", "mapping", "pic2word", "composing", "rtd", "isa", "tat")
TRAINER_MODULES = ("zscir.train.pretrain", "zscir.train.pseudo_token", "zscir.train.composing", "zscir.train.rtd",
                   "zscir.train.isa", "zscir.train.tat")


def make_data(root: Path) -> dict[str, str]:
    from zscir.world import generate_world, load_world

    world = load_world(generate_world(root / "world", seed=0, size="tiny", progress=False))
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for p in world.pairs:
            f.write(json.dumps({"image": f"world/images/{p['image']}.png", "caption": p["caption"]}) + "\n")
    (root / "shards").mkdir()
    with tarfile.open(root / "shards" / "00000.tar", "w") as tar:
        for k, p in enumerate(world.pairs):
            for name, data in ((f"{k:06d}.png", world.image_path(p["image"]).read_bytes()),
                               (f"{k:06d}.txt", p["caption"].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open(root / "cir.jsonl", "w", encoding="utf-8") as f:
        for t in world.cir_train:
            f.write(json.dumps({"reference": f"world/images/{t['reference']}.png", "modification": t["modification"],
                                "target": f"world/images/{t['target']}.png"}) + "\n")
    with open(root / "text.jsonl", "w", encoding="utf-8") as f:
        for t in world.text_triplets:
            f.write(json.dumps({k: t[k] for k in ("reference", "modification", "target")}) + "\n")
    return {"world": str(root / "world"), "images": str(root / "world" / "images"), "pairs": str(root / "pairs.jsonl"),
            "shards": str(root / "shards" / "00000.tar"), "cir": str(root / "cir.jsonl"), "text": str(root / "text.jsonl")}


def commands(d: dict[str, str], out: Path, steps: int, bs: int, device: str, precision: str) -> dict[str, list[str]]:
    bb = ["--backbone", f"default:{out / 'pretrain'}"]
    common = ["--steps", str(steps), "--batch-size", str(bs), "--no-progress", "--device", device,
              "--precision", precision]
    fc = ["--feature-cache", str(out / "fcache")]
    return {
        "pretrain": ["pretrain", "--pairs", d["pairs"], "--out", str(out / "pretrain"), *common, *fc],
        "mapping": ["train", "mapping", *bb, "--pairs", d["pairs"], "--out", str(out / "mapping"), *common, *fc],
        "pic2word": ["train", "pic2word", *bb, "--images", d["images"], "--out", str(out / "pic2word"), *common, *fc],
        "composing": ["train", "composing", *bb, "--mapper", str(out / "mapping"), "--cir-triplets", d["cir"],
                      "--out", str(out / "composing"), *common, *fc],
        "rtd": ["train", "rtd", *bb, "--mapper", str(out / "mapping"), "--triplets", d["text"],
                "--out", str(out / "rtd"), *common],
        "isa": ["train", "isa", *bb, "--images", d["images"], "--distill-epochs", "1", "--out", str(out / "isa"),
                *common],
        "tat": ["train", "tat", *bb, "--pairs", d["shards"], "--out", str(out / "tat"), *common],
    }


def _timed(fn, reps: int) -> float:
    fn()  # warm-up (lazy initialisation, caches)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def instrument(record: dict[str, Any], reps: int):
    """Wrap engine.fit in every trainer module: measure the first batch, then run the real loop."""
    import importlib

    import zscir.train.engine as engine

    real_fit = engine.fit

    def fit(task, cfg, dist):
        gb = next(iter(task.batches(0)))
        local, off = task.shard(gb, dist)
        n = task.items(gb)
        ctx = engine.StepContext(dist, dist.device, 0, 0, gb, n, off)
        params = [p for p in task.module.parameters() if p.requires_grad]

        def forward() -> None:
            with torch.no_grad(), engine.autocast(dist.device, cfg.precision):
                task.loss(local, ctx)

        def step() -> None:
            with engine.autocast(dist.device, cfg.precision):
                loss = task.loss(local, ctx)
            loss.backward()
            for p in params:
                p.grad = None

        (task.train_mode or task.module.train)()
        t_fwd, t_step = _timed(forward, reps), _timed(step, reps)
        t0 = time.perf_counter()
        res = real_fit(task, cfg, dist)
        phase = record.setdefault("phases", [])
        phase.append({"task": task.name, "batch": n, "bare_forward_items_s": n / t_fwd,
                      "step_in_memory_items_s": n / t_step, "step_fed_items_s": res.items_per_s,
                      "fed_ratio": res.items_per_s / (n / t_step), "fit_s": time.perf_counter() - t0,
                      "steps": res.steps})
        return res

    for name in TRAINER_MODULES:
        mod = importlib.import_module(name)
        if hasattr(mod, "fit"):
            mod.fit = fit
    return lambda: [setattr(importlib.import_module(m), "fit", real_fit) for m in TRAINER_MODULES]


def feature_pass(d: dict[str, str], device: str, cache: Path) -> dict[str, float]:
    """The streaming pass that fills the feature cache vs the frozen trunk on pre-decoded pixels."""
    from zscir.backbones.default import DefaultBackbone
    from zscir.data import StreamConfig, image_features, open_source, stream

    model = DefaultBackbone().to(device).eval()
    src = open_source(d["images"])
    n = sum(1 for _ in src)
    t = time.perf_counter()
    image_features(model, src, "image_tokens", cache=cache, config=StreamConfig(batch_size=32, workers=2))
    t_stream = time.perf_counter() - t
    px = torch.cat([b.pixels for b in stream(src, model.preprocess_config, StreamConfig(batch_size=32, workers=0))])
    with torch.inference_mode():
        t_bare = _timed(lambda: [model.image_tokens(px[i : i + 32].to(device)) for i in range(0, len(px), 32)], 1)
    return {"images": n, "stream_items_s": n / t_stream, "bare_forward_items_s": n / t_bare,
            "fed_ratio": (n / t_stream) / (n / t_bare)}


def run(d: dict[str, str], work: Path, steps: int, bs: int, device: str, precision: str, reps: int) -> dict:
    from zscir.cli import main

    out = work / f"{device}-{precision}"
    rows = {}
    for name, cmd in commands(d, out, steps, bs, device, precision).items():
        rec: dict[str, Any] = {}
        restore = instrument(rec, reps)
        t = time.perf_counter()
        try:
            rc = main(cmd)
        finally:
            restore()
        rec["rc"], rec["wall_s"] = rc, time.perf_counter() - t
        rows[name] = rec
        print(f"{device}/{precision} {name}: rc={rc} " + ", ".join(
            f"{p['task']}: fwd {p['bare_forward_items_s']:.0f}/s, step {p['step_in_memory_items_s']:.0f}/s, "
            f"fed {p['step_fed_items_s']:.0f}/s ({100 * p['fed_ratio']:.0f}%)" for p in rec.get("phases", [])),
            flush=True)
    return {"device": device, "precision": precision, "trainers": rows,
            "feature_pass": feature_pass(d, device, out / "fcache-bench")}


def markdown(res: dict) -> str:
    lines = ["| device | precision | trainer | phase | batch | bare forward items/s | step in memory items/s | "
             "step fed items/s | fed ratio | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        for name, rec in r["trainers"].items():
            for p in rec.get("phases", []):
                lines.append(f"| {r['device']} | {r['precision']} | {name} | {p['task']} | {p['batch']} | "
                             f"{p['bare_forward_items_s']:.0f} | {p['step_in_memory_items_s']:.0f} | "
                             f"{p['step_fed_items_s']:.0f} | {100 * p['fed_ratio']:.0f}% | {rec['wall_s']:.1f} |")
            if rec["rc"] != 0:
                lines.append(f"| {r['device']} | {r['precision']} | {name} | FAILED (exit {rec['rc']}) | | | | | | |")
        fp = r["feature_pass"]
        lines.append(f"| {r['device']} | {r['precision']} | (feature cache pass) | decode+trunk, {fp['images']} images | 32 | "
                     f"{fp['bare_forward_items_s']:.0f} | | {fp['stream_items_s']:.0f} | {100 * fp['fed_ratio']:.0f}% | |")
    by = {(r["device"], r["precision"]): r for r in res["runs"]}
    if ("cpu", "fp32") in by and ("cpu", "bf16") in by:
        lines += ["", "CPU bf16 autocast against fp32 (same run, same batches): speed-up of the training step.", "",
                  "| trainer | phase | step in memory fp32 items/s | bf16 items/s | bf16 / fp32 |", "|---|---|---|---|---|"]
        for name, rec in by["cpu", "fp32"]["trainers"].items():
            other = {p["task"]: p for p in by["cpu", "bf16"]["trainers"].get(name, {}).get("phases", [])}
            for p in rec.get("phases", []):
                if p["task"] in other:
                    a, b = p["step_in_memory_items_s"], other[p["task"]]["step_in_memory_items_s"]
                    lines.append(f"| {name} | {p['task']} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the in-memory measurements")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args(argv)
    from zscir.utils.runtime import configure_threads, native_bf16

    configure_threads()
    work = Path(tempfile.mkdtemp(prefix="zscir-train-bench-"))
    os.environ.setdefault("ZSCIR_HOME", str(work / "home"))
    try:
        d = make_data(work)
        runs = [run(d, work, args.steps, args.batch_size, "cpu", "fp32", args.reps)]
        if native_bf16("cpu"):
            runs.append(run(d, work, args.steps, args.batch_size, "cpu", "bf16", args.reps))
        if torch.cuda.is_available() and not args.cpu_only:
            runs.append(run(d, work, args.steps, args.batch_size, "cuda", "bf16", args.reps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"benchmark": "train_throughput", "steps": args.steps, "batch_size": args.batch_size,
           "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(), "cpu_native_bf16": native_bf16("cpu"),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    table = markdown(res)
    (out / "train_throughput.md").write_text("# Training throughput (benchmarks/train_throughput.py)\n\n" + table,
                                             encoding="utf-8")
    print(table)
    failed = [n for r in runs for n, rec in r["trainers"].items() if rec["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
