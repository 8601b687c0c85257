"""The one training loop under every trainer (`pretrain`, `tat`, `pic2word`, `mapping`, `composing`, `rtd`, `isa`).

A trainer describes *what* to train as a `Task` (the module holding the trainable parameters, the global
batches of an epoch, the loss of a batch) and calls `fit(task, cfg, dist)`; the engine does the rest:

- AdamW with parameter groups (no weight decay on biases and norm weights, i.e. tensors with < 2 dims),
  one linear-warmup + cosine schedule, gradient clipping, `--steps` or `--epochs`;
- `--precision {fp32,bf16,fp16,auto}`: autocast around the loss (+ a GradScaler for fp16); `auto` is bf16 where
  the device computes it natively (`resolve_precision`), else fp32;
- the device: CUDA when present unless `--device` says otherwise;
- torchrun DDP: every rank computes the loss of its contiguous share of each global batch, gradients are
  averaged over the ranks (what DistributedDataParallel does) and only rank 0 writes; a loss written with
  `StepContext.gather` / `StepContext.batch_mean` equals the single-process loss of the global batch;
- `--save-every N`: model + optimiser + scheduler + every rank's RNG states + the position in the data are
  saved to `OUT.partial/state.pt`; the next run with the same settings resumes there and reaches the same
  weights as an uninterrupted run (data order is a pure function of the seed and the epoch);
- a loss that turns NaN/inf stops training with an error, and nothing is saved.

Trainers declare the shared options with `add_engine_args(p, ...)` and read them back with
`engine_args(args)`, which refuses impossible values (steps, epochs, batch size <= 0, a non-finite or
non-positive learning rate) before any work is done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from tqdm.auto import tqdm

from zscir.errors import InputError
from zscir.train.distributed import (
    DistInfo,
    average_gradients,
    broadcast_params,
    gather,
    gather_with_grad,
    init_distributed,
    max_abs_or_nan,
)
from zscir.train.resume import STATE_NAME, jsonable, load_state, restore_state, save_state
from zscir.utils.cli import add_device_arg, add_seed_arg
from zscir.utils.runtime import autocast, resolve_precision

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # `auto`: zscir.utils.runtime.resolve_precision
#: test hook: after saving the resume state at this step the process dies (as under `kill -9`)
CRASH_ENV = "ZSCIR_TRAIN_CRASH_AFTER_SAVE"


class TrainingDiverged(InputError):
    """The loss (or the weights) became NaN/inf: training stopped and nothing was saved."""


# --- settings ----------------------------------------------------------------------------------------------
@dataclass
class EngineConfig:
    """What the engine needs of a trainer's settings (trainers build it from their own config)."""

    steps: int = 0  # > 0: exactly this many optimiser steps; 0: `epochs` passes
    epochs: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.05  # fraction of the steps
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 0  # resume state every N steps; 0 = never
    resume: bool = False  # True: a resumable state must exist (else: resumed when one with the same settings exists)
    out: str = ""
    progress: bool = True

    def check(self) -> None:
        check_positive_lr(self.lr)
        if self.steps < 0 or (self.steps == 0 and not self.epochs > 0):
            raise InputError(f"the number of steps ({self.steps}) or epochs ({self.epochs}) must be > 0")
        if not math.isfinite(self.epochs) or self.epochs < 0:
            raise InputError(f"epochs must be > 0, got {self.epochs}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise InputError(f"gradient clipping norm must be >= 0, got {self.grad_clip}")
        if not 0 <= self.warmup < 1:
            raise InputError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.save_every < 0:
            raise InputError(f"--save-every must be >= 0, got {self.save_every}")


@dataclass
class EngineSettings:
    """The engine's settings every trainer config shares (their flags come from `add_engine_args`); a config
    inherits them and redeclares one only to change its default."""

    precision: str = "fp32"
    grad_clip: float = 0.0
    save_every: int = 0
    resume: bool = False
    progress: bool = True


def check_positive_lr(lr: float, what: str = "learning rate") -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"{what} must be a finite number > 0, got {lr}")


def check_batch_size(batch_size: int, minimum: int = 1) -> None:
    if batch_size < minimum:
        raise InputError(f"batch size must be at least {minimum}, got {batch_size}")


# --- the CLI options every trainer shares --------------------------------------------------------------------
def add_engine_args(
    p: argparse.ArgumentParser, *, lr: float | None, batch_size: int, steps: int | None = None,
    epochs: float | None = None, weight_decay: float = 0.0, warmup: float = 0.05, grad_clip: float = 0.0,
    save_every: int = 0, out_help: str = "checkpoint folder to write", out_default: str | None = None,
    lr_help: str = "",
) -> None:
    """Declare --out, --device, --seed, --precision, --steps/--epochs, --lr, --batch-size, --weight-decay,
    --warmup, --grad-clip, --save-every, --resume and --no-progress with this trainer's defaults."""
    g = p.add_argument_group("training (shared by every trainer)")
    if out_default is None:
        g.add_argument("--out", required=True, help=out_help + " (an existing folder must be a checkpoint of the "
                       "same kind; it is replaced atomically)")
    else:
        g.add_argument("--out", default=out_default, help=out_help + " (default: %(default)s)")
    add_device_arg(g)
    add_seed_arg(g, "random seed: same seed, same data, same weights")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32, or autocast in bf16 / fp16 (fp16 adds loss scaling); auto: bf16 where the device "
                        "computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32 (default: %(default)s)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None,
                        help=f"optimiser steps (default: {steps if steps else 'from --epochs'})")
    length.add_argument("--epochs", type=float, default=None,
                        help=f"passes over the data (default: {epochs if epochs else 'from --steps'})")
    g.add_argument("--lr", type=float, default=lr, help=lr_help or "peak learning rate (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help="global batch (split over torchrun processes) (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=weight_decay,
                   help="AdamW weight decay, not applied to biases and norms (default: %(default)s)")
    g.add_argument("--warmup", type=float, default=warmup, help="linear warm-up, fraction of the steps (default: %(default)s)")
    g.add_argument("--grad-clip", type=float, default=grad_clip, help="max gradient norm, 0 = off (default: %(default)s)")
    g.add_argument("--save-every", type=int, default=save_every,
                   help="save a resumable state to OUT.partial every N steps, 0 = never (default: %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="require resuming from OUT.partial (without it a matching state there is resumed too)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(_engine_defaults={"steps": steps, "epochs": epochs})


def engine_args(args: argparse.Namespace, min_batch: int = 1) -> dict[str, Any]:
    """The shared options as config fields, refused (InputError) when impossible. `steps`/`epochs` are only
    present when given on the command line (else the trainer's config default stands)."""
    if args.steps is not None and args.steps <= 0:
        raise InputError(f"--steps must be > 0, got {args.steps}")
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        raise InputError(f"--epochs must be > 0, got {args.epochs}")
    check_batch_size(args.batch_size, min_batch)
    if args.lr is not None:
        check_positive_lr(args.lr, "--lr")
    if args.save_every < 0:
        raise InputError(f"--save-every must be >= 0, got {args.save_every}")
    if not (math.isfinite(args.grad_clip) and args.grad_clip >= 0):
        raise InputError(f"--grad-clip must be >= 0, got {args.grad_clip}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise InputError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.warmup < 1:
        raise InputError(f"--warmup is a fraction of the steps in [0, 1), got {args.warmup}")
    out = {"out": args.out, "device": args.device, "seed": args.seed,
           "precision": resolve_precision(args.precision, args.device),
           "batch_size": args.batch_size, "weight_decay": args.weight_decay, "warmup": args.warmup,
           "grad_clip": args.grad_clip, "save_every": args.save_every, "resume": args.resume,
           "progress": not args.no_progress}
    if args.lr is not None:
        out["lr"] = args.lr
    if args.steps is not None:
        out["steps"], out["epochs"] = args.steps, 0.0
    elif args.epochs is not None:
        out["steps"], out["epochs"] = 0, args.epochs
    return out


def is_main_process() -> bool:
    """True unless this is a non-zero rank under torchrun (only rank 0 prints and writes)."""
    return int(os.environ.get("RANK", "0")) == 0


# --- --out safety -------------------------------------------------------------------------------------------
def check_out_dir(out: str | os.PathLike[str], kinds: str | Sequence[str], what: str = "") -> Path:
    """Refuse an --out that training would destroy (the shared rule, zscir.utils.io.check_output_dir): the
    current folder or one of its parents, the home folder, a file, or a non-empty folder that is not a zscir
    checkpoint of one of `kinds`. Also refuses a foreign OUT.partial (where the resume state goes). Returns the
    path. Nothing is written."""
    from zscir.utils.io import check_output_dir

    if not str(out).strip():
        raise InputError("--out is required")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    what = what or f"a {' or '.join(kinds)} checkpoint"
    path = check_output_dir(out, lambda p: _checkpoint_kind(p) in kinds, what)
    check_output_dir(partial_dir(out), lambda p: (p / STATE_NAME).is_file(), "a resumable training state")
    return path


def _checkpoint_kind(path: Path) -> str | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get("kind") if isinstance(doc, dict) and isinstance(doc.get("kind"), str) else None


def partial_dir(out: str | os.PathLike[str]) -> Path:
    """Where the resumable state of a run writing `out` lives (a sibling, removed when the run completes)."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


# --- the task a trainer hands to the engine ------------------------------------------------------------------
@dataclass
class StepContext:
    """What a loss function needs to know about the step (and the helpers that make DDP exact)."""

    dist: DistInfo
    device: torch.device
    step: int
    epoch: int
    global_batch: Any  # the whole global batch (every rank sees it; only `batch` is this rank's share)
    global_size: int
    offset: int  # this rank's first row in the global batch

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of a trainable tensor, in rank order (gradients flow back): the global batch."""
        return gather_with_grad(x)

    def gather_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of a tensor that needs no gradient."""
        return gather(x)

    def batch_mean(self, per_item: torch.Tensor) -> torch.Tensor:
        """Mean over the *global* batch of a per-item loss of this rank's rows (exact under uneven shards)."""
        return per_item.sum() * self.dist.world_size / max(1, self.global_size)


def split_rows(batch: Any, dist: DistInfo) -> tuple[Any, int]:
    """(this rank's contiguous share of a global batch, its offset). Shares differ by at most one row."""
    if not dist.enabled:
        return batch, 0
    n = len(batch)
    base, extra = divmod(n, dist.world_size)
    start = dist.rank * base + min(dist.rank, extra)
    size = base + (1 if dist.rank < extra else 0)
    return batch[start : start + size], start


@dataclass
class Task:
    """One training run, as the engine sees it.

    `batches(epoch)` yields the global batches of an epoch and must be a pure function of (seed, epoch)
    (resume replays it); `loss(local_batch, ctx)` returns this rank's loss; the parameters of `module` that
    require gradients are trained (or `param_groups`, each a dict with "params" and optionally "lr" as a
    multiple via "lr_scale", "weight_decay"). `state_module` is what the resume state saves and restores
    (default: `module`)."""

    name: str
    module: nn.Module
    batches: Callable[[int], Iterable[Any]]
    loss: Callable[[Any, StepContext], torch.Tensor]
    steps_per_epoch: int
    items: Callable[[Any], int] = len
    param_groups: list[dict] | None = None
    shard: Callable[[Any, DistInfo], tuple[Any, int]] = split_rows
    after_step: Callable[[], None] | None = None
    train_mode: Callable[[], object] | None = None  # default: module.train()
    signature: dict = field(default_factory=dict)  # settings that must match for a resumed run


@dataclass
class FitResult:
    steps: int
    losses: list[float]
    seconds: float
    items_per_s: float
    resumed_from: int = 0

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return float(sum(tail) / len(tail)) if tail else float("nan")


def param_groups(module: nn.Module, weight_decay: float, params: Iterable[nn.Parameter] | None = None) -> list[dict]:
    """AdamW groups: weight decay on matrices / kernels, none on biases, norm weights and scalars."""
    ps = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
    decay = [p for p in ps if p.ndim >= 2]
    no_decay = [p for p in ps if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def warmup_cosine(total: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor of step s: linear warm-up over `warmup` of the steps, then a cosine to 0."""
    w = max(1, int(total * warmup))

    def f(s: int) -> float:
        if s < w:
            return (s + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / max(1, total - w))))

    return f


def total_steps(cfg: EngineConfig, steps_per_epoch: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    if steps_per_epoch < 1:
        raise InputError("the data holds less than one batch")
    return max(1, round(steps_per_epoch * cfg.epochs))


# --- the loop -------------------------------------------------------------------------------------------------
def fit(task: Task, cfg: EngineConfig, dist: DistInfo) -> FitResult:
    """Train `task` for cfg.steps (or cfg.epochs); returns the losses. The caller saves the result (rank 0)."""
    cfg.check()
    device = dist.device
    total = total_steps(cfg, task.steps_per_epoch)
    groups = task.param_groups or param_groups(task.module, cfg.weight_decay)
    for g in groups:
        g["lr"] = cfg.lr * g.pop("lr_scale", 1.0)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise InputError(f"{task.name}: nothing to train (no parameter requires a gradient)")
    broadcast_params(params, dist)  # every rank starts from rank 0's weights, as DDP does
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, cfg.warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    state_module = task.module
    signature = {"task": task.name, "total_steps": total, "world": dist.world_size, **jsonable(task.signature),
                 "engine": jsonable({k: getattr(cfg, k) for k in ("lr", "weight_decay", "warmup", "grad_clip",
                                                                   "precision", "seed")})}
    partial = partial_dir(cfg.out) if cfg.out else None
    step, epoch, pos = 0, 0, 0
    resumed_from = 0
    if partial is not None:
        loaded = load_state(partial, signature, cfg.resume, dist)
        if loaded is not None:
            restore_state(loaded, state_module, opt, sched, scaler, dist)
            step, epoch, pos = int(loaded["step"]), int(loaded["epoch"]), int(loaded["pos"])
            resumed_from = step
            if dist.is_main:
                log.info("%s: resuming from %s at step %d of %d", task.name, partial, step, total)
    progress = cfg.progress and dist.is_main
    bar = tqdm(total=total, initial=step, desc=task.name, unit="step", disable=not progress, leave=False)
    losses: list[float] = []
    seen, t0 = 0, time.time()
    (task.train_mode or task.module.train)()
    while step < total:
        it: Iterator[Any] = iter(task.batches(epoch))
        for _ in range(pos):  # resumed mid-epoch: these batches were trained on already
            next(it, None)
        for gbatch in it:
            if step >= total:
                break
            local, offset = task.shard(gbatch, dist)
            ctx = StepContext(dist, device, step, epoch, gbatch, task.items(gbatch), offset)
            with autocast(device, cfg.precision):
                loss = task.loss(local, ctx)
            value = float(loss.detach().float())
            if dist.enabled:
                value = max_abs_or_nan(value, dist)
            if not math.isfinite(value):
                bar.close()
                raise TrainingDiverged(
                    f"{task.name}: the loss became {value} at step {step + 1} of {total} (lr {cfg.lr:g}); training "
                    "stopped and nothing was saved (try a lower --lr, --grad-clip or --precision fp32)")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if dist.enabled:
                average_gradients(params, dist)
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            with warnings.catch_warnings():  # fp16: a step the scaler skipped (inf gradients) still advances the schedule
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                sched.step()
            if task.after_step is not None:
                task.after_step()
            step += 1
            pos += 1
            losses.append(dist.mean(float(loss.detach().float())) if dist.enabled else value)
            seen += task.items(gbatch)
            if progress:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", items_s=f"{seen / max(1e-6, time.time() - t0):.0f}")
                bar.update(1)
            if partial is not None and cfg.save_every and step % cfg.save_every == 0 and step < total:
                save_state(partial, signature, state_module, opt, sched, scaler, step, epoch, pos, dist)
                after_save(step)
        else:
            epoch += 1
            pos = 0
            if step == 0 and epoch > 1:
                raise InputError(f"{task.name}: the data holds less than one batch")
            continue
    bar.close()
    task.module.eval()
    bad = [n for n, p in task.module.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"{task.name}: weights became NaN/inf ({bad[0]}, ...) at lr {cfg.lr:g}; nothing was "
                               "saved (try a lower --lr or --grad-clip)")
    seconds = time.time() - t0
    return FitResult(step, losses, seconds, seen / max(1e-6, seconds), resumed_from)


def after_save(step: int) -> None:
    """Called after each resume state is written. With ZSCIR_TRAIN_CRASH_AFTER_SAVE=k the process dies at
    step k as under `kill -9` (no clean-up runs): what the resume tests simulate."""
    crash_at = int(os.environ.get(CRASH_ENV, "0") or 0)
    if crash_at and step == crash_at:
        os._exit(137)


def finish(cfg: EngineConfig, dist: DistInfo) -> None:
    """After the final checkpoint is written: drop the resume state (rank 0) and wait for every rank."""
    if cfg.out and dist.is_main:
        shutil.rmtree(partial_dir(cfg.out), ignore_errors=True)
    dist.barrier()


@contextlib.contextmanager
def distributed(device: str = "") -> Iterator[DistInfo]:
    """init_distributed for a trainer run. A process group made here lives until the process exits (several
    trainers in one torchrun process reuse it: re-creating a group on torchrun's store can hang)."""
    made = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (tdist.is_available() and tdist.is_initialized())
    dist = init_distributed(device)
    if made:
        import atexit

        atexit.register(dist.close)
    yield dist


# --- glue for the trainers' own config dataclasses ------------------------------------------------------------------
#: config fields that never change the trained weights (left out of the resume signature)
NOT_IN_SIGNATURE = frozenset({"out", "device", "progress", "save_every", "resume", "feature_cache"})


def engine_config(cfg: Any, **override: Any) -> EngineConfig:
    """An EngineConfig from a trainer config holding fields of the same names (missing ones: the defaults)."""
    d = EngineConfig()
    kw = {k: getattr(cfg, k, getattr(d, k)) for k in EngineConfig.__dataclass_fields__}
    kw.update(override)
    return EngineConfig(**kw)


def config_signature(cfg: Any) -> dict:
    """The settings of a trainer config that change the result (what a resumed run must share)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_SIGNATURE}


def device_for(dist: DistInfo, requested: str) -> torch.device:
    """The device a trainer runs on: the DDP rank's device, else --device, else CUDA when present."""
    from zscir.utils.runtime import pick_device

    return dist.device if dist.enabled else pick_device(requested or None)
