"""The paper's label-free model score NMI(f, f')·R(f, f') (§4, Fig. 7) and rank agreement."""

from __future__ import annotations

import torch
from scipy.stats import spearmanr

from .nmi import kmeans_labels, nmi
from .retrieval import view_retrieval


def unsupervised_score(features: torch.Tensor, view_features: torch.Tensor, k: int, seed: int = 0) -> dict[str, float]:
    """Score features f (N×D, clean images) against f' (N×D, one augmented view of the same images).

    - ``nmi``: NMI between the k-means clustering (k clusters) of f and that of f'.
    - ``retrieval``: R(f, f') in %, images whose nearest augmented view is their own.
    - ``score``: nmi · retrieval / 100, in [0, 1].
    """
    agreement = nmi(kmeans_labels(features, k, seed), kmeans_labels(view_features, k, seed))
    retrieval = view_retrieval(features, view_features)
    return {"nmi": agreement, "retrieval": retrieval, "score": agreement * retrieval / 100.0}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation ρ of two equally long score lists (NaN when either is constant)."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)
