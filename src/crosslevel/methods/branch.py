"""The interface of an instance branch: what a method adds to the shared encoder.

A method (NPID, MoCo, SimCLR, BYOL) is one :class:`InstanceBranch` in one file. The training module
(:mod:`.module`) gives every view but the branch's last ``key_views`` to the query encoder
(backbone + heads), one forward pass per view, and then asks the branch for its loss:

    targets = branch.targets(all views)           # MoCo's keys, BYOL's target projections; None otherwise
    loss = branch.loss(f_I of the query views, indices, targets) + λ · cld_loss(f_G of views 1, 2)
    ... optimiser step ...
    branch.after_step(backbone, heads, progress)  # bank update, EMA + enqueue, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import Config


class InstanceBranch(nn.Module):
    """One instance-discrimination method: its state, its loss and its update after the step.

    Subclasses set ``key_views`` (views at the end of a batch that the branch encodes itself) and
    implement :meth:`loss`; the other hooks default to doing nothing.
    """

    key_views: int = 0

    def check(self, cfg: Config, world_size: int) -> None:
        """Raise a :class:`~crosslevel.errors.CrossLevelError` if the branch cannot train on ``world_size`` devices."""

    def ddp_ignore(self) -> list[str]:
        """Names (relative to the branch) of buffers that every rank updates the same way itself:
        DDP must not broadcast them from rank 0."""
        return []

    def compile_encoders(self, mode: str) -> None:
        """``torch.compile`` in place, with ``mode``, whatever network the branch runs itself (``compile=true``)."""

    def targets(self, views: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """What the queries are compared with, computed by the branch's own network from the batch's
        views (all of them, B×C×H×W each; MoCo reads its ``key_views``, BYOL the query views); None
        when there is nothing to compute. Runs under the training precision, without gradient."""
        return None

    def loss(self, queries: Sequence[torch.Tensor], indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The float32 instance loss of the query views' f_I (V tensors B×D, unit rows) of the images
        ``indices`` (B); remembers what :meth:`after_step` applies."""
        raise NotImplementedError

    def query_loss(self, query: torch.Tensor, indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The float32 instance loss of one more query (B×D, unit rows) of the images ``indices``
        against the same targets as :meth:`loss`, remembering nothing (the jigsaw query). Branches
        with a bank or a queue implement it."""
        raise NotImplementedError(f"{type(self).__name__} scores no extra queries (jigsaw needs instance=npid or moco)")

    def after_step(self, backbone: nn.Module, heads: nn.Module, progress: float) -> None:
        """After the optimiser step: apply what the last :meth:`loss` remembered (once).
        ``progress`` is the fraction of training done, in [0, 1] (BYOL's EMA schedule reads it)."""

    def discard(self) -> None:
        """Forget what the last :meth:`loss` remembered: its step was skipped."""
