"""Demo recipes for ISA: `isa` (light query encoder, asymmetric) and `isa/symmetric` (token learner on the
large tower), both trained on the world's unlabelled images and cached under the demo's workdir.

`results.json` gets an `isa` section: the query-side cost table (params, FLOPs, CPU latency of the gallery
tower and of the light query side) and, once both variants are trained, the "done when" check: asymmetric
R@10 / symmetric R@10 on the CIRR-like protocol and the query-side FLOPs ratio."""

from __future__ import annotations

import logging

from zscir.demo.recipes import DemoContext, recipe
from zscir.methods import CompositionMethod

log = logging.getLogger(__name__)

N_TOKENS = 4


def _train_cfg(ctx: DemoContext, mode: str):
    from zscir.train.isa import ISATrainConfig

    if ctx.quick:
        return ISATrainConfig(mode=mode, n_tokens=N_TOKENS, steps=60, batch_size=32, distill_epochs=40, light_lr=3e-4,
                              seed=ctx.seed, device=ctx.device)
    return ISATrainConfig(mode=mode, n_tokens=N_TOKENS, steps=100, batch_size=48, distill_epochs=10, light_lr=3e-4,
                          seed=ctx.seed, device=ctx.device)


def _isa(ctx: DemoContext, mode: str):
    from zscir.methods import build_method
    from zscir.train.isa import ensure_isa

    path = ctx.workdir / f"isa-{mode}-m{N_TOKENS}"
    ensure_isa(ctx.backbone, ctx.world, path, _train_cfg(ctx, mode))  # trains unless a fitting checkpoint is there
    return build_method("isa" if mode == "asymmetric" else "isa/symmetric", ctx.backbone, [path])


@recipe("isa")
def _isa_asymmetric(ctx: DemoContext) -> CompositionMethod:
    from zscir.methods.isa import query_side_costs

    method = _isa(ctx, "asymmetric")
    section = ctx.extras.setdefault("isa", {})
    section["n_tokens"] = N_TOKENS
    section["query_side_costs"] = query_side_costs(ctx.backbone, method, repeats=5 if ctx.quick else 20)
    return method


@recipe("isa/symmetric")
def _isa_symmetric(ctx: DemoContext) -> CompositionMethod:
    import torch

    from zscir.methods.isa import count_flops

    sym = _isa(ctx, "symmetric")
    asym = _isa(ctx, "asymmetric")
    size = ctx.backbone.preprocess_config.size
    x = torch.zeros(1, 3, size, size, device=ctx.backbone.device)
    r_a = ctx.evaluator.evaluate_cirr(asym.eval()).metrics["R@10"]
    r_s = ctx.evaluator.evaluate_cirr(sym.eval()).metrics["R@10"]
    f_a = count_flops(asym.pseudo_tokens, x)
    f_s = count_flops(sym.pseudo_tokens, x)
    check = {"cirr_R@10_isa": round(r_a, 2), "cirr_R@10_isa_symmetric": round(r_s, 2),
             "r10_ratio": round(r_a / max(r_s, 1e-9), 3), "query_flops_isa": f_a, "query_flops_isa_symmetric": f_s,
             "flops_ratio": round(f_a / max(f_s, 1), 3)}
    check["passed"] = bool(check["r10_ratio"] >= 0.9 and check["flops_ratio"] <= 0.2)
    ctx.extras.setdefault("isa", {})["asymmetric_vs_symmetric"] = check
    log.info("ISA: asymmetric keeps %.0f%% of symmetric R@10 at %.0f%% of its query-side FLOPs",
             100 * check["r10_ratio"], 100 * check["flops_ratio"])
    return sym
