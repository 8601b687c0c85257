"""The cost of ISA's query side against the gallery tower: parameters, FLOPs and single-image latency (what
`zscir demo` and benchmarks/isa_tokens.py report)."""

from __future__ import annotations

from dataclasses import asdict

import torch

from zscir.backbones.base import Backbone
from zscir.methods.isa import ISA, isa_config_for
from zscir.utils.profiling import TowerCost, count_flops, count_params, cpu_latency_ms


def query_side_costs(backbone: Backbone, method: ISA | None = None, repeats: int = 20) -> dict[str, dict]:
    """Params / FLOPs / single-image latency of the gallery tower (pixels -> embedding), the light encoder
    and the asymmetric query side (light encoder + token learner) at the backbone's resolution."""
    size = backbone.preprocess_config.size
    x = torch.randn(1, 3, size, size, device=backbone.device)
    rows: dict[str, dict] = {}
    gallery = TowerCost("gallery image tower (large, frozen)", count_params(backbone.image_tower),
                        count_flops(backbone.encode_image, x), cpu_latency_ms(backbone.encode_image, x, repeats=repeats))
    rows["gallery_tower"] = asdict(gallery)
    if method is None:
        method = ISA(backbone, isa_config_for(backbone))
    method.eval()
    if method.light is not None:
        enc = method.query_encoder()
        light = TowerCost("light query encoder", count_params(method.light), count_flops(method.light, x),
                          cpu_latency_ms(method.light, x, repeats=repeats))
        query = TowerCost("light encoder + token learner (ISA query side)", count_params(enc), count_flops(enc, x),
                          cpu_latency_ms(enc, x, repeats=repeats))
        rows["light_encoder"] = asdict(light)
        rows["isa_query_side"] = asdict(query)
    else:
        def sym(px: torch.Tensor) -> torch.Tensor:
            return method.learner(backbone.image_tokens(px))[0]

        rows["isa_symmetric_query_side"] = asdict(TowerCost(
            "large tower + token learner (symmetric query side)", count_params(backbone.image_tower, method.learner),
            count_flops(sym, x), cpu_latency_ms(sym, x, repeats=repeats)))
    if "isa_query_side" in rows:
        rows["flops_ratio_query_vs_gallery"] = rows["isa_query_side"]["flops"] / max(1, gallery.flops)
    return rows
