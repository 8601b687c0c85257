"""LoRA adapters for nn.Linear and 1x1 nn.Conv2d (pointwise convolutions), with merge and save.

    y = W x + (alpha / rank) * B(A(dropout(x)))      A: in->rank (random), B: rank->out (zeros)

`apply_lora(model, targets, rank, alpha, dropout)` replaces the matching submodules in place and freezes
everything else; `lora_state_dict` returns only the adapter tensors (a small checkpoint); `merge_lora`
folds the adapters into the base weights so inference costs nothing extra.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LoRAConfig:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.1


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, cfg: LoRAConfig) -> None:
        super().__init__()
        self.base = base
        self.scale = cfg.alpha / cfg.rank
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, cfg.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:  # some callers (e.g. attention modules) read .weight directly
        return self.base.weight + self.scale * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


class LoRAConv1x1(nn.Module):
    """LoRA for a pointwise (1x1, groups=1) convolution, i.e. a per-pixel linear map."""

    def __init__(self, base: nn.Conv2d, cfg: LoRAConfig) -> None:
        super().__init__()
        self.base = base
        self.scale = cfg.alpha / cfg.rank
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, base.in_channels))
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels, cfg.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = torch.einsum("oc,bchw->bohw", self.lora_B @ self.lora_A, self.dropout(x))
        return self.base(x) + self.scale * delta

    def merged(self) -> nn.Conv2d:
        with torch.no_grad():
            self.base.weight.add_(self.scale * (self.lora_B @ self.lora_A)[:, :, None, None])
        return self.base


def is_pointwise_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.stride == (1, 1)


def apply_lora(
    model: nn.Module, targets: Callable[[str, nn.Module], bool], cfg: LoRAConfig, freeze: bool = True
) -> list[str]:
    """Wrap every submodule for which targets(name, module) is true (Linear or 1x1 Conv2d).

    With freeze=True every other parameter of `model` stops requiring gradients. Returns the wrapped names."""
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    wrapped: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not targets(full, child):
                continue
            if isinstance(child, nn.Linear):
                new: nn.Module = LoRALinear(child, cfg)
            elif is_pointwise_conv(child):
                new = LoRAConv1x1(child, cfg)
            else:
                continue
            setattr(module, child_name, new)
            wrapped.append(full)
    return wrapped


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed by their full names."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base layer in place; returns how many were merged."""
    n = 0
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (LoRALinear, LoRAConv1x1)):
                setattr(module, child_name, child.merged())
                n += 1
    return n


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
