"""The instance head f_I and group head f_G: Linear (or cosine NormLinear) → L2 normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormLinear(nn.Module):
    """Cosine layer: input and each weight column L2-normalised, no bias (``normlinear``).

    The weight (in_dim×out_dim) starts as the reference's: uniform(−1, 1), then every column
    rescaled to unit norm. The layer is scale-invariant in its columns, so a column's effective
    step scales as 1/‖w‖²: the initial norm is its learning rate (uniform(−1, 1) alone gives
    ‖w‖ ≈ √(in_dim/3), 13 for 512 inputs, a ~170× slower head).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.empty(in_dim, out_dim).uniform_(-1, 1), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class ProjectionHead(nn.Module):
    """B×in_dim → B×out_dim unit vectors: ``normalize(Linear(x))`` or ``normalize(NormLinear(x))``."""

    def __init__(self, in_dim: int, out_dim: int = 128, normlinear: bool = False) -> None:
        super().__init__()
        self.proj = NormLinear(in_dim, out_dim) if normlinear else nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=1)


class TwoHeads(nn.Module):
    """f_I and f_G on a shared pooled feature f, with an optional shared MLP trunk
    ``Linear(d, d) → [BatchNorm1d] → ReLU`` (``mlp``; ``mlp_bn``: the projector of SimCLR v2, BYOL
    and solo-learn, which BYOL needs not to collapse). ``mlp_shared=False`` gives f_G a trunk of its
    own (``group_trunk``, the same layers); ``trunk`` then feeds f_I alone, so that the parameter
    names of the shared default are unchanged.

    ``forward(f)`` returns ``(instance, group)``, each B×out_dim and L2-normalised.
    """

    def __init__(
        self, in_dim: int, out_dim: int = 128, normlinear: bool = False, mlp: bool = False, mlp_bn: bool = False, mlp_shared: bool = True
    ) -> None:
        super().__init__()

        def trunk() -> nn.Module:
            norm = [nn.BatchNorm1d(in_dim)] if mlp_bn else []
            return nn.Sequential(nn.Linear(in_dim, in_dim), *norm, nn.ReLU(inplace=True)) if mlp else nn.Identity()

        self.trunk = trunk()
        self.group_trunk = None if mlp_shared else trunk()
        self.instance = ProjectionHead(in_dim, out_dim, normlinear)
        self.group = ProjectionHead(in_dim, out_dim, normlinear)

    def group_parameter_names(self) -> list[str]:
        """Names of the parameters that only f_G uses (its head, and its own trunk when not shared)."""
        parts = {"group": self.group, "group_trunk": self.group_trunk}
        return [f"{prefix}.{name}" for prefix, part in parts.items() if part is not None for name, _ in part.named_parameters()]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(features)
        group_hidden = hidden if self.group_trunk is None else self.group_trunk(features)
        return self.instance(hidden), self.group(group_hidden)
