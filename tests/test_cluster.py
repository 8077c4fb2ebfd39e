"""batch_kmeans against a naive loop implementation of the reference semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslevel.cluster import batch_kmeans, batch_ncuts, group_batch, spectral_embedding


def naive_kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-by-point k-means: first-k init, squared-Euclidean assignment, plain means, zero if empty."""
    centroids = [x[j] for j in range(k)]
    labels: list[int] = []
    for _ in range(iters):
        labels = []
        for i in range(x.shape[0]):
            distances = [((x[i] - c) ** 2).sum() for c in centroids]
            labels.append(min(range(k), key=lambda j: distances[j].item()))
        new = []
        for j in range(k):
            members = [x[i] for i in range(x.shape[0]) if labels[i] == j]
            new.append(torch.stack(members).mean(0) if members else torch.zeros_like(x[0]))
        centroids = new
    return torch.tensor(labels), torch.stack(centroids)


@pytest.mark.parametrize("batch,dim,k,iters", [(12, 5, 3, 1), (20, 8, 4, 5), (16, 3, 16, 2), (30, 6, 7, 5)])
def test_matches_naive_values_and_gradients(batch: int, dim: int, k: int, iters: int) -> None:
    torch.manual_seed(batch * 100 + k)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, dtype=torch.float64), dim=1)
    x_fast = x.clone().requires_grad_(True)
    x_naive = x.clone().requires_grad_(True)
    labels, centroids = batch_kmeans(x_fast, k, iters)
    ref_labels, ref_centroids = naive_kmeans(x_naive, k, iters)
    assert labels.dtype == torch.long and labels.shape == (batch,)
    assert centroids.dtype == x.dtype and centroids.shape == (k, dim)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(centroids, ref_centroids)
    weights = torch.randn(k, dim, dtype=torch.float64)
    (centroids * weights).sum().backward()
    (ref_centroids * weights).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_naive.grad)


def test_analytic_two_clusters() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    labels, centroids = batch_kmeans(x, 2, iters=5)
    assert labels.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(centroids, torch.tensor([[0.95, 0.05], [0.05, 0.95]]))


def test_empty_cluster_gets_zero_centroid() -> None:
    # Rows 0 and 1 are identical, so centroid 1 starts equal to centroid 0; argmin picks 0 for both.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6]])
    labels, centroids = batch_kmeans(x, 2, iters=1)
    assert labels.tolist() == [0, 0, 0]
    torch.testing.assert_close(centroids[1], torch.zeros(2))


def test_centroids_are_not_renormalised() -> None:
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.2, 1.0], [1.0, -0.2], [-0.2, 1.0]]), dim=1)
    _, centroids = batch_kmeans(x, 2, iters=3)
    assert (centroids.norm(dim=1) < 1.0 - 1e-4).all()


def test_k_equal_batch_makes_singletons() -> None:
    x = torch.randn(6, 4)
    labels, centroids = batch_kmeans(x, 6, iters=3)
    assert labels.tolist() == list(range(6))
    torch.testing.assert_close(centroids, x)


def test_bad_k_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="k"):
        batch_kmeans(torch.randn(6, 4), 0)


def naive_reference_kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[list[int], torch.Tensor]:
    """The reference's k-means written as loops: init ``x[:k]`` (fewer rows when k > B), argmin of the
    squared distance, then k plain means with a count of 1 for an empty cluster (a zero centroid)."""
    centroids = [row.clone() for row in x[:k]]
    labels: list[int] = []
    for _ in range(iters):
        labels = [min(range(len(centroids)), key=lambda j: float(((row - centroids[j]) ** 2).sum())) for row in x]
        sums = [torch.zeros(x.shape[1], dtype=x.dtype) for _ in range(k)]
        counts = [0] * k
        for row, label in zip(x, labels):
            sums[label] += row
            counts[label] += 1
        centroids = [total / max(count, 1) for total, count in zip(sums, counts)]
    return labels, torch.stack(centroids)


@pytest.mark.parametrize("rows,k", [(12, 3), (8, 8), (6, 10)])
def test_matches_naive_reference_including_k_above_batch(rows: int, k: int) -> None:
    x = torch.nn.functional.normalize(torch.randn(rows, 5, dtype=torch.float64), dim=1)
    labels, centroids = batch_kmeans(x, k, iters=4)
    want_labels, want_centroids = naive_reference_kmeans(x, k, 4)
    assert labels.tolist() == want_labels
    torch.testing.assert_close(centroids, want_centroids)


def test_k_above_batch_gives_singletons_and_zero_centroids() -> None:
    """The reference's ImageNet case (k = 120 > 64 images per GPU), scaled down: k = 7 on 4 unit rows."""
    x = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    labels, centroids = batch_kmeans(x, 7, iters=5)
    assert labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(centroids[:4], x)
    assert centroids[4:].abs().sum() == 0


def naive_ncuts(x: torch.Tensor, k: int, iters: int, eigenvectors: int) -> tuple[list[int], torch.Tensor]:
    """k-way normalised cuts written out in numpy: |cosine| affinities with a zero diagonal, the
    normalised Laplacian I − D^-½ W D^-½, D^-½ times its eigenvectors of the smallest eigenvalues,
    the reference's k-means (loops) on that embedding, then per-group means of ``x`` (loops)."""
    rows = x.detach().numpy()
    n = len(rows)
    affinity = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                affinity[i, j] = abs(rows[i] @ rows[j]) / (np.linalg.norm(rows[i]) * np.linalg.norm(rows[j]))
    degree = affinity.sum(axis=0)
    laplacian = np.diag(degree**-0.5) @ (np.diag(degree) - affinity) @ np.diag(degree**-0.5)
    _, vectors = np.linalg.eigh(laplacian)
    embedding = torch.from_numpy(np.diag(degree**-0.5) @ vectors[:, : min(eigenvectors, n)])
    labels, _ = naive_reference_kmeans(embedding, k, iters)
    means = []
    for j in range(k):
        members = [x[i] for i in range(n) if labels[i] == j]
        means.append(torch.stack(members).mean(0) if members else torch.zeros_like(x[0]))
    return labels, torch.stack(means)


@pytest.mark.parametrize("rows,dim,k,eigenvectors", [(20, 6, 4, 4), (32, 8, 5, 10), (12, 5, 3, 30), (10, 4, 12, 3)])
def test_ncuts_matches_naive_numpy_reference_values_and_gradients(rows: int, dim: int, k: int, eigenvectors: int) -> None:
    torch.manual_seed(rows * 10 + k)
    x = torch.nn.functional.normalize(torch.randn(rows, dim, dtype=torch.float64), dim=1)
    fast, naive = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    labels, centroids = batch_ncuts(fast, k, iters=5, eigenvectors=eigenvectors)
    want_labels, want_centroids = naive_ncuts(naive, k, 5, eigenvectors)
    assert labels.dtype == torch.long and centroids.shape == (k, dim) and centroids.dtype == x.dtype
    assert labels.tolist() == want_labels
    torch.testing.assert_close(centroids, want_centroids)
    weights = torch.randn(k, dim, dtype=torch.float64)
    (centroids * weights).sum().backward()
    (want_centroids * weights).sum().backward()
    torch.testing.assert_close(fast.grad, naive.grad)


def two_blobs(per_blob: int, spread: float) -> tuple[torch.Tensor, list[int]]:
    """Unit rows around e_0 (even rows) and e_1 (odd rows) of R^4, interleaved; the blob of each row."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[[0, 1] * per_blob]
    x = torch.nn.functional.normalize(centres + spread * torch.randn(2 * per_blob, 4, generator=generator), dim=1)
    return x, [0, 1] * per_blob


def test_ncuts_separates_two_blobs() -> None:
    x, blobs = two_blobs(per_blob=12, spread=0.1)
    labels, centroids = batch_ncuts(x, 2, iters=5, eigenvectors=2)
    assert labels.tolist() == blobs
    torch.testing.assert_close(centroids, torch.stack([x[0::2].mean(0), x[1::2].mean(0)]))


def test_ncuts_embedding_of_two_disconnected_blobs_is_constant_per_blob() -> None:
    """Exactly orthogonal blobs: two connected components, so the two null eigenvectors of the
    normalised Laplacian span the blob indicators and D^-½ U is constant on each blob."""
    x = torch.tensor([[1, 0, 0.1], [0, 1, 0], [1, 0, 0.2], [0, 1, 0], [1, 0, 0.3], [0, 1, 0]], dtype=torch.float64)
    embedding = spectral_embedding(x, 2)
    torch.testing.assert_close(embedding[0::2], embedding[0:1].expand(3, 2))
    torch.testing.assert_close(embedding[1::2], embedding[1:2].expand(3, 2))
    assert (embedding[0] - embedding[1]).norm() > 1e-3


def test_group_batch_dispatches_and_rejects_unknown_groupings() -> None:
    x = torch.nn.functional.normalize(torch.randn(16, 5, dtype=torch.float64), dim=1)
    for grouping, function in (("kmeans", lambda: batch_kmeans(x, 3, 4)), ("ncuts", lambda: batch_ncuts(x, 3, 4, 6))):
        labels, centroids = group_batch(x, 3, 4, grouping, eigenvectors=6)
        want_labels, want_centroids = function()
        assert torch.equal(labels, want_labels) and torch.equal(centroids, want_centroids)
    with pytest.raises(ValueError, match="grouping"):
        group_batch(x, 3, grouping="spectral")
    with pytest.raises(ValueError, match="eigenvectors"):
        batch_ncuts(x, 3, eigenvectors=0)
