"""Every evaluation protocol applied to an opened :class:`~.features.Run`; each returns a flat,
JSON-ready dict. Features are read through the run's cache, so ``eval all`` extracts them once."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import CrossLevelError
from .features import Run
from .knn import accuracy_report, knn_accuracy
from .linear import classify, linear_probe, train_classifier
from .nmi import feature_nmi
from .retrieval import label_retrieval
from .semi import balanced_fraction
from .unsupervised import unsupervised_score


class FeatureNet(nn.Module):
    """A trained module's backbone + heads as B×C×H×W → B×D ``feature`` (f is the raw pooled vector)."""

    def __init__(self, module: nn.Module, feature: str) -> None:
        super().__init__()
        self.module, self.feature = module, feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled, instance, group = self.module(images)
        return {"f": pooled, "f_I": instance, "f_G": group}[self.feature]


def _classifier_head(dim: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, classes))


def knn(run: Run, feature: str = "f_I") -> dict:
    """Weighted kNN (k, σ from the run's config) of test features against training features."""
    train_x, train_y = run.features("support", feature)
    test_x, test_y = run.features("test", feature)
    result = knn_accuracy(train_x, train_y, test_x, test_y, run.cfg.knn_k, run.cfg.knn_temperature, run.num_classes())
    return {"feature": feature, "k": run.cfg.knn_k, "temperature": run.cfg.knn_temperature, **result}


def linear(run: Run, feature: str = "f", augmented: bool = False, epochs: int = 10, weight_decay: float = 1e-4) -> dict:
    """Linear probe on the frozen backbone.

    Default: L-BFGS logistic regression on cached, standardised test-transform features.
    ``augmented``: BN (no affine) + Linear trained with SGD for ``epochs`` on random training views.
    """
    classes = run.num_classes()
    if not augmented:
        train_x, train_y = run.features("support", feature)
        test_x, test_y = run.features("test", feature)
        _, scores = linear_probe(train_x, train_y, test_x, test_y, classes, weight_decay)
        return {"feature": feature, "protocol": "cached", "weight_decay": weight_decay, **accuracy_report(scores, test_y, train_y)}
    torch.manual_seed(run.cfg.seed)
    net = FeatureNet(run.module, feature)
    dim = run.module.backbone.out_dim if feature == "f" else run.cfg.feature_dim
    head = _classifier_head(dim, classes).to(run.device)
    loader = run.view_loader(run.split("support"), shuffle=True)
    train_classifier(net, head, loader, epochs, lr=0.1, weight_decay=weight_decay, device=run.device, desc="linear probe")
    scores, test_y = classify(net, head, run.eval_loader(run.split("test")), run.device)
    train_y = torch.as_tensor(run.split("support").labels)
    return {"feature": feature, "protocol": "augmented", "epochs": epochs, "weight_decay": weight_decay, **accuracy_report(scores, test_y, train_y)}


def nmi(run: Run, feature: str = "f_I", seed: int = 0) -> dict:
    """NMI(f, Y) on the test split: k-means (k = #classes) against the labels."""
    test_x, test_y = run.features("test", feature)
    return {"feature": feature, "nmi": feature_nmi(test_x, test_y, seed), "seed": seed}


def retrieval(run: Run, feature: str = "f_I") -> dict:
    """R(f, Y) in % on the test split (leave-one-out nearest neighbour has the same label)."""
    test_x, test_y = run.features("test", feature)
    return {"feature": feature, "retrieval": label_retrieval(test_x, test_y)}


def semi(run: Run, fraction: float, epochs: int = 20, seed: int = 0, lr: float = 0.1, backbone_lr: float = 0.01) -> dict:
    """Fine-tune a copy of the backbone + a BN/Linear classifier on a class-balanced ``fraction`` of the labels."""
    train = run.split("support")
    keep = balanced_fraction(train.labels, fraction, seed)
    labelled = train.select(keep)
    torch.manual_seed(seed)
    net = FeatureNet(copy.deepcopy(run.module), "f")
    head = _classifier_head(run.module.backbone.out_dim, run.num_classes()).to(run.device)
    loader = run.view_loader(labelled, shuffle=True, batch_size=min(run.cfg.batch_size, 256))
    train_classifier(net, head, loader, epochs, lr, backbone_lr, 5e-4, run.device, desc=f"fine-tune {fraction:g}")
    scores, test_y = classify(net, head, run.eval_loader(run.split("test")), run.device)
    return {"fraction": fraction, "labelled_images": len(keep), "epochs": epochs, "seed": seed, **accuracy_report(scores, test_y, torch.as_tensor(train.labels))}


def score(run: Run, feature: str = "f_I", k: int = 10, seed: int = 0, max_images: int = 2000) -> dict:
    """The label-free NMI(f, f')·R(f, f') on up to ``max_images`` seeded training images (labels never read)."""
    train = run.split("train")
    if k > min(len(train), max_images if max_images > 0 else len(train)):
        raise CrossLevelError(f"score: k={k} clusters need at least {k} images (max_images={max_images}, {len(train)} trained on)")
    features, _ = run.features("train", feature)
    chosen = np.arange(len(train))
    if 0 < max_images < len(train):
        chosen = np.sort(np.random.default_rng(seed).choice(len(train), max_images, replace=False))
    images = train.select(chosen)
    view_features, _ = run.view_features(images, feature, seed)
    result = unsupervised_score(features[torch.as_tensor(chosen, device=features.device)], view_features, k, seed)
    return {"feature": feature, "k": k, "images": len(chosen), "seed": seed, **result}
