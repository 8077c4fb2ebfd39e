"""Evaluation metrics against scikit-learn and naive float64 loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score

from crosslevel.errors import CrossLevelError
from crosslevel.evaluation.knn import knn_scores
from crosslevel.evaluation.linear import fit_logistic, linear_probe, standardise
from crosslevel.evaluation.longtail import is_long_tailed, shot_accuracy
from crosslevel.evaluation.nmi import feature_nmi, kmeans_labels, nmi
from crosslevel.evaluation.retrieval import label_retrieval, nearest_neighbours, view_retrieval
from crosslevel.evaluation.semi import balanced_fraction
from crosslevel.evaluation.unsupervised import spearman, unsupervised_score


def naive_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """I(A; B) / sqrt(H(A) H(B)) from counts, in float64 loops."""
    n = len(a)
    pa = {x: np.mean(a == x) for x in set(a)}
    pb = {y: np.mean(b == y) for y in set(b)}
    mi = 0.0
    for x in pa:
        for y in pb:
            pxy = np.sum((a == x) & (b == y)) / n
            if pxy > 0:
                mi += pxy * math.log(pxy / (pa[x] * pb[y]))
    ha = -sum(p * math.log(p) for p in pa.values())
    hb = -sum(p * math.log(p) for p in pb.values())
    return mi / math.sqrt(ha * hb)


def blobs(n_per: int, classes: int, dim: int = 8, spread: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g, dtype=torch.float64), dim=1) * 3
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64), labels


def test_nmi_matches_naive_formula_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 300), rng.integers(0, 6, 300)
    b[:150] = a[:150]
    assert nmi(a, b) == pytest.approx(naive_nmi(a, b), abs=1e-12)
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b, average_method="geometric"), abs=1e-12)
    assert nmi(a, (a + 1) % 4) == pytest.approx(1.0)


def test_feature_nmi_is_one_on_separated_blobs_and_seeded() -> None:
    x, y = blobs(30, 5)
    assert feature_nmi(x, y) == pytest.approx(1.0)
    assert np.array_equal(kmeans_labels(x, 5, seed=3), kmeans_labels(x, 5, seed=3))


def test_retrieval_matches_naive_loops() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(57, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (57,), generator=g)
    views = x + 0.7 * torch.randn(57, 6, generator=g, dtype=torch.float64)
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    hits = 0
    own = 0
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        nearest = max(others, key=lambda j: cos(x[i], x[j]))
        hits += int(y[nearest] == y[i])
        own += int(max(range(len(x)), key=lambda j: cos(x[i], views[j])) == i)
    assert label_retrieval(x, y) == pytest.approx(100.0 * hits / len(x))
    assert view_retrieval(x, views) == pytest.approx(100.0 * own / len(x))
    assert torch.equal(nearest_neighbours(x, x, True, chunk_size=5), nearest_neighbours(x, x, True, chunk_size=1000))


def test_knn_scores_and_shot_split_match_naive_loops() -> None:
    g = torch.Generator().manual_seed(2)
    train = torch.randn(40, 5, generator=g, dtype=torch.float64)
    train_y = torch.cat([torch.zeros(30), torch.ones(7), torch.full((3,), 2)]).long()
    test = torch.randn(9, 5, generator=g, dtype=torch.float64)
    scores = knn_scores(train, train_y, test, k=6, temperature=0.1, num_classes=3)
    t, q = F.normalize(train, dim=1), F.normalize(test, dim=1)
    for i in range(len(q)):
        sims = sorted(((float(q[i] @ t[j]), j) for j in range(len(t))), reverse=True)[:6]
        expected = [sum(math.exp(s / 0.1) for s, j in sims if train_y[j] == c) for c in range(3)]
        assert scores[i].double().tolist() == pytest.approx(expected, rel=1e-5)
    assert is_long_tailed(train_y) and not is_long_tailed(torch.arange(4).repeat(5))
    many = torch.cat([torch.zeros(150), torch.ones(50), torch.full((5,), 2)]).long()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 0, 0])
    assert shot_accuracy(predictions, labels, many) == {"many": 50.0, "medium": 100.0, "few": 0.0}
    assert shot_accuracy(predictions[:2], labels[:2], many)["few"] is None


def test_logistic_regression_matches_sklearn() -> None:
    x, y = blobs(40, 3, dim=4, spread=1.5, seed=4)
    x = x.float()
    weight_decay = 0.05
    layer = fit_logistic(x, y, 3, weight_decay)
    reference = LogisticRegression(C=1.0 / (weight_decay * len(x)), tol=1e-8, max_iter=1000).fit(x.numpy(), y.numpy())
    with torch.no_grad():
        ours = layer(x).softmax(1).numpy()
    assert np.abs(ours - reference.predict_proba(x.numpy())).max() < 2e-3


def test_linear_probe_separates_blobs_and_standardises_with_train_statistics() -> None:
    x, y = blobs(20, 4, spread=0.3)
    result, scores = linear_probe(x[::2], y[::2], x[1::2], y[1::2], 4)
    assert result["top1"] == 100.0 and scores.shape == (40, 4)
    train_s, other_s = standardise(x[:10], x[:10] + 1)
    assert torch.allclose(train_s.mean(0), torch.zeros(8, dtype=x.dtype), atol=1e-9)
    assert torch.allclose(other_s - train_s, 1 / x[:10].std(0).expand(10, 8))


def test_balanced_fraction_is_per_class_and_seeded() -> None:
    labels = np.repeat(np.arange(3), [100, 50, 7])
    keep = balanced_fraction(labels, 0.1, seed=5)
    assert np.bincount(labels[keep]).tolist() == [10, 5, 1]
    assert np.array_equal(keep, balanced_fraction(labels, 0.1, seed=5))
    assert not np.array_equal(keep, balanced_fraction(labels, 0.1, seed=6))
    with pytest.raises(CrossLevelError, match="fraction"):
        balanced_fraction(labels, 0.0)


def test_unsupervised_score_extremes() -> None:
    x, _ = blobs(20, 5)
    perfect = unsupervised_score(x, x.clone(), k=5)
    assert perfect == pytest.approx({"nmi": 1.0, "retrieval": 100.0, "score": 1.0})
    shuffled = unsupervised_score(x, x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))], k=5)
    assert shuffled["retrieval"] < 20 and shuffled["score"] < 0.2


def test_spearman_matches_rank_formula() -> None:
    a, b = [0.1, 0.5, 0.3, 0.9], [10.0, 30.0, 40.0, 20.0]
    rank = lambda v: [sorted(v).index(x) for x in v]  # noqa: E731
    d2 = sum((p - q) ** 2 for p, q in zip(rank(a), rank(b)))
    assert spearman(a, b) == pytest.approx(1 - 6 * d2 / (4 * (16 - 1)))
