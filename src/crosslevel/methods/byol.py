"""BYOL's instance branch: a predictor on the online network regresses the target network's
projection of the other view; the target is an EMA of the online network and there are no
negatives (Grill et al. 2020). With the CLD term this is BYOL + CLD, CLD on the online f_G."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import Config
from ..losses import byol_loss
from .branch import InstanceBranch
from .moco import MomentumEncoder


def byol_momentum(base: float, progress: float) -> float:
    """BYOL's EMA schedule: ``1 − (1 − base)·(cos(π·progress) + 1) / 2``, from ``base`` to 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(1.0, progress)) + 1.0) / 2.0


class BYOLBranch(InstanceBranch):
    """Online: backbone → heads → f_I (the projection) → predictor. Target: an EMA copy of backbone +
    heads whose f_I of view a is the regression target of view b's prediction and vice versa:
    ``loss = ½ [byol(q(f_I(a)), z'(b)) + byol(q(f_I(b)), z'(a))]``. After the step the target moves
    towards the online network with BYOL's momentum schedule.

    The predictor is BYOL's MLP ``Linear(D, hidden) → BN → ReLU → Linear(hidden, D)``; its input is
    the L2-normalised f_I of this library's heads (BYOL feeds the unnormalised projection; its loss
    normalises both sides, so only the predictor's input scale differs).
    """

    def __init__(self, backbone: nn.Module, heads: nn.Module, dim: int, hidden: int, momentum: float, channels_last: bool = False) -> None:
        super().__init__()
        self.target = MomentumEncoder(backbone, heads, momentum, shuffle=False, channels_last=channels_last)
        self.predictor = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.base_momentum = momentum
        self._stepped = False

    @classmethod
    def from_config(cls, cfg: Config, num_train: int, backbone: nn.Module, heads: nn.Module) -> BYOLBranch:
        return cls(backbone, heads, cfg.feature_dim, cfg.predictor_hidden, cfg.ema_momentum, cfg.channels_last)

    def compile_encoders(self, mode: str) -> None:
        self.target.backbone.compile(mode=mode, dynamic=False)
        self.target.heads.compile(mode=mode, dynamic=False)

    def targets(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """2×B×D: the target network's f_I of views a and b."""
        return torch.stack([self.target(view) for view in views[:2]]).float()

    def loss(self, queries: Sequence[torch.Tensor], indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            raise ValueError("BYOL's loss needs the target network's projections (targets)")
        prediction_a, prediction_b = (self.predictor(query) for query in queries)
        self._stepped = True
        return 0.5 * (byol_loss(prediction_a, targets[1]) + byol_loss(prediction_b, targets[0]))

    def after_step(self, backbone: nn.Module, heads: nn.Module, progress: float) -> None:
        if self._stepped:
            self.target.momentum = byol_momentum(self.base_momentum, progress)
            self.target.update(backbone, heads)
        self._stepped = False

    def discard(self) -> None:
        self._stepped = False
