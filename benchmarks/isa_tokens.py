"""ISA: how many pseudo tokens? Sweep M (the sentence length) and report accuracy against query-side latency,
plus the params / FLOPs / CPU latency table of the gallery tower and the light query side.

    python benchmarks/isa_tokens.py [--size quick] [--tokens 1,2,4,8,16] [--steps 60] [--out benchmarks/results]

Uses (or builds) the demo's world and pre-trained default backbone under $ZSCIR_HOME; trains one asymmetric
ISA per M on the world's unlabelled images (cached under models/isa-sweep-*), evaluates the CIRR-like and
CIRCO-like protocols and times, per single query on this machine's CPU (or --device):
  image side  = light encoder + token learner (what the phone runs before the text tower),
  full query  = image side + the text tower on `a photo of $ that {text}` (M slots).
Writes isa_tokens.json and prints both tables."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from zscir.eval.costs import query_side_costs
from zscir.experiments import build_context
from zscir.methods import build_method
from zscir.methods.isa import ISASymmetric, isa_config_for
from zscir.train.isa import ISATrainConfig, train_isa
from zscir.utils.profiling import count_flops, cpu_latency_ms
from zscir.utils.runtime import configure_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="quick", choices=("quick", "default", "large"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", default="1,2,4,8,16")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--distill-epochs", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    configure_threads()
    t0 = time.time()
    ctx = build_context(args.size, args.seed, args.device, progress=False)
    world, backbone, evaluator, device = ctx.world, ctx.backbone, ctx.evaluator, ctx.device
    size = backbone.preprocess_config.size
    x = torch.randn(1, 3, size, size, device=device)
    text = ["make it red and move it to the left"]

    sweep = []
    costs = None
    for m in [int(t) for t in args.tokens.split(",") if t.strip()]:
        cfg = ISATrainConfig(n_tokens=m, steps=args.steps, batch_size=args.batch_size,
                             distill_epochs=args.distill_epochs, seed=args.seed)
        path = ctx.artifact(f"isa-sweep-m{m}", cfg, lambda out, cfg=cfg: train_isa(
            dataclasses.replace(cfg, out=str(out)), backbone=backbone, world=world))
        method = build_method("isa", backbone, [path]).eval()
        res = evaluator.evaluate(method)
        enc = method.query_encoder()
        row = {
            "M": m,
            "cirr_R@1": round(res["cirr"].metrics["R@1"], 2), "cirr_R@10": round(res["cirr"].metrics["R@10"], 2),
            "cirr_Rs@1": round(res["cirr"].metrics["Rs@1"], 2), "circo_mAP@10": round(res["circo"].metrics["mAP@10"], 2),
            "image_side_ms": round(cpu_latency_ms(enc, x, repeats=args.repeats), 3),
            "full_query_ms": round(cpu_latency_ms(lambda px, method=method: method.compose(px, text), x, repeats=args.repeats), 3),
            "image_side_flops": count_flops(enc, x),
            "image_side_params": sum(p.numel() for p in enc.parameters()),
        }
        sweep.append(row)
        print(json.dumps(row))
        if m == 4 or costs is None:
            costs = query_side_costs(backbone, method, repeats=args.repeats)
    sym_costs = query_side_costs(backbone, ISASymmetric(backbone, isa_config_for(backbone, "symmetric", 4)),
                                 repeats=args.repeats)
    costs["isa_symmetric_query_side"] = sym_costs["isa_symmetric_query_side"]
    doc = {"world": {"size": args.size, "seed": args.seed}, "backbone_fingerprint": backbone.fingerprint(),
           "train": {"steps": args.steps, "batch_size": args.batch_size, "distill_epochs": args.distill_epochs},
           "sweep": sweep, "costs": costs, "device": str(device), "torch_threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "isa_tokens.json").write_text(json.dumps(doc, indent=1) + "\n")

    print(f"\nISA M sweep ({args.size} world, {args.steps} steps), query-side latency per query on {device}")
    print(f"{'M':>3} {'R@1':>6} {'R@10':>6} {'Rs@1':>6} {'mAP@10':>7} {'image ms':>9} {'query ms':>9}")
    for r in sweep:
        print(f"{r['M']:>3} {r['cirr_R@1']:>6.1f} {r['cirr_R@10']:>6.1f} {r['cirr_Rs@1']:>6.1f} "
              f"{r['circo_mAP@10']:>7.1f} {r['image_side_ms']:>9.2f} {r['full_query_ms']:>9.2f}")
    print(f"\n{'part':<52} {'params':>10} {'MFLOPs':>9} {'ms/img':>8}")
    for r in costs.values():
        if isinstance(r, dict):
            print(f"{r['name']:<52} {r['params']:>10,} {r['flops'] / 1e6:>9.1f} {r['latency_ms']:>8.2f}")
    print(f"query-side / gallery-tower FLOPs: {costs['flops_ratio_query_vs_gallery']:.3f}")
    print(f"wrote {out / 'isa_tokens.json'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
