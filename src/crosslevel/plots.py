"""PNG figures (matplotlib, Agg backend): t-SNE, positive/negative similarity histograms (paper
Fig. 6), training curves and image contact sheets."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from .errors import CrossLevelError  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tsne_plot(features: torch.Tensor, groups: np.ndarray, names: list[str], title: str, path: Path, seed: int = 0) -> Path:
    """2-D t-SNE of N×D features (cosine metric), one colour per group; ``names[g]`` labels group g."""
    points = F.normalize(features.float(), dim=1).cpu().numpy()
    perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
    xy = TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(points)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for group, name in enumerate(names):
        inside = groups == group
        ax.scatter(xy[inside, 0], xy[inside, 1], s=6, color=cmap(group % cmap.N), label=name)
    if len(names) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def pair_similarities(features: torch.Tensor, view_features: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From A_ij = cos(f(x_i), f(x'_j)): positives A_ii (N), negatives A_ij j≠i and gaps A_ii − A_ij (N(N−1))."""
    a = F.normalize(features.float(), dim=1) @ F.normalize(view_features.float(), dim=1).t()
    positive = a.diagonal()
    off = ~torch.eye(len(a), dtype=torch.bool, device=a.device)
    negative = a[off]
    gap = (positive[:, None] - a)[off]
    return positive.cpu().numpy(), negative.cpu().numpy(), gap.cpu().numpy()


def _bins(*samples: np.ndarray, count: int = 80) -> np.ndarray:
    """``count`` equal bins spanning the samples' range, with a small margin (the axes follow the data)."""
    low, high = min(float(s.min()) for s in samples), max(float(s.max()) for s in samples)
    margin = max(0.02 * (high - low), 1e-3)
    return np.linspace(low - margin, high + margin, count + 1)


def similarity_histograms(features: torch.Tensor, view_features: torch.Tensor, title: str, path: Path) -> Path:
    """Paper Fig. 6: densities of positive A_ii vs negative A_ij similarities, and of the gaps A_ii − A_ij;
    each axis spans its data (features of a small run can all lie within a few hundredths)."""
    positive, negative, gap = pair_similarities(features, view_features)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bins = _bins(positive, negative)
    left.hist(negative, bins=bins, density=True, alpha=0.6, color="tab:red", label=f"negative A_ij, mean {negative.mean():.2f}")
    left.hist(positive, bins=bins, density=True, alpha=0.6, color="tab:green", label=f"positive A_ii, mean {positive.mean():.2f}")
    left.set_xlabel("cosine similarity")
    left.set_ylabel("density")
    left.legend(fontsize=8)
    left.set_title("positive vs negative pairs")
    gap_bins = _bins(gap)
    right.hist(gap, bins=gap_bins, density=True, color="tab:blue")
    if gap_bins[0] < 0 < gap_bins[-1]:
        right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("A_ii − A_ij")
    right.set_title(f"gap, {100 * (gap > 0).mean():.1f}% > 0")
    fig.suptitle(title)
    return _save(fig, path)


def read_metrics(metrics_csv: Path) -> dict[str, list[tuple[float, float]]]:
    """A run's ``metrics.csv`` as ``{column: [(epoch or step, value), ...]}``: epochs counted from 1
    (the last of an N-epoch run is N); ``lr`` and ``loss_step`` are per step. Files of runs trained
    before metrics.csv counted from 1 hold Lightning's count from 0 (they have an epoch 0): shifted."""
    if not metrics_csv.is_file():
        raise CrossLevelError(f"no training log at {metrics_csv} (was the run trained with logger=csv?)")
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    shift = 1 if any(row.get("epoch") == "0" for row in rows) else 0
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for column, value in row.items():
            if column in ("epoch", "step") or value in ("", None):
                continue
            x = float(row["step"]) if column in ("lr", "loss_step") else float(row["epoch"]) + shift
            series.setdefault(column, []).append((x, float(value)))
    return series


def training_curves(metrics_csv: Path, title: str, path: Path) -> Path:
    """Loss terms and kNN accuracy per epoch (integer ticks, from 1 as in metrics.csv), learning rate
    per step (with markers when there are few points)."""
    series = read_metrics(metrics_csv)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for column, label in (("loss_epoch", "total loss"), ("loss_inst", "instance loss"), ("loss_cld", "CLD loss")):
        if column in series:
            axes[0].plot(*zip(*series[column]), marker=".", label=label)
    axes[0].set_title("training loss (epoch mean)")
    axes[0].legend(fontsize=8)
    for column in ("knn_top1", "knn_top5"):
        if column in series:
            axes[1].plot(*zip(*series[column]), marker="o", label=column.replace("_", " "))
    axes[1].set_ylabel("%")
    axes[1].set_title("kNN accuracy" if "knn_top1" in series else "kNN accuracy (not logged)")
    if "knn_top1" in series:
        axes[1].legend(fontsize=8)
    if "lr" in series:
        axes[2].plot(*zip(*series["lr"]), marker="." if len(series["lr"]) <= 50 else None)
    axes[2].set_xlabel("step")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:2]:
        ax.set_xlabel("epoch (as in metrics.csv: the first is 1)")
    fig.suptitle(title)
    return _save(fig, path)


def contact_sheet(images: np.ndarray, title: str, path: Path, columns: int = 8, names: list[str] | None = None) -> Path:
    """A grid of uint8 N×H×W×C images (C = 1 or 3) under ``title``, each with its name (e.g. its file) below."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * (1.3 if names else 1.1) + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, name in zip(axes.flat, images, names or [""] * len(images)):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", interpolation="nearest")
        ax.text(0.5, -0.04, name if len(name) <= 20 else "…" + name[-19:], transform=ax.transAxes, ha="center", va="top", fontsize=6)
    fig.suptitle(title)
    return _save(fig, path)
