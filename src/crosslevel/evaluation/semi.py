"""Semi-supervised evaluation: a class-balanced, seeded fraction of the training labels."""

from __future__ import annotations

import math

import numpy as np

from ..errors import CrossLevelError


def balanced_fraction(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``fraction`` of each class (⌈fraction·n_c⌉ per class, at least one), seeded."""
    if not 0 < fraction <= 1:
        raise CrossLevelError(f"--fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(rng.choice(members, size=max(1, math.ceil(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(keep))
