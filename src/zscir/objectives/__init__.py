"""Training objectives. Each takes tensors (and its own settings), returns a scalar loss."""

from zscir.objectives.contrastive import info_nce

__all__ = ["info_nce"]
