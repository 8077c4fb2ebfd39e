"""Data sources: each returns an :class:`ImageSet` of decoded uint8 images kept in memory.

Supported: scikit-learn's digits (built in), CIFAR-10 / CIFAR-100 from the standard python
folders (``cifar-10-batches-py``, ``cifar-100-python``), and image folders (one sub-folder per
class, optionally under ``train/`` and ``test/``).
"""

from __future__ import annotations

import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import CrossLevelError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # image folders: natural-image statistics, split-independent
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSet:
    """Decoded images: ``images`` uint8 N×H×W×C, ``labels`` int64 N (-1 = unlabelled);
    ``skipped``: files left out because they could not be decoded (``bad_images=skip``)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as a uint8 C×H×W tensor."""
        return torch.from_numpy(self.images[index]).permute(2, 0, 1)

    def subset(self, size: int, seed: int) -> ImageSet:
        """A seeded subset of ``size`` images, class-stratified when labelled (sorted indices)."""
        if size <= 0 or size >= len(self):
            return self
        rng = np.random.default_rng(seed)
        if self.labelled:
            from sklearn.model_selection import train_test_split

            keep, _ = train_test_split(
                np.arange(len(self)), train_size=size, stratify=self.labels, random_state=seed
            )
        else:
            keep = rng.choice(len(self), size=size, replace=False)
        keep = np.sort(keep)
        return replace(self, images=self.images[keep], labels=self.labels[keep])


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(pixels.mean(0).round(4).tolist()), tuple(np.maximum(pixels.std(0), 1e-3).round(4).tolist())


def load_digits_split(split: str) -> ImageSet:
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
    return ImageSet(images[idx], digits.target[idx].astype(np.int64), classes, mean, std)


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


def load_cifar_split(path: Path, split: str, num_classes: int) -> ImageSet:
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
    return ImageSet(images, labels, classes, CIFAR_MEAN, CIFAR_STD)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16/32-bit and float grey rescaled to 0–255 (not clipped),
    transparency (RGBA, LA, palette with a transparent colour) composited over black, palette,
    grey, CMYK, ... converted by PIL."""
    if image.mode.startswith("I") or image.mode == "F":  # I;16 (16-bit PNG/TIFF), I (32-bit), F (float)
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 65535 → 255
        grey = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    return image.convert("RGB")


def _decode(path: Path, size: int | None) -> np.ndarray | None:
    """The image at ``path`` as uint8 H×W×3 (resized to size×size when given), or None if unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _first_size(paths: list[Path]) -> int | None:
    """The side of the first readable image when it is square, else None (no resizing)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                return image.size[0] if image.size[0] == image.size[1] else None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue
    return None


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted by path."""
    return sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def _decode_all(paths: list[Path], size: int | None, desc: str) -> list[np.ndarray | None]:
    """:func:`_decode` of every path on 4 threads, with a progress bar."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(tqdm(pool.map(lambda path: _decode(path, size), paths), total=len(paths), desc=desc, unit="img", leave=False, mininterval=1.0))


def decode_images(paths: list[Path], image_size: int = 0, desc: str = "decoding") -> np.ndarray:
    """Decode ``paths`` to RGB uint8 N×H×W×3; an unreadable file is an error naming it.

    All images must share one square size unless ``image_size`` > 0, which resizes each to that side.
    """
    arrays = _decode_all(paths, image_size or _first_size(paths), desc)
    bad = [str(path) for path, array in zip(paths, arrays) if array is None]
    if bad:
        raise CrossLevelError(f"cannot decode {len(bad)} image(s), first: {bad[0]} (corrupt, truncated or not an image)")
    if len({a.shape for a in arrays}) > 1:
        raise CrossLevelError(f"images in {Path(paths[0]).parent} differ in size: set an image size")
    return np.stack(arrays)


def load_folder_split(path: Path, split: str, image_size: int = 0, bad_images: str = "error") -> ImageSet:
    """An image folder (class sub-folders; ``train/`` and ``test/`` when present), decoded once.

    Normalisation uses the ImageNet statistics, so that both splits agree without reading
    each other.
    Images are decoded to RGB uint8 (see :func:`to_rgb`); all must share one size unless
    ``image_size`` > 0, which resizes every image to a square of that side. A file that cannot be
    decoded stops the load (``bad_images="error"``) or is left out with a warning and listed in
    ``ImageSet.skipped`` (``bad_images="skip"``).
    """
    if not path.exists():
        raise CrossLevelError(f"data path does not exist: {path}")
    if not path.is_dir():
        raise CrossLevelError(f"data path is not a folder: {path}")
    root = path / split if (path / "train").is_dir() else path
    if split == "test" and root == path:
        raise CrossLevelError(f"no 'test' folder in {path}: kNN evaluation needs a labelled test split")
    if not root.is_dir():
        raise CrossLevelError(f"no '{split}' folder in {path}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise CrossLevelError(f"data folder is not readable: {root} (permission denied)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if class_dirs:
        entries = [(f, c) for c, d in enumerate(class_dirs) for f in sorted(d.rglob("*"))]
        classes = tuple(d.name for d in class_dirs)
    else:  # a flat folder of unlabelled images
        entries = [(f, -1) for f in sorted(root.iterdir())]
        classes = ()
    entries = [(f, c) for f, c in entries if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not entries:
        raise CrossLevelError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    size = image_size or _first_size([f for f, _ in entries])
    arrays = _decode_all([f for f, _ in entries], size, f"decoding {root.name}")
    bad = [str(f) for (f, _), a in zip(entries, arrays) if a is None]
    if bad and bad_images != "skip":
        raise CrossLevelError(
            f"cannot decode {len(bad)} image(s) in {root}, first: {bad[0]} (corrupt, truncated, unreadable or not an image); "
            "remove them or set bad_images=skip to train without them"
        )
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {root}, first: {bad[0]}")
        entries = [e for e, a in zip(entries, arrays) if a is not None]
        arrays = [a for a in arrays if a is not None]
        if not arrays:
            raise CrossLevelError(f"none of the images in {root} can be decoded")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise CrossLevelError(f"images in {root} differ in size ({sorted(shapes)[:3]}...): set image_size=N")
    images = np.stack(arrays)
    labels = np.asarray([c for _, c in entries], dtype=np.int64)
    return ImageSet(images, labels, classes, IMAGENET_MEAN, IMAGENET_STD, tuple(bad))


def load_split(dataset: str, data: str | None, split: str, image_size: int = 0, bad_images: str = "error") -> ImageSet:
    """Load ``split`` ('train' or 'test') of ``dataset`` from path ``data``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "digits":
        return load_digits_split(split)
    if data is None:
        raise CrossLevelError(f"dataset '{dataset}' needs a path: add --data PATH")
    path = Path(data).expanduser()
    if dataset in ("cifar10", "cifar100"):
        return load_cifar_split(path, split, 10 if dataset == "cifar10" else 100)
    if dataset == "folder":
        return load_folder_split(path, split, image_size, bad_images)
    raise CrossLevelError(f"unknown dataset '{dataset}'")
