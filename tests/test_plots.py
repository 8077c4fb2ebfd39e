"""Plot helpers: the similarity statistics against a naive loop; every figure is written as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crosslevel import plots
from crosslevel.errors import CrossLevelError


def test_pair_similarities_match_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    f, views = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    positive, negative, gap = plots.pair_similarities(f, views)
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j]
    assert positive.tolist() == pytest.approx([cos(f[i], views[i]) for i in range(6)], abs=1e-6)
    assert negative.tolist() == pytest.approx([cos(f[i], views[j]) for i, j in pairs], abs=1e-6)
    assert gap.tolist() == pytest.approx([cos(f[i], views[i]) - cos(f[i], views[j]) for i, j in pairs], abs=1e-6)


def test_read_metrics_splits_epoch_and_step_columns(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,loss_cld,loss_epoch,knn_top1,lr,step\n1,,,,0.1,4\n1,2.0,9.0,,,9\n2,1.5,8.0,55.0,,19\n")
    series = plots.read_metrics(log)
    assert series == {"lr": [(4.0, 0.1)], "loss_cld": [(1.0, 2.0), (2.0, 1.5)], "loss_epoch": [(1.0, 9.0), (2.0, 8.0)], "knn_top1": [(2.0, 55.0)]}
    plots.training_curves(log, "curves", tmp_path / "curves.png")
    with pytest.raises(CrossLevelError, match="no training log"):
        plots.read_metrics(tmp_path / "absent.csv")


def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plot functions save, kept open for inspection."""
    figures: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_similarity_axes_span_the_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    features = torch.ones(30, 8) + 0.02 * torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    figures = drawn(monkeypatch)
    plots.similarity_histograms(features, features.flip(0), "sims", tmp_path / "sims.png")
    left, right = figures[0].axes
    assert 0.99 < left.get_xlim()[0] and left.get_xlim()[1] < 1.01  # all cosines lie in [0.998, 1]
    assert -0.02 < right.get_xlim()[0] and right.get_xlim()[1] < 0.02


def test_training_curves_count_epochs_from_1_as_metrics_csv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"  # an old run's log, in Lightning's count from 0: drawn from 1 too
    log.write_text("epoch,loss_epoch,knn_top1,lr,step\n0,,,0.1,0\n0,,,0.2,1\n0,9.0,50.0,,1\n1,8.0,60.0,,3\n2,7.5,65.0,,5\n")
    figures = drawn(monkeypatch)
    plots.training_curves(log, "curves", tmp_path / "curves.png")
    loss, knn, lr = figures[0].axes
    assert list(loss.lines[0].get_xdata()) == [1, 2, 3] and list(knn.lines[0].get_xdata()) == [1, 2, 3]
    for ax in (loss, knn, lr):
        assert all(float(tick).is_integer() for tick in ax.get_xticks()), ax.get_xticks()
    assert "the first is 1" in loss.get_xlabel() and lr.lines[0].get_marker() == "."


def test_contact_sheet_names_each_thumbnail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    figures = drawn(monkeypatch)
    names = ["a.png", "sub/b.png", "a_very_long_folder_name/and_a_long_file_name.jpg"]
    plots.contact_sheet(np.zeros((3, 8, 8, 3), dtype=np.uint8), "sheet", tmp_path / "sheet.png", columns=2, names=names)
    texts = [text.get_text() for ax in figures[0].axes for text in ax.texts]
    assert texts == ["a.png", "sub/b.png", "…_long_file_name.jpg"]  # the end of a long name


def test_figures_are_written(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(40, 8, generator=g)
    plots.tsne_plot(features, np.arange(40) % 3, ["a", "b", "c"], "t-SNE", tmp_path / "tsne.png")
    plots.similarity_histograms(features, features + 0.1 * torch.randn(40, 8, generator=g), "sims", tmp_path / "sims.png")
    plots.contact_sheet(np.zeros((11, 8, 8, 1), dtype=np.uint8), "sheet", tmp_path / "sheet.png", columns=4)
    for name in ("tsne.png", "sims.png", "sheet.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
