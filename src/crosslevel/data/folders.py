"""Image files: listing a folder, decoding any image to RGB (one decode path, through the decoded-image
cache), and the two sources made of files -- image folders (one sub-folder per class, optionally under
``train/`` and ``test/`` or ``val/``; or a flat folder of unlabelled images; ``subset=imagenet100``
keeps the CMC ImageNet-100 classes) and list files of ``relative/path label`` lines (ImageNet-LT)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import CrossLevelError, MissingSplit, warn
from . import decode_cache
from .images import Images, InMemoryImages

LOADING_BARS: ContextVar[bool] = ContextVar("crosslevel_loading_bars", default=True)  # read by every loading bar


@contextmanager
def loading_bars(show: bool) -> Iterator[None]:
    """Whether loading a data set (decoding, reading, unpacking) draws progress bars while the block runs."""
    token = LOADING_BARS.set(show)
    try:
        yield
    finally:
        LOADING_BARS.reset(token)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # image folders: natural-image statistics, split-independent
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageFiles(Images):
    """Image files decoded (to RGB) when read, for data sets too large to hold decoded -- or a listing
    whose subset is chosen (from the labels) before :meth:`decoded` decodes only the chosen files.

    ``crop_side`` is the side of views and of the test crop (the files keep their own sizes; 0: not
    set); ``where`` names the folder or list file in messages.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_side: int
    where: Path = Path(".")

    @property
    def channels(self) -> int:
        return 3

    @property
    def side(self) -> int:
        return self.crop_side

    def image(self, index: int) -> torch.Tensor:
        pixels = _decode(self.paths[index], None)
        if pixels is None:
            raise CrossLevelError(f"cannot decode image {self.paths[index]} (corrupt, truncated, unreadable or not an image)")
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def select(self, indices: np.ndarray) -> ImageFiles:
        return replace(self, paths=tuple(self.paths[i] for i in indices), labels=self.labels[indices])

    def decoded(self, bad_images: str = "error") -> InMemoryImages:
        """The files decoded into memory, each resized to ``crop_side`` × ``crop_side`` when it is set
        (:func:`decode_images`, through the decoded-image cache)."""
        desc = f"decoding {self.where.name}"
        images, kept, bad = decode_images(list(self.paths), self.crop_side, desc, self.where, bad_images, cached=True)
        return InMemoryImages(images, self.labels[kept], self.classes, self.mean, self.std, tuple(bad))


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


def _one_size(paths: list[Path], arrays: list[np.ndarray], where: object) -> None:
    """Without ``image_size`` every image must have the first one's size: else an error naming two files."""
    first = arrays[0].shape
    for path, array in zip(paths, arrays):
        if array.shape != first:
            raise CrossLevelError(
                f"images in {where} differ in size: {paths[0]} is {first[1]}×{first[0]}, {path} is "
                f"{array.shape[1]}×{array.shape[0]}; set image_size=N to resize every image to N×N"
            )


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Every image file under ``folder`` (in its sub-folders too when ``recursive``), sorted by path.
    One ``scandir`` per folder, no ``stat`` per file: a 50k-image folder lists in a fraction of a second."""
    found, pending = [], [Path(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    pending += [Path(entry.path)] if recursive else []
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    found.append(Path(entry.path))
    return sorted(found, key=lambda path: path.parts)  # Path order, without comparing Path objects


def _decode_all(paths: list[Path], size: int | None, desc: str, cached: bool = False) -> list[np.ndarray | None]:
    """:func:`_decode` of every path on 4 threads, with a progress bar; ``cached``: read from and
    written to the decoded-image cache (:mod:`.decode_cache`)."""
    entry = decode_cache.entry_path(paths, size) if cached else None
    arrays = decode_cache.load(entry, len(paths)) if entry is not None else None
    if arrays is None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            decoding = pool.map(lambda path: _decode(path, size), paths)
            arrays = list(tqdm(decoding, total=len(paths), desc=desc, unit="img", leave=False, mininterval=1.0, disable=not LOADING_BARS.get()))
        if entry is not None:
            decode_cache.save(entry, arrays)
    return arrays


def decode_images(
    paths: list[Path],
    image_size: int = 0,
    desc: str = "decoding",
    where: object = None,
    bad_images: str | None = None,
    cached: bool = False,
) -> tuple[np.ndarray, list[int], list[str]]:
    """The one decode path: ``paths`` to RGB uint8 N×H×W×3, with the indices of the paths kept and the
    files that could not be decoded. An unreadable file is an error naming it (``bad_images`` None or
    ``error``; the latter says how to skip them), or -- ``skip`` -- left out with a warning. All
    images must share one size unless ``image_size`` > 0, which resizes each to a square of that side.
    ``cached``: decode once, then read the decoded images from :mod:`.decode_cache`.
    """
    where = where if where is not None else Path(paths[0]).parent
    arrays = _decode_all(paths, image_size or None, desc, cached)
    bad = [str(path) for path, array in zip(paths, arrays) if array is None]
    if bad and bad_images != "skip":
        hint = "; remove them or set bad_images=skip to go on without them" if bad_images == "error" else ""
        raise CrossLevelError(
            f"cannot decode {len(bad)} image(s) in {where}, first: {bad[0]} (corrupt, truncated, unreadable or not an image){hint}"
        )
    if bad:
        warn(f"skipped {len(bad)} unreadable image(s) in {where}, first: {bad[0]}")
    kept = [i for i, array in enumerate(arrays) if array is not None]
    if not kept:
        raise CrossLevelError(f"none of the images in {where} can be decoded")
    _one_size([paths[i] for i in kept], [arrays[i] for i in kept], where)
    return np.stack([arrays[i] for i in kept]), kept, bad


def class_list(subset: str) -> set[str]:
    """Class folder names to keep: ``imagenet100`` (the CMC list shipped here) or a file, one name a line."""
    if subset == "imagenet100":
        text = (resources.files("crosslevel") / "data" / "imagenet100.txt").read_text()
    else:
        path = Path(subset).expanduser()
        if not path.is_file():
            raise CrossLevelError(f"subset must be 'imagenet100' or a file of class names; no file {path}")
        text = path.read_text()
    return {line.strip() for line in text.splitlines() if line.strip()}


def _materialise(
    entries: list[tuple[Path, int]],
    classes: tuple[str, ...],
    where: Path,
    image_size: int = 0,
    in_memory: bool = True,
    bad_images: str = "error",
) -> Images:
    """Images of ``(file, label)`` entries: decoded once into memory, or a :class:`ImageFiles`
    (decoded when read; an unreadable file then fails when it is read)."""
    if not entries:
        raise CrossLevelError(f"no images found in {where} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    labels = np.asarray([c for _, c in entries], dtype=np.int64)
    files = ImageFiles(tuple(f for f, _ in entries), labels, classes, IMAGENET_MEAN, IMAGENET_STD, image_size, where)
    return files.decoded(bad_images) if in_memory else files


def load_folder_split(
    path: Path,
    split: str,
    image_size: int = 0,
    bad_images: str = "error",
    subset: str = "",
    in_memory: bool = True,
) -> Images:
    """An image folder (class sub-folders; ``train/`` and ``test/`` or ``val/`` when present).

    A folder without class sub-folders is a flat set of unlabelled images (training only).
    ``subset`` keeps only the listed class folders (``imagenet100``: the CMC ImageNet-100 list).
    Normalisation uses the ImageNet statistics, so that both splits agree without reading
    each other.
    In memory (the default) images are decoded to RGB uint8 once (see :func:`to_rgb`) and must
    share one size unless ``image_size`` > 0, which resizes every image to a square of that side;
    a file that cannot be decoded stops the load (``bad_images="error"``) or is left out with a
    warning and listed in ``InMemoryImages.skipped`` (``bad_images="skip"``). ``in_memory=False`` keeps
    file paths and decodes on the fly (for ImageNet-size data).
    """
    if not path.exists():
        raise CrossLevelError(f"data path does not exist: {path}")
    if not path.is_dir():
        raise CrossLevelError(f"data path is not a folder: {path}")
    has_splits = (path / "train").is_dir()
    if split == "test" and has_splits and not (path / "test").is_dir() and (path / "val").is_dir():
        split = "val"
    root = path / split if has_splits else path
    if split in ("test", "val") and root == path:
        raise MissingSplit(f"no 'test' folder in {path}: kNN evaluation needs a labelled test split")
    if not root.is_dir():
        raise (MissingSplit if split in ("test", "val") else CrossLevelError)(f"no '{split}' folder in {path}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise CrossLevelError(f"data folder is not readable: {root} (permission denied)")
    class_dirs = _class_dirs(root, subset)
    if class_dirs:
        classes = tuple(d.name for d in class_dirs)
        trained = _class_dirs(path / "train", subset) if root != path / "train" and has_splits else []
        if trained:  # labels numbered as the labelled training split's: matched by class name
            classes = tuple(d.name for d in trained)
            unknown = [d.name for d in class_dirs if d.name not in classes]
            if unknown:
                raise CrossLevelError(
                    f"{root} has classes that {path / 'train'} lacks: {', '.join(unknown[:5])}"
                    f"{' ...' if len(unknown) > 5 else ''} (the labels of both splits are their folder names)"
                )
        entries = [(f, classes.index(d.name)) for d in class_dirs for f in image_files(d)]
    else:  # a flat folder of unlabelled images
        entries = [(f, -1) for f in image_files(root, recursive=False)]
        classes = ()
    return _materialise(entries, classes, root, image_size, in_memory, bad_images)


def _class_dirs(root: Path, subset: str) -> list[Path]:
    """The class sub-folders of ``root`` in name order, those of ``subset`` only when one is named."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if subset:
        wanted = class_list(subset)
        class_dirs = [d for d in class_dirs if d.name in wanted]
        if len(class_dirs) < len(wanted):
            raise CrossLevelError(f"{root} has {len(class_dirs)} of the {len(wanted)} classes of subset '{subset}'")
    return class_dirs


def load_list_split(
    root: Path, list_file: Path, image_size: int = 0, in_memory: bool = True, bad_images: str = "error"
) -> Images:
    """Images named by a list file of ``relative/path label`` lines (ImageNet-LT's format), under ``root``."""
    if not root.is_dir():
        raise CrossLevelError(f"data path is not a folder: {root}")
    if not list_file.is_file():
        raise CrossLevelError(f"list file does not exist: {list_file}")
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise CrossLevelError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}")
        entries.append((root / parts[0], int(parts[1])))
    missing = [f for f, _ in entries if not f.is_file()]
    if missing:
        raise CrossLevelError(f"{len(missing)} files of {list_file} are missing under {root}, e.g. {missing[0]}")
    classes = tuple(str(c) for c in range(max(c for _, c in entries) + 1)) if entries else ()
    return _materialise(entries, classes, list_file, image_size, in_memory, bad_images)
