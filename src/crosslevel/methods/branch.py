"""The interface of an instance branch: what a method adds to the shared encoder.

A method (NPID, MoCo, ...) is one :class:`InstanceBranch` in one file. The training module
(:mod:`.module`) gives every view but the branch's last ``key_views`` to the query encoder
(backbone + heads), one forward pass per view, and then asks the branch for its loss:

    targets = branch.targets(key views)          # e.g. MoCo's keys; None for NPID
    loss = branch.loss(f_I of the query views, indices, targets) + λ · cld_loss(f_G of views 1, 2)
    ... optimiser step ...
    branch.after_step(backbone, heads)            # e.g. bank update, EMA + enqueue
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

    def compile_encoders(self) -> None:
        """``torch.compile`` in place whatever network the branch runs itself (``compile=true``)."""

    def targets(self, key_images: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """What the queries are compared with, from the ``key_views`` views (B×C×H×W each);
        None when the branch holds its targets itself. Runs under the training precision."""
        return None

    def loss(self, queries: Sequence[torch.Tensor], indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The float32 instance loss of the query views' f_I (V tensors B×D, unit rows) of the images
        ``indices`` (B); remembers what :meth:`after_step` applies."""
        raise NotImplementedError

    def after_step(self, backbone: nn.Module, heads: nn.Module) -> None:
        """After the optimiser step: apply what the last :meth:`loss` remembered (once)."""

    def discard(self) -> None:
        """Forget what the last :meth:`loss` remembered: its step was skipped."""
