"""The two kinds of image set every data source returns: :class:`Images` (what training and
evaluation read) and :class:`InMemoryImages` (decoded uint8 images in memory); image files decoded
when read are :class:`~.folders.ImageFiles`."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import CrossLevelError, warn


class Images(abc.ABC):
    """What training and evaluation read from a set of images.

    ``labels`` int64 N (-1 = unlabelled), ``classes`` names, ``mean`` / ``std`` per channel for
    normalisation; ``image(i)`` is a uint8 C×H×W tensor; ``side`` the side (pixels) views are cropped to.
    """

    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: tuple[str, ...] = ()  # files left out because they could not be decoded

    def __len__(self) -> int:
        return len(self.labels)

    @property
    @abc.abstractmethod
    def channels(self) -> int: ...

    @property
    @abc.abstractmethod
    def side(self) -> int:
        """The side, in pixels, of the square views and test crops made from these images."""

    @abc.abstractmethod
    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as a uint8 C×H×W tensor."""

    @abc.abstractmethod
    def select(self, indices: np.ndarray) -> Images:
        """The images at ``indices`` (in that order), same class names and statistics."""

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def class_counts(self) -> np.ndarray:
        """Images per class (length = number of classes; labelled sets only)."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, size: int, seed: int, key: str = "subset") -> Images:
        """A seeded subset of ``size`` images, class-stratified when labelled (sorted indices); ``key``,
        the config key that asked for it, names it in the error when ``size`` is below the classes."""
        if size > len(self):
            warn(f"{key}={size} is more than the {len(self)} images there are: all of them are used")
        if size <= 0 or size >= len(self):
            return self
        if not self.labelled:
            return self.select(np.sort(np.random.default_rng(seed).choice(len(self), size=size, replace=False)))
        classes = len(np.unique(self.labels))
        if size < classes:
            raise CrossLevelError(f"{key}={size}: a class-stratified subset needs at least one image of each of the {classes} classes")
        return self.select(np.sort(stratified_choice(self.labels, size, seed)))


def stratified_choice(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` seeded indices of ``labels`` (N), every class kept and each in proportion to its share:
    scikit-learn's stratified split, or, where it refuses (a class of one image, fewer images left out
    than there are classes) or leaves a class out, one image of each class and the rest to the classes
    furthest below their share. ``size`` must lie between the number of classes and N."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    if not len(classes) <= size <= len(labels):
        raise ValueError(f"a stratified choice of {size} from {len(labels)} labels of {len(classes)} classes")
    try:
        chosen = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)[0]
        if len(np.unique(labels[chosen])) == len(classes):
            return chosen
    except ValueError:
        pass
    share = size * counts / len(labels)
    quota = np.clip(np.floor(share).astype(int), 1, counts)
    while quota.sum() < size:  # to the class furthest below its share that has images left
        room = np.flatnonzero(quota < counts)
        quota[room[np.argmax((share - quota)[room])]] += 1
    while quota.sum() > size:  # the one-image minimum overshot: from the class furthest above its share
        spare = np.flatnonzero(quota > 1)
        quota[spare[np.argmax((quota - share)[spare])]] -= 1
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)])


@dataclass(frozen=True)
class InMemoryImages(Images):
    """Decoded images in memory: ``images`` uint8 N×H×W×C, ``labels`` int64 N (-1 = unlabelled);
    ``skipped``: files left out because they could not be decoded (``bad_images=skip``)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def side(self) -> int:
        return int(self.images.shape[1])

    def image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index]).permute(2, 0, 1)

    def select(self, indices: np.ndarray) -> InMemoryImages:
        return replace(self, images=self.images[indices], labels=self.labels[indices])
