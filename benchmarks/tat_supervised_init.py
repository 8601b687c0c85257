"""Is a TAT checkpoint a better starting point for supervised CIR? Train the same small supervised combiner on a
few of the world's CIR triplets (`cir_train`) on top of the base image tower and on top of the TAT-tuned one,
and evaluate both on the held-out CIRR-like and CIRCO-like protocols as training proceeds.

    python benchmarks/tat_supervised_init.py [--size quick] [--triplets 400] [--steps 300] [--out benchmarks/results]

The combiner: q = normalize(slerp(v, w, 0.8) + MLP([v, w, v*w])), the MLP's last layer starting at zero, so
step 0 is exactly Slerp on that tower; trained with InfoNCE against the target image embeddings (the towers
stay frozen, their embeddings are computed once). Uses (or makes) the demo's world, pre-trained default and TAT
adapters under $ZSCIR_HOME. Writes tat_supervised_init.json and prints both curves as a table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Combiner(nn.Module):
    def __init__(self, dim: int, hidden: int = 512, alpha: float = 0.8) -> None:
        super().__init__()
        self.alpha = alpha
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        from zscir.methods.slerp import slerp

        return F.normalize(slerp(v, w, self.alpha) + self.mlp(torch.cat([v, w, v * w], -1)), dim=-1)


@torch.inference_mode()
def _embed_ids(method, world, ids: list[str]) -> torch.Tensor:
    from zscir.eval.engine import embed_images

    bb = method.backbone
    return embed_images(method.encode_gallery, [world.image_path(i) for i in ids], bb.preprocess_config, bb.device,
                        64, desc="triplet images", progress=False)


@torch.inference_mode()
def _texts(bb, texts: list[str]) -> torch.Tensor:
    return torch.cat([bb.encode_text(texts[i : i + 256]).float().cpu() for i in range(0, len(texts), 256)])


def _evaluate(ev, method, comb: Combiner, split_inputs) -> dict[str, float]:
    comb.eval()
    out = {}
    with torch.inference_mode():
        for split, (refs, w) in split_inputs.items():
            q = comb(refs, w)
            if split == "cirr":
                out["cirr_R@1"] = round(ev.evaluate_cirr(method, q).metrics["R@1"], 2)
            else:
                out["circo_mAP@10"] = round(ev.evaluate_circo(method, q).metrics["mAP@10"], 2)
    comb.train()
    return out


def run_curve(name: str, method, world, ev, triplets: list[dict], steps: int, every: int, batch: int, lr: float,
              seed: int) -> list[dict]:
    torch.manual_seed(seed)
    bb = method.backbone
    ids = sorted({t["reference"] for t in triplets} | {t["target"] for t in triplets})
    emb = dict(zip(ids, _embed_ids(method, world, ids)))
    v = torch.stack([emb[t["reference"]] for t in triplets])
    tgt = torch.stack([emb[t["target"]] for t in triplets])
    w = _texts(bb, [t["modification"] for t in triplets])
    split_inputs = {}
    for split in ("cirr", "circo"):
        s = ev.splits[split]
        g = ev.gallery_embeddings(method, split)
        split_inputs[split] = (g[[s.index[q["reference"]] for q in s.queries]], _texts(bb, [q["modification"] for q in s.queries]))
    comb = Combiner(v.shape[1])
    opt = torch.optim.AdamW(comb.parameters(), lr=lr, weight_decay=0.01)
    scale = 1 / 0.07
    g = torch.Generator().manual_seed(seed)
    curve = [{"step": 0, **_evaluate(ev, method, comb, split_inputs)}]
    print(f"  {name} step 0: {curve[-1]}", file=sys.stderr)
    for step in range(1, steps + 1):
        idx = torch.randint(len(triplets), (min(batch, len(triplets)),), generator=g)
        q = comb(v[idx], w[idx])
        logits = scale * q @ tgt[idx].T
        loss = F.cross_entropy(logits, torch.arange(len(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            curve.append({"step": step, "loss": round(loss.item(), 4), **_evaluate(ev, method, comb, split_inputs)})
            print(f"  {name} step {step}: {curve[-1]}", file=sys.stderr)
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="quick", choices=("quick", "default", "large"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--triplets", type=int, default=400, help="CIR triplets used for supervision (a small set)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    from zscir.experiments import build_context
    from zscir.experiments.recipes.tat import tat_checkpoint
    from zscir.methods import get_method_class
    from zscir.methods.tat import load_tat_backbone
    from zscir.utils.runtime import configure_threads, seed_everything

    t0 = time.time()
    configure_threads()
    seed_everything(args.seed)
    ctx = build_context(args.size, args.seed, "cpu", progress=False)
    world, base, ev = ctx.world, ctx.backbone, ctx.evaluator
    tat_path = tat_checkpoint(ctx)  # the demo's adapters (the same cached artefact)
    tuned = load_tat_backbone(base, tat_path)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(world.cir_train), generator=g)[: args.triplets].tolist()
    triplets = [world.cir_train[i] for i in order]
    curves = {}
    for name, method in (("base", get_method_class("slerp")(base)), ("tat", get_method_class("slerp+tat")(base, tat=tuned))):
        curves[name] = run_curve(name, method, world, ev, triplets, args.steps, args.every, args.batch_size, args.lr, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "tat_supervised_init", "world": {"size": args.size, "seed": args.seed},
           "triplets": len(triplets), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "combiner": "normalize(slerp(v,w,0.8) + MLP([v,w,v*w])), zero-init output", "curves": curves,
           "seconds": round(time.time() - t0, 1)}
    (out / "tat_supervised_init.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"supervised combiner on {len(triplets)} CIR triplets: base tower vs TAT tower")
    print(f"{'step':>6} | {'base R@1':>9} {'base mAP@10':>12} | {'TAT R@1':>8} {'TAT mAP@10':>11}")
    for a, b in zip(curves["base"], curves["tat"]):
        print(f"{a['step']:>6} | {a['cirr_R@1']:>9.1f} {a['circo_mAP@10']:>12.1f} | {b['cirr_R@1']:>8.1f} {b['circo_mAP@10']:>11.1f}")
    print(f"wrote {out / 'tat_supervised_init.json'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
