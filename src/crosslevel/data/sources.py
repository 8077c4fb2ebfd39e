"""Data sources: each returns :class:`~.images.Images` -- decoded uint8 images in memory
(:class:`~.images.InMemoryImages`) or, for large images, files decoded on the fly
(:class:`~.folders.ImageFiles`).

Built in here: scikit-learn's digits, CIFAR-10 / CIFAR-100 from the standard python folders
(``cifar-10-batches-py``, ``cifar-100-python``) and STL-10 from ``stl10_binary``; image folders and
list files (ImageNet-LT) are read by :mod:`.folders`, data sets packed as tar shards by :mod:`.shards`. :func:`load_split` picks the source of a ``dataset=``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CrossLevelError, MissingSplit
from .folders import LOADING_BARS, load_folder_split, load_list_split
from .images import Images, InMemoryImages

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
STL10_MEAN = STL10_STD = (0.5, 0.5, 0.5)  # the reference's STL-10 normalisation


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(pixels.mean(0).round(4).tolist()), tuple(np.maximum(pixels.std(0), 1e-3).round(4).tolist())


def load_digits_split(split: str) -> InMemoryImages:
    """scikit-learn's 1,797 handwritten digits (8×8, grey), a fixed stratified 75 / 25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.25, stratify=digits.target, random_state=0
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    mean, std = _stats(images[np.sort(train_idx)])
    classes = tuple(str(c) for c in digits.target_names)
    return InMemoryImages(images[idx], digits.target[idx].astype(np.int64), classes, mean, std)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise CrossLevelError(f"CIFAR file missing: {path} (is this a complete python-version CIFAR folder?)")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise CrossLevelError(f"cannot read CIFAR file {path}: {err}") from None


def _cifar_root(path: Path, folder: str) -> Path:
    for candidate in (path / folder, path):
        if candidate.name == folder and candidate.is_dir():
            return candidate
    if not path.exists():
        raise CrossLevelError(f"data path does not exist: {path}")
    raise CrossLevelError(f"no '{folder}' folder in {path} (expected the standard python-version CIFAR layout)")


def load_cifar_split(path: Path, split: str, num_classes: int) -> InMemoryImages:
    """CIFAR-10 or CIFAR-100 from the standard python pickles, as uint8 N×32×32×3."""
    if num_classes == 10:
        root = _cifar_root(path, "cifar-10-batches-py")
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        root = _cifar_root(path, "cifar-100-python")
        files = ["train" if split == "train" else "test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    batches = [_unpickle(root / name) for name in files]
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    except (KeyError, ValueError) as err:
        raise CrossLevelError(f"malformed CIFAR files in {root}: {err}") from None
    meta = root / meta_file
    classes = tuple(_unpickle(meta)[names_key]) if meta.is_file() else tuple(str(c) for c in range(num_classes))
    return InMemoryImages(images, labels, classes, CIFAR_MEAN, CIFAR_STD)


STL10_SIDE = 96


def _stl10_images(path: Path) -> np.ndarray:
    """uint8 N×96×96×3 from an STL-10 ``*_X.bin`` file (column-major C×W×H per image), read in chunks."""
    if not path.is_file():
        raise CrossLevelError(f"STL-10 file missing: {path} (is this a complete stl10_binary folder?)")
    per_image = 3 * STL10_SIDE * STL10_SIDE
    if path.stat().st_size % per_image:
        raise CrossLevelError(f"{path} is not a whole number of 96×96×3 images")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, STL10_SIDE, STL10_SIDE)
    images = np.empty((len(raw), STL10_SIDE, STL10_SIDE, 3), dtype=np.uint8)
    chunk = 4096
    for start in tqdm(range(0, len(raw), chunk), desc=f"reading {path.name}", leave=False, disable=len(raw) <= chunk or not LOADING_BARS.get()):
        images[start : start + chunk] = raw[start : start + chunk].transpose(0, 3, 2, 1)
    return images


def _stl10_labels(path: Path, count: int) -> np.ndarray:
    if not path.is_file():
        raise CrossLevelError(f"STL-10 file missing: {path}")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if len(labels) != count:
        raise CrossLevelError(f"{path} has {len(labels)} labels for {count} images")
    return labels


def load_stl10_split(path: Path, split: str, unlabeled: bool = True) -> InMemoryImages:
    """STL-10 from its binary folder: ``train`` (5k labelled, plus the 100k unlabeled images with
    label -1 when ``unlabeled``) or ``test`` (8k labelled)."""
    root = path / "stl10_binary" if (path / "stl10_binary").is_dir() else path
    if not (root / "train_X.bin").is_file():
        if not path.exists():
            raise CrossLevelError(f"data path does not exist: {path}")
        raise CrossLevelError(f"no STL-10 binary files in {root} (expected stl10_binary/train_X.bin, ...)")
    prefix = "train" if split == "train" else "test"
    images = _stl10_images(root / f"{prefix}_X.bin")
    labels = _stl10_labels(root / f"{prefix}_y.bin", len(images))
    if split == "train" and unlabeled:
        extra = _stl10_images(root / "unlabeled_X.bin")
        images = np.concatenate([images, extra])
        labels = np.concatenate([labels, np.full(len(extra), -1, dtype=np.int64)])
    names = root / "class_names.txt"
    classes = tuple(names.read_text().split()) if names.is_file() else tuple(str(c) for c in range(10))
    return InMemoryImages(images, labels, classes, STL10_MEAN, STL10_STD)


def load_split(
    dataset: str,
    data: str | None,
    split: str,
    image_size: int = 0,
    bad_images: str = "error",
    *,
    subset: str = "",
    list_file: str = "",
    in_memory: bool = True,
    stl10_unlabeled: bool = True,
) -> Images:
    """Load ``split`` ('train' or 'test') of ``dataset`` from path ``data``.

    ``bad_images`` (folder, lists: ``error`` or ``skip``), ``subset`` (folder), ``list_file``
    (lists: the split's list file), ``in_memory`` (folder, lists) and ``stl10_unlabeled`` (stl10
    train) only concern the data sets named.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "digits":
        return load_digits_split(split)
    if data is None:
        raise CrossLevelError(f"dataset '{dataset}' needs a path: add --data PATH")
    if dataset == "shards":
        from .shards import load_shard_split  # it builds on this module

        return load_shard_split(data, split, image_size, in_memory)
    path = Path(data).expanduser()
    if dataset in ("cifar10", "cifar100"):
        return load_cifar_split(path, split, 10 if dataset == "cifar10" else 100)
    if dataset == "stl10":
        return load_stl10_split(path, split, stl10_unlabeled)
    if dataset == "folder":
        return load_folder_split(path, split, image_size, bad_images, subset, in_memory)
    if dataset == "lists":
        if not list_file:
            raise (MissingSplit if split == "test" else CrossLevelError)(
                f"dataset 'lists' has no {split} list: set {split}_list=FILE"
            )
        return load_list_split(path, Path(list_file).expanduser(), image_size, in_memory, bad_images)
    raise CrossLevelError(f"unknown dataset '{dataset}'")
