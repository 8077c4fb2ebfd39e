"""Linear probe on a frozen backbone: on cached features (L-BFGS logistic regression) or, with the
standard augmented protocol, trained by SGD on random views; :func:`train_classifier` also serves
semi-supervised fine-tuning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .knn import topk_accuracy


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every column by the mean / std of ``train`` (N×D); apply the same to ``others``."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 300
) -> nn.Linear:
    """Multinomial logistic regression (N×D → C), full batch, L-BFGS, L2 penalty ``weight_decay``·‖W‖²/2."""
    x, y = features.float(), labels.long().to(features.device)
    layer = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), y) + 0.5 * weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return layer.eval()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
) -> tuple[dict[str, float], torch.Tensor]:
    """Fit on standardised cached features; return (``{"top1", "top5"}`` in %, M×C test scores)."""
    train_s, test_s = standardise(train_x.float(), test_x.float())
    layer = fit_logistic(train_s, train_y, num_classes, weight_decay)
    with torch.no_grad():
        scores = layer(test_s)
    accuracy = topk_accuracy(scores, test_y)
    return {"top1": accuracy[1], "top5": accuracy[5]}, scores


def train_classifier(
    backbone: nn.Module,
    classifier: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float,
    backbone_lr: float = 0.0,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    desc: str = "classifier",
) -> None:
    """SGD (momentum 0.9, cosine schedule) on ``loader`` of (augmented images, labels).

    ``backbone_lr == 0``: the backbone stays frozen in eval mode (linear protocol); otherwise it
    is fine-tuned in train mode with its own learning rate (semi-supervised protocol).
    """
    frozen = backbone_lr == 0
    backbone.requires_grad_(not frozen)
    groups = [{"params": classifier.parameters(), "lr": lr}]
    if not frozen:
        groups.append({"params": backbone.parameters(), "lr": backbone_lr})
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay)
    total = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    backbone.train(not frozen)
    classifier.train()
    with torch.enable_grad(), tqdm(total=total, desc=desc, unit="batch", leave=False, mininterval=1.0) as bar:
        for _ in range(epochs):
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                with torch.set_grad_enabled(not frozen):
                    features = backbone(images)
                loss = F.cross_entropy(classifier(features), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    backbone.requires_grad_(True)
    backbone.eval()
    classifier.eval()


@torch.no_grad()
def classify(backbone: nn.Module, classifier: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(M×C scores, M labels) of ``classifier(backbone(x))`` over ``loader`` of (images, labels)."""
    scores, labels = [], []
    for images, targets in loader:
        scores.append(classifier(backbone(images.to(device))).float())
        labels.append(targets.to(device))
    return torch.cat(scores), torch.cat(labels)
