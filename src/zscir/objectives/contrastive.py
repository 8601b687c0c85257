"""Symmetric InfoNCE (CLIP's loss), optionally with negatives gathered across DDP processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    symmetric: bool = True,
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Contrastive loss between row-aligned embeddings a (B, D) and b (B, D); both L2-normalised.

    logit_scale multiplies cosine similarities (1 / temperature). With DDP, pass the gathered
    a_all / b_all (world*B, D) and this process's offset into them: the local rows are scored against
    every process's rows, so the negatives are the global batch."""
    a_all = a if a_all is None else a_all
    b_all = b if b_all is None else b_all
    labels = torch.arange(a.shape[0], device=a.device) + offset
    scale = logit_scale if isinstance(logit_scale, torch.Tensor) else torch.tensor(float(logit_scale))
    loss = F.cross_entropy(scale * a @ b_all.T, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scale * b @ a_all.T, labels)) / 2
    return loss
