"""SimCLR's instance branch: in-batch NT-Xent between the two views, no bank, no queue, no second
network (Chen et al. 2020). With the CLD term this is SimCLR + CLD."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import Config
from ..distributed import gather_with_grad
from ..losses import nt_xent_loss
from .branch import InstanceBranch


class SimCLRBranch(InstanceBranch):
    """Each view's f_I is classified among the 2B − 1 other embeddings of the global batch (its
    other view is the positive) at temperature τ. Under DDP every rank gathers the global batch with
    gradients and computes the same loss, so the negatives are those of all devices."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg: Config, num_train: int, backbone: nn.Module, heads: nn.Module) -> SimCLRBranch:
        return cls(cfg.instance_temperature)

    def loss(self, queries: Sequence[torch.Tensor], indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        view_a, view_b = (gather_with_grad(query) for query in queries)
        return nt_xent_loss(view_a, view_b, self.temperature)
