"""The figures of ``crosslevel plot``: t-SNE, positive/negative similarities, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..run_dir import METRICS_FILE, PLOT_DIR, current_metrics, load_run_config
from .features import Run
from .nmi import kmeans_labels



def plot_run(run: Run, feature: str = "f_I", max_points: int = 2000, pairs: int = 1000, seed: int = 0) -> list[Path]:
    """Write t-SNE, similarity histograms and training curves to ``RUN_DIR/plots/``; return their paths.

    Uses the labelled test split when the run has one (t-SNE coloured by class), otherwise the
    training images coloured by k-means group (k = the run's ``num_groups``).
    """
    out = run.path / PLOT_DIR
    out.mkdir(exist_ok=True)
    split = "test" if run.test is not None else "train"
    images = run.split(split)
    features, labels = run.features(split, feature)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(len(features), min(max_points, len(features)), replace=False))
    shown_t = torch.as_tensor(shown, device=features.device)
    if images.labelled:
        groups, names, colouring = labels[shown_t].cpu().numpy(), list(images.classes), "class"
    else:
        k = min(run.cfg.num_groups, len(shown) - 1)
        groups, names, colouring = kmeans_labels(features[shown_t], k, seed), [f"group {g}" for g in range(k)], f"k-means group (k={k})"
    paths = [
        plots.tsne_plot(
            features[shown_t], groups, names,
            f"{run.path.name}: t-SNE of {feature} ({split}, n={len(shown)}), coloured by {colouring}",
            out / f"tsne_{feature}.png", seed,
        )
    ]
    paired = np.sort(rng.choice(len(images), min(pairs, len(images)), replace=False))
    view_features, _ = run.view_features(images.select(paired), feature, seed)
    paths.append(
        plots.similarity_histograms(
            features[torch.as_tensor(paired, device=features.device)], view_features,
            f"{run.path.name}: cos({feature}(x_i), {feature}(x'_j)) over {len(paired)} {split} images and one augmented view",
            out / f"similarity_{feature}.png",
        )
    )
    paths.append(plot_curves(run.path))
    return paths


def plot_curves(run_dir: Path) -> Path:
    """``RUN_DIR/plots/training_curves.png`` from the run's ``metrics.csv`` alone (joined again from the logs of
    a run still training or stopped): no model, no data."""
    load_run_config(run_dir)  # one clear error when it is not a run directory
    out = run_dir / PLOT_DIR
    out.mkdir(exist_ok=True)
    metrics = current_metrics(run_dir) or run_dir / METRICS_FILE  # none: training_curves names what is missing
    return plots.training_curves(metrics, f"{run_dir.name}: training curves", out / "training_curves.png")
