"""Augmentation recipes (torchvision v2 on uint8 tensors) and the datasets that apply them."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from torchvision.transforms import v2

from ..errors import CrossLevelError
from .device_views import BLUR_SIGMA, blur_kernel_size
from .images import Images, InMemoryImages
from .shards import ShardImages, ShardLabelled

Transform = Callable[[torch.Tensor], torch.Tensor]


def _finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def view_transform(
    recipe: str,
    size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    random_erasing: float = 0.0,
    blur: float = 0.5,
    flip: float = 0.5,
) -> Transform:
    """The random view of one image: uint8 C×H×W in, normalised float C×size×size out.

    Recipes:
        ``cifar``: RandomResizedCrop(size, scale 0.2–1), ColorJitter(0.4, 0.4, 0.4, 0.4),
        RandomGrayscale(0.2), horizontal flip with p = ``flip`` (the official CLD recipe;
        the original NPID's CIFAR script has no flip).
        ``v2``: MoCo v2: the same crop, ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8,
        RandomGrayscale(0.2), GaussianBlur(σ ∈ [0.1, 2] px, kernel ±3σ) with p = ``blur``, horizontal flip
        with p = ``flip``.
        ``digits``: small random crops and rotations, no flip and no colour (digits are grey
        and not mirror-symmetric).
        ``none``: no augmentation.
        ``auto``: ``cifar`` for colour images, ``digits`` for grey ones.

    ``random_erasing`` > 0 appends RandomErasing with that probability (after normalisation).
    """
    if recipe == "auto":
        recipe = "cifar" if channels == 3 else "digits"
    if recipe in ("cifar", "v2") and channels != 3:
        raise CrossLevelError(
            f"augment={recipe} needs colour images; these have {channels} channel(s): use augment=digits or none"
        )
    if recipe == "cifar":
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomGrayscale(0.2),
            *([v2.RandomHorizontalFlip(flip)] if flip > 0 else []),
        ]
    elif recipe == "v2":
        gaussian = v2.GaussianBlur(blur_kernel_size(BLUR_SIGMA[1], size), sigma=BLUR_SIGMA)
        steps = [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(0.2),
            *([v2.RandomApply([gaussian], p=blur)] if blur > 0 else []),
            *([v2.RandomHorizontalFlip(flip)] if flip > 0 else []),
        ]
    elif recipe == "digits":
        steps = [
            v2.RandomAffine(degrees=12, translate=(0.12, 0.12), scale=(0.8, 1.1), shear=8),
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
        ]
    elif recipe == "none":
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    else:
        raise ValueError(f"unknown augmentation recipe {recipe!r}")
    erasing = [v2.RandomErasing(p=random_erasing)] if random_erasing > 0 else []
    return v2.Compose(steps + _finish(mean, std) + erasing)


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...], resize: int = 0) -> Transform:
    """The deterministic test transform: resize the short side to ``resize`` (0: ``size``), centre-crop
    a ``size`` square, normalise. ``resize=256`` with ``size=224`` is the ImageNet protocol of the
    reference (and of MoCo); both steps are no-ops for square images at the native size.
    """
    return v2.Compose([v2.Resize(resize or size, antialias=True), v2.CenterCrop(size), *_finish(mean, std)])


class MultiViewDataset(Dataset):
    """Yields ``(views, index)``: ``num_views`` random views of image ``index`` (for training)."""

    def __init__(self, images: Images, transform: Transform, num_views: int = 2) -> None:
        self.images = images
        self.transform = transform
        self.num_views = num_views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], int]:
        image = self.images.image(index)
        return tuple(self.transform(image) for _ in range(self.num_views)), index


class LabelledDataset(Dataset):
    """Yields ``(image, label)`` with a fixed transform (for evaluation)."""

    def __init__(self, images: Images, transform: Transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.image(index)), int(self.images.labels[index])


def labelled_dataset(images: Images, transform: Transform) -> Dataset:
    """``(image, label)`` of every image with ``transform``: :class:`LabelledDataset` (in order), or
    a stream of packed shards read in shard order (:class:`~.shards.ShardLabelled`)."""
    return ShardLabelled(images, transform) if isinstance(images, ShardImages) else LabelledDataset(images, transform)


class LabelledBatches(Dataset):
    """Whole batches of in-memory images already at the test size with the test transform's last steps
    (to float in [0, 1], normalised), indexed by a list of image indices: the tensors
    :class:`LabelledDataset` gives image by image when its resize and crop leave the images as they are
    (a kNN pass over CIFAR-10's 60,000 images: ~0.8 s instead of ~8 s on one CPU thread,
    ``benchmarks/host_overhead.py``)."""

    def __init__(self, images: InMemoryImages, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.images = images
        self.finish = v2.Compose(_finish(mean, std))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """B indices → (float B×C×H×W, long B labels)."""
        batch = torch.from_numpy(self.images.images[indices]).permute(0, 3, 1, 2)
        return self.finish(batch).contiguous(), torch.from_numpy(self.images.labels[indices])


def eval_loader(images: Images, size: int, mean: tuple[float, ...], std: tuple[float, ...], resize: int, batch_size: int) -> DataLoader:
    """In-order batches of ``(images, labels)`` with the test transform (:func:`eval_transform`): in-memory
    square images of side ``size`` (nothing to resize or crop) as :class:`LabelledBatches`, the rest
    image by image (:func:`labelled_dataset`)."""
    if isinstance(images, InMemoryImages) and images.images.shape[1] == images.images.shape[2] == size == (resize or size):
        batches = BatchSampler(SequentialSampler(range(len(images))), batch_size, drop_last=False)
        return DataLoader(LabelledBatches(images, mean, std), sampler=batches, batch_size=None)
    return DataLoader(labelled_dataset(images, eval_transform(size, mean, std, resize)), batch_size=batch_size, num_workers=0)
