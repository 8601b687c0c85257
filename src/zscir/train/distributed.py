"""Helpers for running a trainer under `torchrun` (PyTorch DDP) or as a single process.

    dist = init_distributed("")           # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    model = dist.wrap(model)               # DistributedDataParallel when world > 1, else unchanged
    for idx in dist.batches(n, global_batch, seed, epoch): ...   # this rank's rows of each global batch
    v_all = gather_with_grad(v)            # (world*B, D): every rank's rows, gradients flow back
    if dist.is_main: save / print

Backend: nccl when the process owns a CUDA device, gloo on CPU. A global batch is split into equal
contiguous slices by rank, so the concatenation of every rank's slice (what `gather_with_grad` returns)
is exactly the batch a single process with the same global batch would see.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from zscir.errors import InputError
from zscir.utils.runtime import pick_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def batches(self, n: int, global_batch: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        """This rank's indices for each global batch of one epoch (drop_last; same order on every rank)."""
        for b in global_batches(n, global_batch, seed, epoch):
            yield self.shard(b)

    def shard(self, global_idx: torch.Tensor) -> torch.Tensor:
        per = len(global_idx) // self.world_size
        return global_idx[self.rank * per : (self.rank + 1) * per]

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a scalar over ranks (for logging)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        tdist.all_reduce(t)
        return float(t.item()) / self.world_size

    @property
    def _comm_device(self) -> torch.device:
        return self.device if tdist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()


def global_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into full global batches (the last partial one is dropped)."""
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return [perm[s : s + global_batch] for s in range(0, n - global_batch + 1, global_batch)]


def init_distributed(device: str = "") -> DistInfo:
    """Join the process group torchrun describes in the environment, or return a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device or None))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda asked for, but no CUDA device is visible")
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local rows (all_reduce + slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = tdist.get_world_size()
        ctx.rank, ctx.rows = tdist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, ...) from every rank in rank order; gradients flow back to each rank's rows.

    Each rank's loss is scored against the global batch; DDP averages parameter gradients over ranks, and
    the summed row gradients here make that average exactly the single-process gradient of the global loss."""
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather without gradient (e.g. the frozen text embeddings)."""
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# --- DDP helpers ------------------------------------------------------------------------------------------------
def broadcast_params(params: Sequence[torch.Tensor], dist: DistInfo) -> None:
    if not dist.enabled:
        return
    with torch.no_grad():
        for p in params:
            buf = p.data if dist._comm_device == p.device else p.data.to(dist._comm_device)
            tdist.broadcast(buf, 0)
            if buf is not p.data:
                p.data.copy_(buf)


def average_gradients(params: Sequence[torch.Tensor], dist: DistInfo) -> None:
    """What DDP does: every parameter's gradient averaged over the ranks (one flat all-reduce per dtype)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        comm = flat if dist._comm_device == flat.device else flat.to(dist._comm_device)
        tdist.all_reduce(comm)
        comm = comm.to(flat.device) / dist.world_size
        o = 0
        for g in grads:
            n = g.numel()
            g.copy_(comm[o : o + n].view_as(g))
            o += n


def max_abs_or_nan(value: float, dist: DistInfo) -> float:
    """Any rank's non-finite loss stops every rank (else the others would hang in the next collective)."""
    t = torch.tensor([0.0 if math.isfinite(value) else 1.0, value if math.isfinite(value) else 0.0],
                     dtype=torch.float64, device=dist._comm_device)
    tdist.all_reduce(t)
    return value if t[0].item() == 0 else float("nan")
