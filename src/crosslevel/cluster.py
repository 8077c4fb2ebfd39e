"""Batch k-means on the group features of one (local) batch, as the reference CLD code does it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_kmeans(x: torch.Tensor, k: int, iters: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` (B×D) into ``k`` groups with plain k-means.

    Reference semantics (frank-xwang/CLD-UnsupervisedLearning):

    * centroids start as the first ``k`` rows of ``x`` (the batch is already shuffled);
    * each iteration assigns every row to the centroid at the smallest squared Euclidean
      distance, then sets every centroid to the plain mean of its members -- *not*
      re-normalised, and zero for an empty cluster;
    * the labels returned are the last assignment and the centroids are the means of exactly
      that assignment; gradients flow through the centroids (the assignment is discrete).

    Args:
        x: B×D features (the CLD group features are L2-normalised, so this is spherical
            k-means in the paper's sense).
        k: number of clusters, ≥ 1. With k > B the reference's arithmetic is followed on purpose
            (its ImageNet run, k = 120 on 64 images per GPU): the first assignment sees the B rows of
            ``x[:k]``, every later one k centroids of which k − B are zero; with distinct
            L2-normalised rows every image is its own group and k − B centroids stay zero.
        iters: number of assign/update iterations, ≥ 1.

    Returns:
        ``(labels, centroids)``: a long tensor of B cluster indices and k×D centroids in
        ``x``'s dtype.  No host synchronisation happens inside.
    """
    if x.dim() != 2:
        raise ValueError(f"batch_kmeans expects a B×D matrix, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"batch_kmeans needs k >= 1, got k={k}")
    if iters < 1:
        raise ValueError(f"batch_kmeans needs iters >= 1, got {iters}")
    centroids = x[:k]
    labels = x.new_zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        # ||x - c||² = ||x||² - 2 x·c + ||c||²; ||x||² is the same for every centroid of a row.
        distances = (centroids * centroids).sum(dim=1)[None, :] - 2.0 * x @ centroids.t()
        labels = distances.argmin(dim=1)
        members = F.one_hot(labels, k).to(x.dtype)  # B×k
        counts = members.sum(dim=0).clamp_min(1.0)  # an empty cluster keeps a zero centroid
        centroids = (members.t() @ x) / counts[:, None]
    return labels, centroids
