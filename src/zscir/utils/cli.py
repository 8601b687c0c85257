"""The options every command shares, declared once: --backbone, --device and --seed (the trainers' --out and
the rest of their shared options come from zscir.train.engine.add_engine_args)."""

from __future__ import annotations

import argparse
from typing import Any

BACKBONE_SCHEMES = "default, default:<folder>, hf:<hub id or folder>, py:<module>:<factory>"


def add_backbone_arg(p: Any, default: str | None = "default", help: str = "") -> None:
    """--backbone SPEC. `default=None` or "": the command decides (e.g. the index's own backbone)."""
    what = help or "backbone"
    shown = f" (default: {default})" if default else ""
    p.add_argument("--backbone", default=default, metavar="SPEC", help=f"{what}: {BACKBONE_SCHEMES}{shown}")


def add_device_arg(p: Any) -> None:
    """--device: "" means CUDA when present, else the CPU (zscir.utils.runtime.pick_device)."""
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: CUDA when present, else the CPU)")


def add_seed_arg(p: Any, help: str = "random seed: same seed, same result") -> None:
    p.add_argument("--seed", type=int, default=0, help=f"{help} (default: 0)")


def parser_group(p: argparse.ArgumentParser, title: str) -> Any:
    """An argument group (a place to put the shared options under their own heading in --help)."""
    return p.add_argument_group(title)
