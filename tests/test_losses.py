"""Losses against naive references and hand-computed values; the memory bank update rule."""

from __future__ import annotations

import math

import pytest
import torch

from crosslevel.cluster import batch_kmeans
from crosslevel.losses import bank_softmax_loss, cld_loss
from crosslevel.methods import MemoryBank


def naive_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    total = logits.new_zeros(())
    for row, target in zip(logits, targets):
        total = total - (row[target] - torch.log(sum(torch.exp(v) for v in row)))
    return total / len(targets)


def naive_cld(group_a: torch.Tensor, group_b: torch.Tensor, k: int, temperature: float, iters: int) -> torch.Tensor:
    labels_a, centroids_a = batch_kmeans(group_a, k, iters)
    labels_b, centroids_b = batch_kmeans(group_b, k, iters)
    logits_ab = torch.stack([torch.stack([group_a[i] @ centroids_b[j] for j in range(k)]) for i in range(len(group_a))])
    logits_ba = torch.stack([torch.stack([group_b[i] @ centroids_a[j] for j in range(k)]) for i in range(len(group_b))])
    return 0.5 * (
        naive_cross_entropy(logits_ab / temperature, labels_b) + naive_cross_entropy(logits_ba / temperature, labels_a)
    )


@pytest.mark.parametrize("batch,dim,k", [(10, 4, 3), (16, 8, 5)])
def test_cld_loss_matches_naive_values_and_gradients(batch: int, dim: int, k: int) -> None:
    torch.manual_seed(batch + k)
    a = torch.nn.functional.normalize(torch.randn(batch, dim, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(batch, dim, dtype=torch.float64), dim=1)
    fast_a, fast_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref_a, ref_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = cld_loss(fast_a, fast_b, k, temperature=0.2, iters=5)
    ref = naive_cld(ref_a, ref_b, k, 0.2, 5)
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
