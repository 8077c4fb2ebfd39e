"""Weighted kNN against a naive loop reference and a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from crosslevel.evaluation import knn_accuracy, knn_scores, topk_accuracy


def naive_knn_scores(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, k: int, t: float, c: int) -> torch.Tensor:
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    scores = torch.zeros(len(test), c, dtype=torch.float64)
    for i, query in enumerate(test):
        sims = [(float(query @ row), j) for j, row in enumerate(train)]
        for sim, j in sorted(sims, reverse=True)[:k]:
            scores[i, labels[j]] += math.exp(sim / t)
    return scores


@pytest.mark.parametrize("k,chunk", [(1, 1024), (5, 3), (200, 7)])
def test_knn_scores_match_naive(k: int, chunk: int) -> None:
    torch.manual_seed(k)
    train = torch.randn(40, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (40,))
    test = torch.randn(11, 6, dtype=torch.float64)
    scores = knn_scores(train, labels, test, k=k, temperature=0.1, num_classes=4, chunk_size=chunk)
    ref = naive_knn_scores(train, labels, test, min(k, 40), 0.1, 4)
    assert scores.shape == (11, 4)
    torch.testing.assert_close(scores.double(), ref, rtol=1e-4, atol=1e-6)


def test_knn_scores_hand_computed() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    scores = knn_scores(train, labels, test, k=2, temperature=1.0, num_classes=3)
    torch.testing.assert_close(scores, torch.tensor([[math.e, 1.0, 0.0]]))


def test_topk_and_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_accuracy(scores, torch.tensor([1, 2]), ks=(1, 2)) == {1: 50.0, 2: 50.0}
    train = torch.eye(3).repeat(4, 1)
    labels = torch.arange(3).repeat(4)
    result = knn_accuracy(train, labels, torch.eye(3), torch.arange(3), k=4)
    assert result["top1"] == 100.0 and result["top5"] == 100.0


def test_equal_scores_rank_by_class_index() -> None:
    """Classes no neighbour voted for tie at 0: they rank by index (stable), on every device alike."""
    scores = torch.zeros(2, 100)
    scores[:, 50] = 1.0  # one class got all the votes
    labels = torch.tensor([3, 97])  # among the first four of the tied classes, and far behind them
    assert topk_accuracy(scores, labels, ks=(1, 5)) == {1: 0.0, 5: 50.0}


def test_a_temperature_whose_weights_overflow_is_refused() -> None:
    features, labels = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="overflows float32"):
        knn_scores(features, labels, features, k=8, temperature=0.01)
    assert torch.isfinite(knn_scores(features, labels, features, k=8, temperature=0.0125)).all()
