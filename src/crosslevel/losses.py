"""Losses as pure functions: NPID memory-bank softmax and NCE, MoCo InfoNCE, SimCLR NT-Xent, BYOL's
regression and the cross-level (CLD) loss; :class:`CrossLevelLoss`, the CLD term as a module for any
training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cluster import group_batch
from .distributed import gather_with_grad, rank, world_size


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


def nce_loss(
    features: torch.Tensor,
    bank: torch.Tensor,
    indices: torch.Tensor,
    noise: torch.Tensor,
    temperature: float,
    normaliser: float | torch.Tensor,
) -> torch.Tensor:
    """The original NPID's noise-contrastive estimation with K uniformly drawn noise rows (Wu et al.
    2018, eq. 5-6; the reference's ``NCEAverage`` + ``NCECriterion``).

    ``P(i|v) = exp(v·m_i / T) / Z``; with ``P_n = 1/N`` the loss is
    ``−1/B Σ_b [log P(i_b|v_b) / (P(i_b|v_b) + K·P_n) + Σ_j log K·P_n / (P(j|v_b) + K·P_n)]``.

    Args:
        features: B×D L2-normalised instance features f_I(x).
        bank: N×D memory bank (a constant).
        indices: B long indices of the images (the positive rows).
        noise: B×K long indices of the noise rows (uniform over N; may include the positive, as in
            the reference).
        temperature: T_I.
        normaliser: Z, the constant estimate of the partition function (see :func:`nce_normaliser`).
    """
    bank = bank.detach()
    positive = torch.exp((features * bank[indices]).sum(dim=1) / temperature) / normaliser  # B
    negatives = torch.exp(torch.einsum("bd,bkd->bk", features, bank[noise]) / temperature) / normaliser  # B×K
    noise_mass = noise.shape[1] / bank.shape[0]  # K·P_n
    eps = 1e-7  # the reference's guard against log(0)
    log_positive = torch.log(positive / (positive + noise_mass + eps))
    log_negatives = torch.log(noise_mass / (negatives + noise_mass + eps))
    return -(log_positive.sum() + log_negatives.sum()) / len(features)


def nce_normaliser(
    features: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, noise: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NPID's Z: ``N · mean exp(v·m / T)`` over a batch's positive row and its K noise rows (B×(K+1)
    values, as the reference's ``out``), taken once from the first batch and kept constant (the
    reference's ``params[2]``). Returns a 0-d tensor, no gradient."""
    with torch.no_grad():
        rows = torch.cat([indices[:, None], noise], dim=1)  # B×(K+1), the positive first
        return torch.exp(torch.einsum("bd,bkd->bk", features, bank[rows]) / temperature).mean() * bank.shape[0]


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


def nt_xent_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B embeddings: each one's positive is the other view of its image, its
    negatives the other 2B − 2 embeddings of the batch (Chen et al. 2020).

    Args:
        view_a: B×D L2-normalised embeddings of view a (under DDP: the global batch, gathered with
            gradients, so that every rank computes the same loss).
        view_b: B×D L2-normalised embeddings of view b, same images in the same order.
        temperature: τ.

    Returns:
        Scalar mean over the 2B anchors of ``−log exp(z_i·z_p/τ) / Σ_{j≠i} exp(z_i·z_j/τ)``.
    """
    embeddings = torch.cat([view_a, view_b])  # 2B×D
    logits = embeddings @ embeddings.t() / temperature
    logits = logits.masked_fill(torch.eye(len(embeddings), dtype=torch.bool, device=logits.device), float("-inf"))
    batch = len(view_a)
    partners = torch.arange(2 * batch, device=logits.device).roll(batch)  # i ↔ i ± B, made on the device (no copy, no sync)
    return F.cross_entropy(logits, partners)


def byol_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL's regression: ``2 − 2·cos(p, z')`` averaged over the batch (Grill et al. 2020, eq. 2).

    Args:
        predictions: B×D predictor outputs of the online network (any norm).
        targets: B×D target-network projections of the other view (constants).
    """
    return (2 - 2 * F.cosine_similarity(predictions, targets.detach(), dim=1)).mean()


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
    grouping: str = "kmeans",
    eigenvectors: int = 10,
    local_rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The symmetric cross-level discrimination loss of the paper (eq. 3, second line).

    ``L = ½ [CE(f_G(x_a)·M_bᵀ / T, Γ_b) + CE(f_G(x_b)·M_aᵀ / T, Γ_a)]`` where
    ``(Γ_v, M_v) = group_batch(f_G(x_v), num_groups, iters, grouping, eigenvectors)``.

    Args:
        group_a: B×D L2-normalised group features of view a.
        group_b: B×D L2-normalised group features of view b (same images, same order).
        num_groups: k, the number of groups per view (< B to be meaningful; k ≥ B: every image is
            its own group, a cross-view instance loss, as in the reference's ImageNet run).
        temperature: T_G.
        iters: k-means iterations (for ``ncuts``: in the spectral embedding).
        grouping: ``kmeans`` (batch k-means) or ``ncuts`` (k-way normalised cuts).
        eigenvectors: ``ncuts`` only: columns of the spectral embedding.
        local_rows: ``(start, stop)``: the batch is the global one (every device's rows) and the
            cross-entropy averages over these rows only, this device's (``kmeans_scope=global``).

    Returns:
        A scalar tensor; gradients flow into both views' features and their centroids.
    """
    _check_same_shape(group_a, group_b)
    labels_a, centroids_a = group_batch(group_a, num_groups, iters, grouping, eigenvectors)
    labels_b, centroids_b = group_batch(group_b, num_groups, iters, grouping, eigenvectors)
    rows = slice(*local_rows) if local_rows is not None else slice(None)
    return 0.5 * (
        cross_level_term(group_a[rows], centroids_b, labels_b[rows], temperature)
        + cross_level_term(group_b[rows], centroids_a, labels_a[rows], temperature)
    )


def _check_same_shape(group_a: torch.Tensor, group_b: torch.Tensor) -> None:
    if group_a.shape != group_b.shape:
        raise ValueError(f"the two views' group features differ in shape: {tuple(group_a.shape)} vs {tuple(group_b.shape)}")


class CrossLevelLoss(nn.Module):
    """CLD as a module: ``forward(group_a, group_b)`` (two B×D L2-normalised group features of two
    views of the same images, same order) → scalar, equal to :func:`cld_loss`.

    ``scope="local"`` groups each device's batch alone, as the reference. ``scope="global"`` gathers
    every device's group features (gradients flow back to each device's own rows), groups the global
    batch identically on every rank (initial centroids: its first k rows, rank 0's first) and averages
    the cross-entropy over this device's rows; with DDP's gradient averaging this equals one process
    on the concatenated batch, and ``num_groups`` may exceed B (it must stay below the global batch).
    No parameters; ``compile`` compiles the grouping + loss (the gather stays eager).

    Usage, beside any instance loss (``head`` maps backbone features to the group space)::

        cld = CrossLevelLoss(num_groups=128, temperature=0.2)
        group_a, group_b = (F.normalize(head(backbone(v)), dim=1) for v in (view_a, view_b))
        loss = instance_loss + cld_weight * cld(group_a, group_b)

    Args:
        num_groups: k, groups per view (per batch grouped: local or global).
        temperature: T_G.
        iters: k-means iterations.
        grouping: ``kmeans`` or ``ncuts`` (k-way normalised cuts).
        scope: ``local`` or ``global`` (see above).
        eigenvectors: ``ncuts``: columns of the spectral embedding (the reference's ``k_eigen``).
        compile: ``torch.compile`` the grouping and the loss: True, or torch.compile's ``mode``
            (``"reduce-overhead"``: as a CUDA graph on a GPU).
    """

    def __init__(
        self,
        num_groups: int,
        temperature: float = 0.2,
        iters: int = 5,
        grouping: str = "kmeans",
        scope: str = "local",
        eigenvectors: int = 10,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        if grouping not in ("kmeans", "ncuts") or scope not in ("local", "global"):
            raise ValueError(f"grouping must be kmeans or ncuts and scope local or global; got {grouping!r}, {scope!r}")
        self.num_groups, self.temperature, self.iters = num_groups, temperature, iters
        self.grouping, self.scope, self.eigenvectors = grouping, scope, eigenvectors
        mode = compile if isinstance(compile, str) else None
        self._loss = torch.compile(cld_loss, mode=mode, dynamic=False) if compile else cld_loss

    def forward(self, group_a: torch.Tensor, group_b: torch.Tensor) -> torch.Tensor:
        local_rows = None
        if self.scope == "global" and world_size() > 1:
            _check_same_shape(group_a, group_b)
            batch, dim = group_a.shape
            both = gather_with_grad(torch.cat([group_a, group_b], dim=1))  # one all-gather: W·B × 2D
            group_a, group_b = both[:, :dim], both[:, dim:]
            local_rows = (rank() * batch, (rank() + 1) * batch)
        return self._loss(
            group_a, group_b, self.num_groups, self.temperature, self.iters, self.grouping, self.eigenvectors, local_rows
        )

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, temperature={self.temperature}, iters={self.iters}, grouping={self.grouping}, scope={self.scope}"
