"""Losses against naive references and hand-computed values; the memory bank update rule."""

from __future__ import annotations

import math

import pytest
import torch

from crosslevel.cluster import group_batch
from crosslevel.losses import CrossLevelLoss, bank_softmax_loss, cld_loss
from crosslevel.methods import MemoryBank


def naive_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    total = logits.new_zeros(())
    for row, target in zip(logits, targets):
        total = total - (row[target] - torch.log(sum(torch.exp(v) for v in row)))
    return total / len(targets)


def naive_cld(
    group_a: torch.Tensor, group_b: torch.Tensor, k: int, temperature: float, iters: int, grouping: str = "kmeans"
) -> torch.Tensor:
    labels_a, centroids_a = group_batch(group_a, k, iters, grouping)
    labels_b, centroids_b = group_batch(group_b, k, iters, grouping)
    logits_ab = torch.stack([torch.stack([group_a[i] @ centroids_b[j] for j in range(k)]) for i in range(len(group_a))])
    logits_ba = torch.stack([torch.stack([group_b[i] @ centroids_a[j] for j in range(k)]) for i in range(len(group_b))])
    return 0.5 * (
        naive_cross_entropy(logits_ab / temperature, labels_b) + naive_cross_entropy(logits_ba / temperature, labels_a)
    )


def two_views(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit group features of two correlated views (float64)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(batch, dim, dtype=torch.float64, generator=generator), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(batch, dim, dtype=torch.float64, generator=generator), dim=1)
    return a, b


@pytest.mark.parametrize("grouping", ["kmeans", "ncuts"])
@pytest.mark.parametrize("batch,dim,k", [(10, 4, 3), (16, 8, 5)])
def test_cld_loss_matches_naive_values_and_gradients(batch: int, dim: int, k: int, grouping: str) -> None:
    a, b = two_views(batch, dim, seed=batch + k)
    fast_a, fast_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref_a, ref_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = cld_loss(fast_a, fast_b, k, temperature=0.2, iters=5, grouping=grouping)
    ref = naive_cld(ref_a, ref_b, k, 0.2, 5, grouping)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(fast_a.grad, ref_a.grad)
    torch.testing.assert_close(fast_b.grad, ref_b.grad)


def test_cld_loss_analytic_two_groups() -> None:
    # Two identical views of two tight, orthogonal groups: centroids are the group directions,
    # each sample's logits are (1/T, 0), so the loss is log(1 + exp(-1/T)).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss = cld_loss(x, x.clone(), num_groups=2, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)))


def test_cld_loss_rejects_mismatched_views() -> None:
    with pytest.raises(ValueError, match="shape"):
        cld_loss(torch.randn(4, 3), torch.randn(5, 3), 2)


@pytest.mark.parametrize("grouping,scope", [("kmeans", "local"), ("ncuts", "local"), ("kmeans", "global")])
def test_cross_level_loss_module_equals_cld_loss(grouping: str, scope: str) -> None:
    """The module (``global`` on one process is ``local``) gives cld_loss's value and gradients."""
    a, b = two_views(24, 6, seed=3)
    module_views = [v.clone().requires_grad_(True) for v in (a, b)]
    function_views = [v.clone().requires_grad_(True) for v in (a, b)]
    got = CrossLevelLoss(5, temperature=0.3, iters=4, grouping=grouping, scope=scope, eigenvectors=6)(*module_views)
    want = cld_loss(*function_views, 5, temperature=0.3, iters=4, grouping=grouping, eigenvectors=6)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    for module_view, function_view in zip(module_views, function_views):
        torch.testing.assert_close(module_view.grad, function_view.grad)


def test_cld_loss_over_row_shares_averages_to_the_whole_batch_loss() -> None:
    """``local_rows``: the groups of the whole batch, the cross-entropy of one share of its rows;
    equal shares average to the loss of the whole batch (what each rank computes under
    ``kmeans_scope=global``, and what DDP averages)."""
    a, b = two_views(18, 5, seed=4)
    shares = [cld_loss(a, b, 4, local_rows=(start, start + 6)) for start in (0, 6, 12)]
    torch.testing.assert_close(torch.stack(shares).mean(), cld_loss(a, b, 4))
    labels_b, centroids_b = group_batch(b, 4, 5)
    labels_a, centroids_a = group_batch(a, 4, 5)
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * (ce(a[6:12] @ centroids_b.t() / 0.2, labels_b[6:12]) + ce(b[6:12] @ centroids_a.t() / 0.2, labels_a[6:12]))
    torch.testing.assert_close(shares[1], want)


def test_cross_level_loss_rejects_unknown_grouping_or_scope() -> None:
    with pytest.raises(ValueError, match="grouping"):
        CrossLevelLoss(4, grouping="spectral")
    with pytest.raises(ValueError, match="scope"):
        CrossLevelLoss(4, scope="node")


def test_bank_softmax_loss_hand_computed() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    features = torch.tensor([[1.0, 0.0]])
    # logits = (1, 0, -1) / 0.5 = (2, 0, -2); target 0
    expected = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-2)))
    loss = bank_softmax_loss(features, bank, torch.tensor([0]), temperature=0.5)
    assert loss.item() == pytest.approx(expected)


def test_bank_softmax_loss_matches_naive() -> None:
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(20, 6, dtype=torch.float64), dim=1)
    features = torch.nn.functional.normalize(torch.randn(5, 6, dtype=torch.float64), dim=1).requires_grad_(True)
    indices = torch.tensor([3, 0, 19, 7, 7])
    loss = bank_softmax_loss(features, bank, indices, 0.1)
    ref = naive_cross_entropy(features @ bank.t() / 0.1, indices)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_memory_bank_update_rule_hand_computed() -> None:
    bank = MemoryBank(size=3, dim=2, momentum=0.5)
    bank.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[s, s], [0.0, 1.0], [0.6, 0.8]])
    torch.testing.assert_close(bank.memory, expected)


def test_memory_bank_initialisation_is_uniform_in_official_range() -> None:
    torch.manual_seed(0)
    bank = MemoryBank(size=1000, dim=128)
    bound = 1 / math.sqrt(128 / 3)
    assert bank.memory.abs().max() <= bound
    assert bank.memory.abs().max() > 0.95 * bound
    assert abs(bank.memory.mean().item()) < 0.1 * bound
