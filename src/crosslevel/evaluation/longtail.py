"""Many- / medium- / few-shot accuracy for long-tailed training sets (> 100 / 20–100 / < 20 images)."""

from __future__ import annotations

import torch

SHOT_BINS = {"many": (101, None), "medium": (20, 100), "few": (0, 19)}


def is_long_tailed(train_labels: torch.Tensor) -> bool:
    """True when the training classes differ in size by more than a factor of 2."""
    counts = torch.bincount(train_labels.long().cpu())
    counts = counts[counts > 0]
    return bool(counts.max() > 2 * counts.min())


def shot_accuracy(predictions: torch.Tensor, labels: torch.Tensor, train_labels: torch.Tensor) -> dict[str, float | None]:
    """Top-1 % over test samples whose class has many / medium / few training images (None: no such class)."""
    counts = torch.bincount(train_labels.long().cpu(), minlength=int(labels.max()) + 1)
    per_sample = counts[labels.long().cpu()]
    correct = (predictions.cpu() == labels.cpu()).float()
    result: dict[str, float | None] = {}
    for name, (low, high) in SHOT_BINS.items():
        inside = (per_sample >= low) & (per_sample <= (high if high is not None else per_sample.max()))
        result[name] = 100.0 * correct[inside].mean().item() if inside.any() else None
    return result
