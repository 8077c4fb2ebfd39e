"""Data sources in every supported format, on tiny generated files and on the shared CIFAR-10."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_cifar10, write_cifar100, write_image_folder
from crosslevel.data import LabelledDataset, MultiViewDataset, eval_transform, load_split, view_transform
from crosslevel.data.images import stratified_choice
from crosslevel.errors import CrossLevelError


def test_digits_split_is_fixed_and_stratified() -> None:
    train, test = load_split("digits", None, "train"), load_split("digits", None, "test")
    assert len(train) + len(test) == 1797 and len(test) == 450
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (8, 8, 1)
    assert train.images.max() == 255 and set(np.unique(test.labels)) == set(range(10))
    assert np.array_equal(load_split("digits", None, "test").images, test.images)


def test_cifar10_pickles(tmp_path) -> None:
    root = write_cifar10(tmp_path, per_batch=6)
    train = load_split("cifar10", str(root), "train")
    test = load_split("cifar10", str(root / "cifar-10-batches-py"), "test")
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (6, 32, 32, 3)
    assert train.classes[3] == "class3" and train.labels.dtype == np.int64
    # pixel layout: the first 1024 bytes are the red plane in row-major order
    import pickle

    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle)["data"][0]
    assert np.array_equal(train.images[0, :, :, 0].ravel(), raw[:1024])
    assert np.array_equal(train.images[0, :, :, 2].ravel(), raw[2048:])


def test_cifar100_pickles(tmp_path) -> None:
    root = write_cifar100(tmp_path)
    train = load_split("cifar100", str(root), "train")
    assert train.images.shape == (8, 32, 32, 3) and len(train.classes) == 100


def test_cifar_missing_batch_is_a_clear_error(tmp_path) -> None:
    root = write_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(CrossLevelError, match="CIFAR file missing: .*data_batch_3"):
        load_split("cifar10", str(root), "train")


def test_image_folder(tmp_path) -> None:
    root = write_image_folder(tmp_path, classes=3, per_class=4, size=16)
    train = load_split("folder", str(root), "train")
    assert train.images.shape == (12, 16, 16, 3) and train.classes == ("class0", "class1", "class2")
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_a_labelled_test_folder_beside_a_flat_training_folder_keeps_its_own_labels(tmp_path) -> None:
    import shutil

    root = write_image_folder(tmp_path, classes=2, per_class=2, size=8)
    for image in (root / "train").glob("*/*.png"):  # train: unlabelled images, no class folders
        image.rename(root / "train" / f"{image.parent.name}-{image.name}")
    for folder in ("class0", "class1"):
        shutil.rmtree(root / "train" / folder)
    test = load_split("folder", str(root), "test")
    assert test.classes == ("class0", "class1") and test.labels.tolist() == [0, 0, 1, 1]


def test_a_subset_larger_than_the_data_warns_and_keeps_it_all(tmp_path) -> None:
    train = load_split("folder", str(write_image_folder(tmp_path, classes=2, per_class=3, size=8)), "train")
    with pytest.warns(UserWarning, match="train_subset=100 is more than the 6 images there are: all of them are used"):
        assert train.subset(100, 0, "train_subset") is train


def test_a_test_folder_with_fewer_classes_is_labelled_by_the_training_folders_names(tmp_path) -> None:
    import shutil

    root = write_image_folder(tmp_path, classes=3, per_class=2, size=8)
    shutil.rmtree(root / "test" / "class0")  # test: class1, class2 only
    test = load_split("folder", str(root), "test")
    assert test.classes == ("class0", "class1", "class2") and test.labels.tolist() == [1, 1, 2, 2]
    (root / "test" / "class1").rename(root / "test" / "horse")
    with pytest.raises(CrossLevelError, match=r"test has classes that .*train lacks: horse"):
        load_split("folder", str(root), "test")


@pytest.mark.parametrize("first,other", [((4, 4), (6, 4)), ((6, 4), (4, 4)), ((6, 4), (6, 5))])
def test_mixed_sizes_are_an_error_naming_two_files(tmp_path, first: tuple[int, int], other: tuple[int, int]) -> None:
    from PIL import Image

    from crosslevel.data import decode_images

    folder = tmp_path / "flat"
    folder.mkdir()
    for name, size in (("a.png", first), ("b.png", first), ("c.png", other)):
        Image.new("RGB", size, (9, 9, 9)).save(folder / name)
    message = rf"differ in size: .*a\.png is {first[0]}×{first[1]}, .*c\.png is {other[0]}×{other[1]}; set image_size=N"
    with pytest.raises(CrossLevelError, match=message):
        load_split("folder", str(folder), "train")
    with pytest.raises(CrossLevelError, match=message):
        decode_images(sorted(folder.iterdir()))
    assert load_split("folder", str(folder), "train", image_size=5).images.shape == (3, 5, 5, 3)
    (folder / "c.png").unlink()
    assert load_split("folder", str(folder), "train").images.shape == (2, first[1], first[0], 3)  # one size: kept as it is


@pytest.mark.parametrize(
    "dataset,path,message",
    [
        ("cifar10", "/no/such/dir", "data path does not exist"),
        ("folder", "/no/such/dir", "data path does not exist"),
    ],
)
def test_missing_paths(dataset: str, path: str, message: str) -> None:
    with pytest.raises(CrossLevelError, match=message):
        load_split(dataset, path, "train")


def test_empty_folder(tmp_path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(CrossLevelError, match="no images found"):
        load_split("folder", str(tmp_path), "train")


def test_subset_is_stratified_and_seeded() -> None:
    train = load_split("digits", None, "train")
    a, b = train.subset(200, seed=1), train.subset(200, seed=1)
    assert len(a) == 200 and np.array_equal(a.images, b.images)
    counts = np.bincount(a.labels, minlength=10)
    assert counts.min() >= 18 and counts.max() <= 22


@pytest.mark.parametrize(
    "counts, size", [([1, 40, 59], 50), ([5] * 10, 49), ([5] * 10, 10), ([1, 1, 3], 4), ([9, 10, 2, 1, 10], 15), ([2, 2, 2, 94], 10)]
)
def test_stratified_choice_where_scikit_learn_refuses(counts: list[int], size: int) -> None:
    """A class of one image, fewer left out than there are classes, or classes scikit-learn would leave
    out: each class keeps at least one image, and no image could move from one class to another to
    bring the two closer to their shares (deficits within one image); seeded, no index twice."""
    labels = np.repeat(np.arange(len(counts)), counts)
    chosen = stratified_choice(labels, size, seed=3)
    assert len(chosen) == len(set(chosen.tolist())) == size
    assert np.array_equal(chosen, stratified_choice(labels, size, seed=3))
    kept = np.bincount(labels[chosen], minlength=len(counts))
    deficit = size * np.array(counts) / len(labels) - kept
    assert (kept >= 1).all() and (kept <= counts).all()
    pairs = [(a, b) for a in range(len(counts)) for b in range(len(counts)) if kept[a] > 1 and kept[b] < counts[b]]
    assert all(deficit[b] - deficit[a] <= 1 + 1e-9 for a, b in pairs)


def test_subset_below_the_number_of_classes_is_one_error() -> None:
    train = load_split("digits", None, "train")
    with pytest.raises(CrossLevelError, match="train_subset=5: a class-stratified subset needs at least one image of each of the 10 classes"):
        train.subset(5, 0, "train_subset")
    assert len(train.subset(len(train) - 1, 0)) == len(train) - 1  # one image left out of 10 classes


def test_views_and_datasets() -> None:
    train = load_split("digits", None, "train")
    views = MultiViewDataset(train, view_transform("auto", 8, 1, train.mean, train.std))
    (v1, v2), index = views[5]
    assert index == 5 and v1.shape == (1, 8, 8) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    labelled = LabelledDataset(train, eval_transform(8, train.mean, train.std))
    image, label = labelled[5]
    assert label == int(train.labels[5])
    assert torch.equal(image, labelled[5][0])


def test_cifar_recipe_on_colour_images(tmp_path) -> None:
    train = load_split("cifar10", str(write_cifar10(tmp_path)), "train")
    transform = view_transform("cifar", 32, 3, train.mean, train.std)
    out = transform(train.image(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


@pytest.mark.shared_data
def test_shared_cifar10_folder(shared_cifar10) -> None:
    test = load_split("folder", str(shared_cifar10), "test")
    assert test.images.shape == (10000, 32, 32, 3)
    assert test.classes[0] == "airplane" and test.classes[-1] == "truck"
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_in_memory_test_batches_equal_the_per_image_test_transform() -> None:
    """kNN's test batches of in-memory images at their size come whole (LabelledBatches), equal to the
    per-image transform; images to resize or crop still go image by image."""
    from torch.utils.data import DataLoader

    from crosslevel.data.images import InMemoryImages
    from crosslevel.data.views import LabelledBatches, LabelledDataset, eval_loader, eval_transform

    rng = np.random.default_rng(0)
    images = InMemoryImages(rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, 37), tuple("abcde"),
                            (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))  # fmt: skip
    fast = eval_loader(images, 8, images.mean, images.std, 0, batch_size=16)
    slow = DataLoader(LabelledDataset(images, eval_transform(8, images.mean, images.std)), batch_size=16)
    assert isinstance(fast.dataset, LabelledBatches)
    pairs = list(zip(fast, slow, strict=True))
    assert [len(y) for (_, y), _ in pairs] == [16, 16, 5]
    for (x, y), (x_ref, y_ref) in pairs:
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and x.is_contiguous()
    for size, resize in ((6, 0), (8, 10)):  # a crop, a resize: image by image
        assert isinstance(eval_loader(images, size, images.mean, images.std, resize, batch_size=16).dataset, LabelledDataset)
