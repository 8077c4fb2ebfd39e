"""NPID's instance branch: a memory bank with one L2-normalised row per training image, and the
full softmax over it (as the CLD reference code uses it) or the original NPID's NCE with K noise
rows (Wu et al. 2018, ``nce_negatives=K``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..distributed import gather
from ..losses import bank_softmax_loss, nce_loss, nce_normaliser
from .branch import InstanceBranch


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


class NPIDBranch(InstanceBranch):
    """Each query view's f_I is classified among all N bank rows (temperature T_I) -- or, with
    ``nce_negatives`` = K > 0, told apart from K uniformly drawn noise rows by NCE (the normaliser Z
    is estimated on the first batch, averaged over the ranks, then kept and checkpointed). After the
    step the rows of the batch become ``normalise(m·row + (1 − m)·f_I)``, one view after the other."""

    def __init__(self, num_train: int, dim: int, temperature: float, momentum: float, nce_negatives: int = 0) -> None:
        super().__init__()
        self.bank = MemoryBank(num_train, dim, momentum)
        self.temperature = temperature
        self.nce_negatives = nce_negatives
        if nce_negatives:
            self.register_buffer("nce_normaliser", torch.tensor(-1.0))  # < 0: not estimated yet
        self._normaliser_checked = False  # the buffer is read once (a host sync), after any checkpoint load
        self._pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    @classmethod
    def from_config(cls, cfg: Config, num_train: int, backbone: nn.Module, heads: nn.Module) -> NPIDBranch:
        return cls(num_train, cfg.feature_dim, cfg.instance_temperature, cfg.bank_momentum, cfg.nce_negatives)

    def ddp_ignore(self) -> list[str]:
        return ["bank.memory"]

    def loss(self, queries: Sequence[torch.Tensor], indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        self._pending = (indices, [query.detach() for query in queries])
        return torch.stack([self.query_loss(query, indices, targets) for query in queries]).mean()

    def query_loss(self, query: torch.Tensor, indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        bank = self.bank.memory
        if not self.nce_negatives:
            return bank_softmax_loss(query, bank, indices, self.temperature)
        noise = torch.randint(len(bank), (len(query), self.nce_negatives), device=query.device)
        if not self._normaliser_checked:
            self._normaliser_checked = True
            if self.nce_normaliser < 0:  # a fresh run: estimate Z on its first batch, the same on every rank
                self.nce_normaliser.copy_(gather(nce_normaliser(query, bank, indices, noise, self.temperature)[None]).mean())
        return nce_loss(query, bank, indices, noise, self.temperature, self.nce_normaliser)

    def after_step(self, backbone: nn.Module, heads: nn.Module, progress: float) -> None:
        if self._pending is not None:
            indices, views = self._pending
            for view in views:
                self.bank.update(indices, view)
        self._pending = None

    def discard(self) -> None:
        self._pending = None
