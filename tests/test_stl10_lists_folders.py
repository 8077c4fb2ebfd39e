"""Tiny files in each standard format: STL-10 binary, list files (ImageNet-LT), flat unlabelled
folders, ImageNet-style train/val folders with the ImageNet-100 class list, files decoded on the fly."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crosslevel.config import apply_overrides, load_preset
from crosslevel.data import ImageFiles, InMemoryImages, load_split
from crosslevel.data.folders import class_list
from crosslevel.errors import CrossLevelError
from crosslevel.methods import ContrastiveModule
from crosslevel.data.datamodule import load_data
from crosslevel.training import train

TINY = ["epochs=1", "limit_train_batches=1", "batch_size=4", "num_groups=2", "width=4", "feature_dim=8",
        "backbone=smallcnn", "progress=false", "workers=0", "knn_k=3"]


def write_stl10(root: Path, train: int = 6, test: int = 5, unlabeled: int = 4, seed: int = 0) -> tuple[Path, dict]:
    """A tiny ``stl10_binary`` folder (images stored column-major, labels 1..10); returns (root, arrays)."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    arrays = {}
    for split, count in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = rng.integers(0, 256, size=(count, 96, 96, 3), dtype=np.uint8)  # N×H×W×C
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # N×C×W×H, STL-10's order
        arrays[split] = images
        if split != "unlabeled":
            labels = np.arange(count) % 10
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
            arrays[f"{split}_y"] = labels
    (folder / "class_names.txt").write_text("\n".join(f"class{c}" for c in range(10)) + "\n")
    return root, arrays


def test_stl10_binary_reads_images_in_the_right_orientation(tmp_path: Path) -> None:
    root, arrays = write_stl10(tmp_path)
    train = load_split("stl10", str(root), "train")
    assert len(train) == 10 and train.side == 96 and train.classes[0] == "class0"
    assert np.array_equal(train.images[:6], arrays["train"]) and np.array_equal(train.images[6:], arrays["unlabeled"])
    assert train.labels.tolist() == arrays["train_y"].tolist() + [-1] * 4
    test = load_split("stl10", str(root / "stl10_binary"), "test")
    assert np.array_equal(test.images, arrays["test"]) and test.labels.tolist() == arrays["test_y"].tolist()
    labelled_only = load_split("stl10", str(root), "train", stl10_unlabeled=False)
    assert len(labelled_only) == 6 and labelled_only.labelled


def test_stl10_trains_on_train_plus_unlabeled_with_labelled_train_as_knn_support(tmp_path: Path) -> None:
    root, _ = write_stl10(tmp_path)
    cfg = apply_overrides(load_preset("stl10-cld"), TINY + [f"data={root}", f"out={tmp_path}", "name=stl"])
    data = load_data(cfg)
    assert len(data.train) == 10 and len(data.knn_support) == 6 and len(data.test) == 5
    assert ContrastiveModule(cfg, len(data.train), 3).branch.bank.memory.shape[0] == 10  # the bank fits the data used
    run_dir, knn = train(cfg)
    assert knn is not None and 0 <= knn["top1"] <= 100
    # the evaluation commands fit on the labelled train split, not on the unlabelled images
    from crosslevel.cli import main

    assert main(["eval", "knn", str(run_dir)]) == 0
    assert main(["eval", "semi", str(run_dir), "--fraction", "0.5", "--epochs", "1"]) == 0
    assert main(["score", str(run_dir), "--k", "2"]) == 0


def test_stl10_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CrossLevelError, match="no STL-10 binary files"):
        load_split("stl10", str(tmp_path), "train")
    root, _ = write_stl10(tmp_path / "partial")
    (root / "stl10_binary" / "unlabeled_X.bin").unlink()
    with pytest.raises(CrossLevelError, match="unlabeled_X.bin"):
        load_split("stl10", str(root), "train")


def write_png(path: Path, size: tuple[int, int], value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_list_files_in_the_imagenet_lt_format(tmp_path: Path) -> None:
    lines = []
    for i in range(6):
        write_png(tmp_path / "train" / f"n0{i % 3}" / f"{i}.png", (12, 12), i)
        lines.append(f"train/n0{i % 3}/{i}.png {i % 3}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    images = load_split("lists", str(tmp_path), "train", list_file=str(tmp_path / "train.txt"))
    assert isinstance(images, InMemoryImages) and len(images) == 6 and images.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert images.classes == ("0", "1", "2")
    (tmp_path / "bad.txt").write_text("train/n00/0.png\n")
    with pytest.raises(CrossLevelError, match="bad.txt:1"):
        load_split("lists", str(tmp_path), "train", list_file=str(tmp_path / "bad.txt"))
    (tmp_path / "missing.txt").write_text("train/n00/nothing.png 0\n")
    with pytest.raises(CrossLevelError, match="missing"):
        load_split("lists", str(tmp_path), "train", list_file=str(tmp_path / "missing.txt"))


def test_lists_train_end_to_end_with_test_list(tmp_path: Path) -> None:
    for split, count in (("train", 8), ("test", 4)):
        lines = []
        for i in range(count):
            write_png(tmp_path / split / f"{i}.png", (10, 10), i)
            lines.append(f"{split}/{i}.png {i % 2}")
        (tmp_path / f"{split}.txt").write_text("\n".join(lines))
    overrides = TINY + [f"data={tmp_path}", "dataset=lists", f"train_list={tmp_path / 'train.txt'}",
                        f"test_list={tmp_path / 'test.txt'}", f"out={tmp_path}", "name=lists"]
    cfg = apply_overrides(load_preset("digits-cld"), overrides + ["augment=cifar"])
    _, knn = train(cfg)
    assert knn is not None


def test_flat_unlabelled_folder_trains_without_labels(tmp_path: Path) -> None:
    for i in range(8):
        write_png(tmp_path / f"frame{i:03d}.jpg", (16, 16), i)
    images = load_split("folder", str(tmp_path), "train")
    assert len(images) == 8 and images.classes == () and not images.labelled
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["dataset=folder", f"data={tmp_path}", f"out={tmp_path / 'runs'}"])
    data = load_data(cfg)
    assert data.test is None
    run_dir, knn = train(cfg)
    assert knn is None and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_imagenet100_list_ships_with_the_package() -> None:
    names = (resources.files("crosslevel") / "data" / "imagenet100.txt").read_text().split()
    assert len(names) == 100 and len(set(names)) == 100
    assert all(len(n) == 9 and n.startswith("n") and n[1:].isdigit() for n in names)
    assert class_list("imagenet100") == set(names)


def write_imagenet_like(root: Path, wnids: list[str], sizes: tuple[tuple[int, int], ...] = ((20, 14), (14, 18))) -> None:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG with images of different, non-square sizes."""
    for split in ("train", "val"):
        for c, wnid in enumerate(wnids):
            for i, size in enumerate(sizes):
                write_png(root / split / wnid / f"{wnid}_{i}.png", size, c * 10 + i)


def test_imagenet100_subset_reads_only_the_cmc_classes(tmp_path: Path) -> None:
    wanted = sorted(class_list("imagenet100"))
    write_imagenet_like(tmp_path, wanted + ["n99999999"], sizes=((8, 8),))
    train = load_split("folder", str(tmp_path), "train", subset="imagenet100", in_memory=False)
    assert isinstance(train, ImageFiles) and train.classes == tuple(wanted) and len(train) == 100
    test = load_split("folder", str(tmp_path), "test", subset="imagenet100", in_memory=False)  # reads val/
    assert len(test) == 100 and test.classes == train.classes
    (tmp_path / "mine.txt").write_text("n99999999\n" + wanted[0] + "\n")
    mine = load_split("folder", str(tmp_path), "train", subset=str(tmp_path / "mine.txt"))
    assert mine.classes == (wanted[0], "n99999999")


def test_imagenet100_subset_names_missing_classes(tmp_path: Path) -> None:
    write_imagenet_like(tmp_path, sorted(class_list("imagenet100"))[:3], sizes=((8, 8),))
    with pytest.raises(CrossLevelError, match="has 3 of the 100 classes"):
        load_split("folder", str(tmp_path), "train", subset="imagenet100")


def test_files_decoded_on_the_fly_keep_their_size_and_train(tmp_path: Path) -> None:
    write_imagenet_like(tmp_path, ["n01", "n02"], sizes=((20, 14), (14, 18), (16, 16)))
    cfg = apply_overrides(
        load_preset("digits-cld"),
        TINY + ["dataset=folder", f"data={tmp_path}", "in_memory=false", "image_size=12", "augment=v2",
                "random_erasing=0.5", f"out={tmp_path / 'runs'}", "name=lazy"],
    )
    data = load_data(cfg)
    assert isinstance(data.train, ImageFiles) and data.train.image(0).shape == (3, 14, 20)
    views, _ = next(iter(data.train_loader(cfg)))
    assert views[0].shape == (4, 3, 12, 12)
    images, _ = next(iter(data.eval_loader(data.test, cfg)))
    assert images.shape == (6, 3, 12, 12)
    _, knn = train(cfg)
    assert knn is not None and torch.isfinite(torch.tensor(knn["top1"]))


def test_on_the_fly_decoding_needs_an_image_size() -> None:
    with pytest.raises(CrossLevelError, match="image_size"):
        apply_overrides(load_preset("digits-cld"), ["in_memory=false"])


def test_skipping_unreadable_files_needs_them_decoded_into_memory() -> None:
    """Files decoded on the fly are read mid-epoch: bad_images=skip there is refused, not ignored."""
    with pytest.raises(CrossLevelError, match="bad_images=skip leaves unreadable files out when the images are decoded into memory"):
        apply_overrides(load_preset("digits-cld"), ["in_memory=false", "image_size=8", "bad_images=skip"])


@pytest.mark.parametrize("progress", [True, False])
def test_progress_false_draws_no_loading_bars(tmp_path: Path, progress: bool, capsys: pytest.CaptureFixture[str]) -> None:
    for c in range(2):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i + c, np.uint8)).save(tmp_path / "train" / f"c{c}" / f"{i}.png")
    cfg = apply_overrides(load_preset("digits-cld"), ["dataset=folder", f"data={tmp_path}", f"progress={str(progress).lower()}"])
    load_data(cfg)
    assert ("decoding train" in capsys.readouterr().err) == progress
