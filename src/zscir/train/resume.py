"""The engine's resumable state: model, optimiser, scheduler, scaler, every rank's RNG states and the position
in the data, saved to `OUT.partial/state.pt` (`--save-every`) and restored by the next run with the same
settings (a different signature starts afresh)."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from zscir.errors import InputError
from zscir.train.distributed import DistInfo

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters and every buffer (batch-norm statistics): what training changes."""
    state = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}
    state.update({f"buffer:{n}": b.detach().cpu().clone() for n, b in module.named_buffers()})
    return state


def save_state(partial: Path, signature: dict, module: nn.Module, opt, sched, scaler, step: int, epoch: int,
                pos: int, dist: DistInfo) -> None:
    rng = rng_state()
    rngs: list[dict | None] = [rng]
    if dist.enabled:
        rngs = [None] * dist.world_size
        tdist.all_gather_object(rngs, rng)
    if dist.is_main:
        partial.mkdir(parents=True, exist_ok=True)
        tmp = partial / (STATE_NAME + ".tmp")
        torch.save({"signature": json.dumps(signature, sort_keys=True), "module": module_state(module),
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                    "rng": rngs, "step": step, "epoch": epoch, "pos": pos}, tmp)
        os.replace(tmp, partial / STATE_NAME)
    dist.barrier()


def load_state(partial: Path, signature: dict, required: bool, dist: DistInfo) -> dict | None:
    f = partial / STATE_NAME
    if not f.is_file():
        if required:
            raise InputError(f"--resume: no resumable state at {partial}")
        return None
    state = torch.load(f, map_location="cpu", weights_only=False)
    if json.loads(state["signature"]) != jsonable(signature):
        if required:
            raise InputError(f"--resume: {partial} holds a run with other settings (or another number of processes)")
        if dist.is_main:
            log.warning("%s holds a run with other settings; starting afresh", partial)
        return None
    return state


def restore_state(state: dict, module: nn.Module, opt, sched, scaler, dist: DistInfo) -> None:
    saved = state["module"]
    with torch.no_grad():
        for n, p in module.named_parameters():
            if p.requires_grad and n in saved:
                p.copy_(saved[n])
        for n, b in module.named_buffers():
            if f"buffer:{n}" in saved:
                b.copy_(saved[f"buffer:{n}"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])


