"""Data variants of any labelled source: long-tailed subsets and highly correlated "video" frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import CrossLevelError
from .images import Images


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images kept per class: ``n_c = ⌊n_max · ρ^(−c/(C−1))⌋`` for c = 0..C−1 (class 0 is the head).

    The exponential profile of CIFAR-10-LT / CIFAR-100-LT (Cao et al. 2019); ρ = ``ratio`` is
    the head-to-tail ratio n_0 / n_{C−1}.
    """
    if num_classes == 1:
        return [n_max]
    return [int(n_max * ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def long_tail(images: Images, ratio: float, seed: int = 0) -> Images:
    """A seeded long-tailed subset: the first ``n_c`` images of a seeded shuffle of each class c.

    ``n_max`` is the largest class of ``images`` (5,000 for CIFAR-10); a class smaller than its
    ``n_c`` keeps all its images. Indices stay sorted; the test split is left balanced.
    """
    if not images.labelled:
        raise CrossLevelError("lt_ratio needs a labelled training set (class labels define the long tail)")
    counts = images.class_counts()
    quota = long_tail_counts(int(counts.max()), len(counts), ratio)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(images.labels == c))[:n] for c, n in enumerate(quota)]
    return images.select(np.sort(np.concatenate(keep)))


@dataclass(frozen=True)
class CameraWalk:
    """Per-frame camera parameters, each an array B×R (base image × frame), relative to the image.

    ``centre_y``/``centre_x``: crop centre in [0, 1]; ``scale``: crop side / image side;
    ``brightness``: multiplicative factor.
    """

    centre_y: np.ndarray
    centre_x: np.ndarray
    scale: np.ndarray
    brightness: np.ndarray


def camera_walk(num_images: int, frames: int, seed: int) -> CameraWalk:
    """A smooth seeded random walk of crop position, scale and brightness for every base image.

    Velocities follow an AR(1) process (0.8·v + noise), so consecutive frames move a little
    and in a consistent direction, like a hand-held camera; the crop stays inside the image.
    """
    rng = np.random.default_rng(seed)
    shape = (num_images, frames)
    scale, cy, cx, light = (np.empty(shape) for _ in range(4))
    s = rng.uniform(0.55, 0.85, num_images)
    y, x = rng.uniform(s / 2, 1 - s / 2), rng.uniform(s / 2, 1 - s / 2)
    b = np.ones(num_images)
    vs, vy, vx, vb = (np.zeros(num_images) for _ in range(4))
    for t in range(frames):
        scale[:, t], cy[:, t], cx[:, t], light[:, t] = s, y, x, b
        vs = 0.8 * vs + rng.normal(0, 0.015, num_images)
        vy = 0.8 * vy + rng.normal(0, 0.02, num_images)
        vx = 0.8 * vx + rng.normal(0, 0.02, num_images)
        vb = 0.8 * vb + rng.normal(0, 0.01, num_images)
        s = np.clip(s + vs, 0.4, 1.0)
        y = np.clip(y + vy, s / 2, 1 - s / 2)
        x = np.clip(x + vx, s / 2, 1 - s / 2)
        b = np.clip(b + vb, 0.85, 1.15)
    return CameraWalk(cy, cx, scale, light)


class HighCorrelationSet(Images):
    """Every base image turned into ``frames`` correlated frames (frame f of image b is row b·R + f).

    ``mode = walk``: each frame is a crop of the base image following :func:`camera_walk`,
    resized back to the base size, with a small brightness change; ``mode = repeat``: exact
    copies (the extreme case). Frames are rendered when read, so no extra memory is used; labels
    are the base image's.
    """

    def __init__(
        self, base: Images, frames: int, mode: str = "walk", seed: int = 0, rows: np.ndarray | None = None
    ) -> None:
        if frames < 1:
            raise CrossLevelError(f"hc_frames must be >= 1, got {frames}")
        if mode not in ("walk", "repeat"):
            raise CrossLevelError(f"hc_mode must be 'walk' or 'repeat', got {mode!r}")
        self.base, self.frames, self.mode, self.seed = base, frames, mode, seed
        self.walk = camera_walk(len(base), frames, seed) if mode == "walk" else None
        self.rows = np.arange(len(base) * frames) if rows is None else np.asarray(rows)
        self.labels = base.labels[self.rows // frames]
        self.classes, self.mean, self.std, self.skipped = base.classes, base.mean, base.std, base.skipped

    @property
    def channels(self) -> int:
        return self.base.channels

    @property
    def side(self) -> int:
        return self.base.side

    def image(self, index: int) -> torch.Tensor:
        base, frame = divmod(int(self.rows[index]), self.frames)
        image = self.base.image(base)
        if self.walk is None:
            return image
        height, width = image.shape[-2:]
        scale = self.walk.scale[base, frame]
        crop_h, crop_w = max(1, round(scale * height)), max(1, round(scale * width))
        top = min(height - crop_h, max(0, round(self.walk.centre_y[base, frame] * height - crop_h / 2)))
        left = min(width - crop_w, max(0, round(self.walk.centre_x[base, frame] * width - crop_w / 2)))
        frame_image = TF.resized_crop(image, top, left, crop_h, crop_w, [height, width], antialias=True)
        return TF.adjust_brightness(frame_image, float(self.walk.brightness[base, frame]))

    def select(self, indices: np.ndarray) -> HighCorrelationSet:
        return HighCorrelationSet(self.base, self.frames, self.mode, self.seed, self.rows[indices])


def high_correlation(images: Images, frames: int, mode: str = "walk", seed: int = 0) -> HighCorrelationSet:
    """An HC variant of ``images``: B base images → B·``frames`` correlated frames.

    See :class:`HighCorrelationSet`; ``mode`` is ``walk`` or ``repeat``, ``seed`` fixes the walk.
    """
    return HighCorrelationSet(images, frames, mode, seed)
