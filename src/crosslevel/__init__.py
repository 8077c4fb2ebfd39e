"""crosslevel: unsupervised representation learning with Cross-Level Discrimination.

Public API (see README): :func:`crosslevel.load_backbone`, :func:`crosslevel.cluster.batch_kmeans`,
:func:`crosslevel.cluster.batch_ncuts`, :func:`crosslevel.losses.cld_loss`,
:class:`crosslevel.losses.CrossLevelLoss`, :func:`crosslevel.evaluation.knn_scores`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_backbone(path: str | Path) -> nn.Module:
    """The backbone a ``crosslevel export`` file holds, in eval mode (see :func:`crosslevel.models.exported.load_backbone`)."""
    from .models.exported import load_backbone as load

    return load(path)
