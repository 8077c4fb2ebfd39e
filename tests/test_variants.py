"""Long-tail and high-correlation variants, and kNN top-1 per many / medium / few-shot group in the output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset
from crosslevel.data import InMemoryImages, high_correlation, load_split, long_tail, long_tail_counts
from crosslevel.data.variants import camera_walk
from crosslevel.data.datamodule import load_data

SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def balanced_set(classes: int = 10, per_class: int = 50, size: int = 4) -> InMemoryImages:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(classes * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    return InMemoryImages(images, labels, tuple(map(str, range(classes))), (0.5,) * 3, (0.25,) * 3)


def test_long_tail_counts_are_the_published_cifar_lt_profiles() -> None:
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(long_tail_counts(5000, 10, 100)) == 12406  # CIFAR-10-LT, ρ = 100
    assert sum(long_tail_counts(5000, 10, 10)) == 20431  # CIFAR-10-LT, ρ = 10
    assert sum(long_tail_counts(500, 100, 100)) == 10847  # CIFAR-100-LT, ρ = 100
    assert sum(long_tail_counts(500, 100, 50)) == 12608  # CIFAR-100-LT, ρ = 50


@pytest.mark.parametrize("ratio", [10.0, 50.0, 100.0])
def test_long_tail_counts_follow_the_formula(ratio: float) -> None:
    counts = long_tail_counts(500, 7, ratio)
    assert counts == [int(500 * ratio ** (-c / 6)) for c in range(7)]
    assert counts[0] == 500 and counts[-1] == int(500 / ratio)


def test_long_tail_subset_has_exact_counts_and_is_seeded() -> None:
    images = balanced_set(per_class=50)
    tail = long_tail(images, 10.0, seed=3)
    assert tail.class_counts().tolist() == long_tail_counts(50, 10, 10.0)
    again, other = long_tail(images, 10.0, seed=3), long_tail(images, 10.0, seed=4)
    assert np.array_equal(tail.images, again.images)
    assert not np.array_equal(tail.images, other.images)
    kept = {row.tobytes() for row in tail.images}
    assert kept <= {row.tobytes() for row in images.images}


def test_long_tail_leaves_the_test_split_balanced() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["lt_ratio=10"])
    data = load_data(cfg)
    full_train, full_test = load_split("digits", None, "train"), load_split("digits", None, "test")
    n_max = int(full_train.class_counts().max())
    expected = np.minimum(long_tail_counts(n_max, 10, 10.0), full_train.class_counts())
    assert data.train.class_counts().tolist() == expected.tolist()
    assert data.test.class_counts().tolist() == full_test.class_counts().tolist()


def test_cli_reports_knn_per_shot_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--config", "digits-cld", "lt_ratio=100", "epochs=1", "limit_train_batches=2", "batch_size=32",
            "num_groups=4", "width=8", "feature_dim=16", "progress=false", f"out={tmp_path}", "name=lt"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "top-1 per shot group: many" in printed and "medium" in printed and "few" in printed
    summary = (tmp_path / "lt" / "summary.json").read_text()
    trained = json.loads(summary)["knn"]
    assert trained["shots"]["few"] is not None
    # one kNN path, one schema: `eval knn` of the run gives what training reported
    assert main(["eval", "knn", str(tmp_path / "lt")]) == 0
    evaluated = json.loads((tmp_path / "lt" / "knn_f_I.json").read_text())
    assert {key: evaluated[key] for key in ("top1", "top5")} == pytest.approx({key: trained[key] for key in ("top1", "top5")})
    assert evaluated["shots"] == pytest.approx(trained["shots"])


def digits_hc(frames: int = 6, mode: str = "walk", seed: int = 0, base: int = 40):
    return high_correlation(load_split("digits", None, "train").subset(base, 0), frames, mode, seed)


def test_high_correlation_frames_are_reproducible_from_the_seed() -> None:
    first, again, other = digits_hc(seed=1), digits_hc(seed=1), digits_hc(seed=2)
    assert len(first) == 240 and first.labels.tolist() == np.repeat(first.base.labels, 6).tolist()
    frames = [first.image(i) for i in range(0, 240, 7)]
    assert all(torch.equal(a, again.image(i)) for a, i in zip(frames, range(0, 240, 7)))
    assert any(not torch.equal(a, other.image(i)) for a, i in zip(frames, range(0, 240, 7)))
    assert frames[0].dtype == torch.uint8 and frames[0].shape == first.base.image(0).shape


def test_repeat_mode_gives_exact_copies() -> None:
    hc = digits_hc(frames=3, mode="repeat")
    for i in range(0, 30):
        assert torch.equal(hc.image(i), hc.base.image(i // 3))


def test_camera_walk_is_smooth_and_stays_inside_the_image() -> None:
    walk = camera_walk(200, 12, seed=0)
    half = walk.scale / 2
    assert (walk.centre_y >= half - 1e-9).all() and (walk.centre_y <= 1 - half + 1e-9).all()
    assert (walk.centre_x >= half - 1e-9).all() and (walk.centre_x <= 1 - half + 1e-9).all()
    assert (walk.scale >= 0.4).all() and (walk.scale <= 1.0).all()
    step = np.abs(np.diff(walk.centre_x, axis=1)).mean()
    drift = np.abs(walk.centre_x[:, -1] - walk.centre_x[:, 0]).mean()
    assert step < drift  # consecutive frames are close; the camera wanders over the sequence


def _mean_similarities(hc) -> tuple[float, float]:
    """Mean cosine similarity of centred pixel vectors: within a base image's frames, and across."""
    pixels = torch.stack([hc.image(i).float().flatten() for i in range(len(hc))])
    pixels = torch.nn.functional.normalize(pixels - pixels.mean(dim=1, keepdim=True), dim=1)
    similarity = pixels @ pixels.t()
    base = torch.as_tensor(hc.rows // hc.frames)
    same = base[:, None] == base[None, :]
    off_diagonal = ~torch.eye(len(hc), dtype=torch.bool)
    return similarity[same & off_diagonal].mean().item(), similarity[~same].mean().item()


def test_frames_of_one_image_are_more_similar_than_frames_of_different_images() -> None:
    within, across = _mean_similarities(digits_hc())
    assert within > across + 0.2


def test_high_correlation_training_set_and_selection() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["train_subset=100", "hc_frames=5"])
    data = load_data(cfg)
    assert len(data.train) == 500 and data.train.side == 8 and data.train.channels == 1
    picked = data.train.select(np.array([7, 3]))
    assert torch.equal(picked.image(0), data.train.image(7)) and picked.labels.tolist() == data.train.labels[[7, 3]].tolist()
    views, _ = next(iter(data.train_loader(apply_overrides(cfg, ["workers=0"]))))
    assert views[0].shape == (cfg.batch_size, 1, 8, 8)


@pytest.fixture(scope="module")
def shared_cifar10_test() -> InMemoryImages:
    if not (SHARED_CIFAR10 / "test").is_dir():
        pytest.skip(f"shared CIFAR-10 folder not found at {SHARED_CIFAR10} (only present in the project workspace)")
    return load_split("folder", str(SHARED_CIFAR10), "test")


@pytest.mark.shared_data
def test_cifar10_test_split_long_tail(shared_cifar10_test: InMemoryImages) -> None:
    tail = long_tail(shared_cifar10_test, 100.0)
    assert tail.class_counts().tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]


@pytest.mark.shared_data
def test_cifar10_hc_frames_are_correlated(shared_cifar10_test: InMemoryImages) -> None:
    within, across = _mean_similarities(high_correlation(shared_cifar10_test.subset(60, 0), 5, "walk", 0))
    assert within > across + 0.2
