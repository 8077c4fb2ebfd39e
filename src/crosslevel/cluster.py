"""Grouping of one batch's group features, as the reference CLD code does it: batch k-means, or k-way
normalised cuts (spectral clustering on the batch's cosine affinities). Both return ``(labels, centroids)``."""

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
        centroids = cluster_means(x, labels, k)
    return labels, centroids


def cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """k×D plain means of the rows of ``x`` (B×D) in each of the ``k`` clusters of ``labels`` (B);
    an empty cluster's centroid is zero (the reference counts it as 1). Differentiable in ``x``."""
    members = F.one_hot(labels, k).to(x.dtype)  # B×k
    counts = members.sum(dim=0).clamp_min(1.0)
    return (members.t() @ x) / counts[:, None]


@torch.no_grad()
def spectral_embedding(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The k-way normalised-cuts embedding (Shi & Malik) of the rows of ``x`` (B×D): B×min(dims, B).

    As the reference's ``kway_normcuts``: affinities ``W = max(A, Aᵀ)`` with ``A = |cos(x_i, x_j)|``
    and a zero diagonal, degrees ``d = W·1``, the normalised Laplacian ``L = D^-½ (D − W) D^-½``;
    its eigenvectors ``U`` of the ``dims`` smallest eigenvalues, mapped back as ``D^-½ U``. Computed in
    float32 at least (float64 stays float64); no gradient (only the assignment uses it).
    """
    x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    unit = F.normalize(x, dim=1)
    affinity = (unit @ unit.t()).abs()
    affinity = torch.maximum(affinity, affinity.t()).fill_diagonal_(0.0)
    inv_sqrt_degree = affinity.sum(dim=0).clamp_min(1e-12).rsqrt()  # a row with no affinity (a zero feature, B = 1) stays finite
    identity = torch.eye(len(x), dtype=x.dtype, device=x.device)
    laplacian = identity - inv_sqrt_degree[:, None] * affinity * inv_sqrt_degree[None, :]
    _, eigenvectors = torch.linalg.eigh(laplacian)  # ascending eigenvalues
    return inv_sqrt_degree[:, None] * eigenvectors[:, :dims]


def batch_ncuts(x: torch.Tensor, k: int, iters: int = 5, eigenvectors: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` (B×D) into ``k`` groups with k-way normalised cuts.

    Reference semantics (its ``spectral_clustering``): :func:`batch_kmeans` (first-k init, ``iters``
    iterations) on :func:`spectral_embedding` with ``eigenvectors`` columns gives the labels; the
    centroids are the plain means of ``x``'s rows in each group (zero if empty), so that gradients
    flow through them as with :func:`batch_kmeans`.

    Args:
        x: B×D features (the CLD group features).
        k: number of groups, ≥ 1.
        iters: k-means iterations in the embedding, ≥ 1.
        eigenvectors: columns of the embedding (the reference's ``k_eigen``, default 10); capped at B.

    Returns:
        ``(labels, centroids)``: B long group indices and k×D centroids in ``x``'s dtype.
    """
    if eigenvectors < 1:
        raise ValueError(f"batch_ncuts needs eigenvectors >= 1, got {eigenvectors}")
    labels, _ = batch_kmeans(spectral_embedding(x, eigenvectors), k, iters)
    return labels, cluster_means(x, labels, k)


def group_batch(
    x: torch.Tensor, k: int, iters: int = 5, grouping: str = "kmeans", eigenvectors: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_kmeans(x, k, iters)`` or (``grouping="ncuts"``) ``batch_ncuts(x, k, iters, eigenvectors)``."""
    if grouping == "kmeans":
        return batch_kmeans(x, k, iters)
    if grouping == "ncuts":
        return batch_ncuts(x, k, iters, eigenvectors)
    raise ValueError(f"grouping must be 'kmeans' or 'ncuts', got {grouping!r}")
