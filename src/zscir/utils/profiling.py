"""Cost measurement of a module or a call: parameters, FLOPs (torch's flop counter) and wall-clock latency.

Used by the ISA cost table (zscir.eval.costs), the demo and the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def count_flops(fn: Callable[..., Any], *inputs: torch.Tensor) -> int:
    """FLOPs (multiply and add counted separately) of one call, by torch's flop counter (convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return int(counter.get_total_flops())


def count_params(*modules: nn.Module) -> int:
    """Parameters of the modules together, each shared tensor counted once."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def cpu_latency_ms(fn: Callable[..., Any], *inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one call (inputs already on the device; CUDA is synchronised)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t = time.perf_counter()
            fn(*inputs)
            if inputs and inputs[0].is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2]


@dataclass
class TowerCost:
    """One row of a cost table."""

    name: str
    params: int
    flops: int
    latency_ms: float
    extra: dict = field(default_factory=dict)
