"""The NPID memory bank: one L2-normalised feature row per training image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather


class MemoryBank(nn.Module):
    """N×D bank of instance features, saved with the model (a buffer), updated without gradient.

    Initialised as the official code does: uniform in ±1/sqrt(D/3), not normalised.
    """

    def __init__(self, size: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory", torch.rand(size, dim).mul_(2 * bound).sub_(bound))
        self.momentum = momentum

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """``row[i] ← normalise(m·row[i] + (1 − m)·f)`` for each (index, feature) of all ranks.

        Args:
            indices: B long indices into the bank (this rank's batch).
            features: B×D features (detached); gathered from every rank before the update.
        """
        indices, features = gather(indices), gather(features.detach().to(self.memory.dtype))
        rows = self.memory.index_select(0, indices).mul_(self.momentum).add_(features, alpha=1 - self.momentum)
        self.memory.index_copy_(0, indices, F.normalize(rows, dim=1))
