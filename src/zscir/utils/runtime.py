"""Seeding and device choice, in one place so every experiment is reproducible from its seed."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded the same way for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def pick_device(name: str | None = None) -> torch.device:
    """`name` if given ('cpu', 'cuda', 'cuda:1'), else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with bf16 matrix
    instructions (AVX512-BF16 / AMX). Elsewhere bf16 autocast is emulated and slower than fp32."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        try:  # oneDNN's own test of the CPU's bf16 support
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """`precision` itself, or for "auto" what it means on `device` (None or "": the default device): bf16 where
    the device computes bf16 natively, else fp32. Configs and results record the resolved value, so a
    checkpoint or a results file says how it was computed."""
    if precision != "auto":
        return precision
    dev = device if isinstance(device, torch.device) else pick_device(device or None)
    return "bf16" if native_bf16(dev) else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast in `precision` ("fp32", "bf16", "fp16" or "auto") on `device`. fp32 switches autocast off
    explicitly, so an fp32 step inside a bf16 region (training inside an evaluation) stays fp32."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def configure_threads() -> None:
    """Use all cores for torch's intra-op pool unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
