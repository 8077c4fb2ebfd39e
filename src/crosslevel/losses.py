"""Losses as pure functions: NPID memory-bank softmax, MoCo InfoNCE and the cross-level (CLD) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cluster import batch_kmeans


def bank_softmax_loss(
    features: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """NPID instance discrimination with a full softmax over the memory bank.

    Args:
        features: B×D L2-normalised instance features f_I(x).
        bank: N×D memory bank (one row per training image; treated as a constant).
        indices: B long indices of the images in the data set (the positive rows).
        temperature: T_I.

    Returns:
        Scalar mean cross-entropy of ``features·bankᵀ / T`` against ``indices``.
    """
    logits = features @ bank.detach().t() / temperature
    return F.cross_entropy(logits, indices)


def moco_loss(
    queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """MoCo's InfoNCE: each query against its own key (positive) and every queue entry (negatives).

    Args:
        queries: B×D L2-normalised query features (query encoder).
        keys: B×D L2-normalised keys of the same images (momentum encoder; treated as constants).
        queue: K×D negatives (keys of earlier batches; treated as constants).
        temperature: T.

    Returns:
        Scalar mean cross-entropy of ``[q·k, q·queueᵀ] / T`` with the positive at column 0.
    """
    positive = (queries * keys.detach()).sum(dim=1, keepdim=True)
    negatives = queries @ queue.detach().t()
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, queries.new_zeros(len(queries), dtype=torch.long))


def cross_level_term(
    group: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """One direction of CLD: classify each instance among the other view's groups.

    Args:
        group: B×D group features f_G of one view.
        centroids: k×D centroids found on the other view.
        labels: B group indices of the other view (the targets).
        temperature: T_G.
    """
    return F.cross_entropy(group @ centroids.t() / temperature, labels)


def cld_loss(
    group_a: torch.Tensor,
    group_b: torch.Tensor,
    num_groups: int,
    temperature: float = 0.2,
    iters: int = 5,
) -> torch.Tensor:
    """The symmetric cross-level discrimination loss of the paper (eq. 3, second line).

    ``L = ½ [CE(f_G(x_a)·M_bᵀ / T, Γ_b) + CE(f_G(x_b)·M_aᵀ / T, Γ_a)]`` where
    ``(Γ_v, M_v) = batch_kmeans(f_G(x_v), num_groups, iters)``.

    Args:
        group_a: B×D L2-normalised group features of view a.
        group_b: B×D L2-normalised group features of view b (same images, same order).
        num_groups: k, the number of local clusters per view (< B to be meaningful; k ≥ B: every
            image is its own group, a cross-view instance loss, as in the reference's ImageNet run).
        temperature: T_G.
        iters: k-means iterations.

    Returns:
        A scalar tensor; gradients flow into both views' features and their centroids.
    """
    if group_a.shape != group_b.shape:
        raise ValueError(f"the two views' group features differ in shape: {tuple(group_a.shape)} vs {tuple(group_b.shape)}")
    labels_a, centroids_a = batch_kmeans(group_a, num_groups, iters)
    labels_b, centroids_b = batch_kmeans(group_b, num_groups, iters)
    return 0.5 * (
        cross_level_term(group_a, centroids_b, labels_b, temperature)
        + cross_level_term(group_b, centroids_a, labels_a, temperature)
    )
