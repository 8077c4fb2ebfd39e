"""batch_kmeans against a naive loop implementation of the reference semantics."""

from __future__ import annotations

import pytest
import torch

from crosslevel.cluster import batch_kmeans


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
