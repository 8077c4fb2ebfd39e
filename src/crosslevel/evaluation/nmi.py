"""NMI(f, Y): k-means clusters of features against labels (or against another clustering)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score


def kmeans_labels(features: torch.Tensor, k: int, seed: int = 0) -> np.ndarray:
    """Cluster ids (N ints in [0, k)) of scikit-learn k-means (10 restarts) on L2-normalised N×D features."""
    points = F.normalize(features.float(), dim=1).cpu().numpy().astype(np.float64)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)


def nmi(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Normalised mutual information I(A; B) / √(H(A)·H(B)) of two labelings of the same N items."""
    return float(normalized_mutual_info_score(np.asarray(a), np.asarray(b), average_method="geometric"))


def feature_nmi(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """NMI(f, Y): k-means with k = number of distinct labels on ``features`` (N×D), against ``labels`` (N)."""
    labels_np = labels.cpu().numpy()
    return nmi(kmeans_labels(features, len(np.unique(labels_np)), seed), labels_np)
