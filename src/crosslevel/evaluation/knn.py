"""Weighted kNN classification (the NPID protocol: k = 200, exp(cos / σ) weights, top-1 and top-5)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import knn_weights_fit
from .longtail import is_long_tailed, shot_accuracy


CHUNK_ELEMENTS = 1 << 26  # similarities held at once by knn_scores (256 MB of float32)


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Class scores of weighted kNN: Σ over the k most similar training features of exp(cos/T).

    Args:
        train_features: N×D support features (normalised here, so cosine = dot product).
        train_labels: N long class labels in [0, C).
        test_features: M×D query features.
        k: neighbours (clipped to N).
        temperature: σ of exp(cos/σ).
        num_classes: C (default: max label + 1).
        chunk_size: queries per block, so at most chunk_size×N similarities exist at once
            (default: as many as fit in :data:`CHUNK_ELEMENTS` similarities, at least 1).

    Returns:
        M×C float32 scores; rank them for top-1 / top-5.

    Raises:
        ValueError: ``temperature`` so small that a sum of k weights exp(1/σ) would overflow float32.
    """
    if not knn_weights_fit(temperature, k):
        raise ValueError(f"kNN temperature {temperature} overflows float32 in exp(cos/σ) over {k} neighbours (σ = 0.0125 or more for k = 200)")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    classes = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    k = min(k, len(train))
    chunk_size = chunk_size or max(1, CHUNK_ELEMENTS // max(1, len(train)))
    scores = torch.zeros(len(test), classes, dtype=torch.float32, device=test.device)
    # One similarity buffer reused by every chunk: a fresh chunk×N allocation per chunk costs a
    # fifth of the time on the CPU (measured in benchmarks/knn_speed.py).
    train_t = train.t().contiguous()
    buffer = torch.empty(min(chunk_size, len(test)), len(train), dtype=torch.float32, device=test.device)
    for start in range(0, len(test), chunk_size):
        queries = test[start : start + chunk_size]
        sims = torch.mm(queries, train_t, out=buffer[: len(queries)])
        top, neighbours = sims.topk(k, dim=1, sorted=False)
        scores[start : start + chunk_size].scatter_add_(1, labels[neighbours], (top / temperature).exp())
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Percentage of rows whose label is among the ``k`` highest scores, for each k; equal scores rank by
    class index (a stable sort: the same on every device, and top-1 agrees with ``argmax``)."""
    ranked = scores.argsort(dim=1, descending=True, stable=True)
    hits = ranked == labels.to(scores.device)[:, None]
    return {k: 100.0 * hits[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``embed`` over ``loader`` of (images, labels); return (N×D features, N labels) on ``device``."""
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=1.0, disable=not progress):
        features.append(embed(images.to(device, non_blocking=True)))
        labels.append(targets.to(device))
    return torch.cat(features), torch.cat(labels)


def accuracy_report(scores: torch.Tensor, labels: torch.Tensor, train_labels: torch.Tensor) -> dict:
    """The result schema of every classifier (kNN, linear probe, fine-tuning): ``top1``, ``top5`` (%)
    and, when the training labels are long-tailed, ``shots``: top-1 of the many / medium / few-shot
    classes (:mod:`.longtail`; None for a group without classes)."""
    accuracy = topk_accuracy(scores, labels)
    result: dict = {"top1": accuracy[1], "top5": accuracy[5]}
    if is_long_tailed(train_labels):
        result["shots"] = shot_accuracy(scores.argmax(dim=1), labels, train_labels)
    return result


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
) -> dict:
    """Weighted kNN, the one path of training and ``eval knn``: :func:`accuracy_report` of
    :func:`knn_scores`. Classes: at least ``num_classes`` (the data set's named classes) and at
    least every label seen."""
    classes = max(num_classes or 0, int(max(train_labels.max(), test_labels.max())) + 1)
    scores = knn_scores(train_features, train_labels, test_features, k, temperature, classes)
    return accuracy_report(scores, test_labels, train_labels)
