"""On-device batched augmentation: the view recipes of :mod:`.views` for a whole uint8 batch at once.

Every image of the batch gets its own random parameters, drawn from the same distributions as
the torchvision recipe (the official CLD recipe), and the work is a handful of batched tensor ops, so it
runs where the batch is (a GPU) with no per-image Python and no host synchronisation.

Equivalence with the torchvision (CPU) path, op by op:

* RandomResizedCrop: the same sampler (10 attempts of area ~ U(scale), log-ratio ~ U(log ratio),
  integer size and offset, central-crop fallback), vectorised; the crop is resampled with
  bilinear ``grid_sample`` clamped to the crop, which equals ``resized_crop(..., antialias=True)``
  whenever the crop is upsampled (always so for crops of a small image resized to its own size).
  A crop larger than the output is resampled without anti-aliasing.
* Horizontal flip: folded into the sampling grid (flip commutes with the pointwise colour ops).
* ColorJitter: brightness, contrast, saturation and hue in a random order *per image*, exactly as
  torchvision draws ``randperm(4)`` per call; same factor ranges and formulas.
* RandomGrayscale, GaussianBlur (reflect padding, per-image σ), Normalize: the same formulas.
* RandomErasing (after normalisation, value 0): the same box sampler (10 attempts, no erasing when
  none fits), vectorised.
* Precision: the torchvision recipe runs on uint8 and rounds after the crop and after every colour
  op; here everything stays in float32 after the uint8 → [0, 1] conversion (no rounding), a
  difference below one grey level per op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
BLUR_SIGMA = (0.1, 2.0)  # GaussianBlur σ range in pixels (MoCo v2's PIL radius), at every image size


@dataclass(frozen=True)
class DeviceRecipe:
    """Parameters of a view recipe; the defaults are the ``cifar`` recipe."""

    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4)  # brightness, contrast, saturation, hue
    jitter_p: float = 1.0  # probability of applying ColorJitter
    grayscale_p: float = 0.2
    flip_p: float = 0.5
    blur_p: float = 0.0  # probability of GaussianBlur
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    erasing_p: float = 0.0  # probability of RandomErasing (after normalisation, value 0)
    erasing_scale: tuple[float, float] = (0.02, 0.33)  # erased area fraction
    erasing_ratio: tuple[float, float] = (0.3, 3.3)  # erased box aspect ratio (height / width)

    @property
    def colour(self) -> bool:
        """Whether the recipe changes colour (needs 3-channel images)."""
        return (self.jitter_p > 0 and any(self.jitter)) or self.grayscale_p > 0


DEVICE_RECIPES: dict[str, DeviceRecipe] = {
    # RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2), flip.
    "cifar": DeviceRecipe(),
    # MoCo v2 style: ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, GaussianBlur p 0.5, flip.
    "v2": DeviceRecipe(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5),
    # No augmentation: resize the whole image to the output size.
    "none": DeviceRecipe(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0, flip_p=0.0),
}


def _uniform(
    shape: tuple[int, ...], low: float, high: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator) * (high - low) + low


def _tried_boxes(
    batch: int, area: float | torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float], attempts: int,
    device: torch.device, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ``attempts`` tries at a box of ``scale`` × ``area`` (a number, or B×1 per image) with a
    log-uniform aspect in ``ratio``: the B×attempts sides ``(√(a·aspect), √(a/aspect))``, rounded."""
    target = area * _uniform((batch, attempts), *scale, device, generator)
    aspect = _uniform((batch, attempts), math.log(ratio[0]), math.log(ratio[1]), device, generator).exp()
    return (target * aspect).sqrt().round(), (target / aspect).sqrt().round()


def _first_fit(fits: torch.Tensor, first_side: torch.Tensor, second_side: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image, whether any try ``fits`` and the sides of the first one that does (of try 0 where none does)."""
    first = fits.int().argmax(dim=1, keepdim=True)
    return fits.any(dim=1), first_side.gather(1, first).squeeze(1), second_side.gather(1, first).squeeze(1)


def _random_corner(
    height: int | torch.Tensor, width: int | torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random top-left corner for each box inside a height×width image (sides: numbers or B)."""
    top = (torch.rand(len(box_h), device=box_h.device, generator=generator) * (height - box_h + 1)).floor()
    left = (torch.rand(len(box_w), device=box_w.device, generator=generator) * (width - box_w + 1)).floor()
    return top, left


def _per_image(side: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A side as B floats on ``device``: a number filled there (no host-to-device copy, so no
    synchronisation), per-image sides converted."""
    if isinstance(side, torch.Tensor):
        return side.to(device=device, dtype=torch.float32)
    return torch.full((batch,), float(side), device=device)


def sample_crops(
    batch: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Crop boxes of torchvision's ``RandomResizedCrop`` sampler, for ``batch`` images at once.

    ``height`` and ``width``: one image size for all, or B sides per image (images of different sizes).

    Returns:
        B×4 long ``(top, left, crop height, crop width)``.
    """
    height, width = (_per_image(side, batch, device) for side in (height, width))
    crop_w, crop_h = _tried_boxes(batch, (height * width)[:, None], scale, ratio, attempts, device, generator)
    fits = (crop_w > 0) & (crop_w <= width[:, None]) & (crop_h > 0) & (crop_h <= height[:, None])
    found, crop_w, crop_h = _first_fit(fits, crop_w, crop_h)
    # torchvision's fallback when no attempt fits: the central crop with the ratio clamped.
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fallback_w = torch.where(wide, (height * max(ratio)).round(), width)
    fallback_h = torch.where(narrow, (width / min(ratio)).round(), height)
    crop_w, crop_h = torch.where(found, crop_w, fallback_w), torch.where(found, crop_h, fallback_h)
    top, left = _random_corner(height, width, crop_h, crop_w, generator)
    top = torch.where(found, top, (height - crop_h).div(2, rounding_mode="floor"))
    left = torch.where(found, left, (width - crop_w).div(2, rounding_mode="floor"))
    return torch.stack([top, left, crop_h, crop_w], dim=1).long()


def sample_erasing(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Boxes of torchvision's ``RandomErasing`` sampler (``make_params``), for ``batch`` images at once.

    Returns:
        B×4 long ``(top, left, box height, box width)``; an empty box (0 × 0) where no attempt fits.
    """
    box_h, box_w = _tried_boxes(batch, float(height * width), scale, ratio, attempts, device, generator)
    found, box_h, box_w = _first_fit((box_h < height) & (box_w < width), box_h, box_w)
    box_h, box_w = torch.where(found, box_h, 0.0), torch.where(found, box_w, 0.0)
    top, left = _random_corner(height, width, box_h, box_w, generator)
    return torch.stack([top, left, box_h, box_w], dim=1).long()


def erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``images`` (float B×C×H×W) with the pixels of ``boxes`` (B×4 ``(top, left, height, width)``) set to 0."""
    _, _, height, width = images.shape
    top, left, box_h, box_w = boxes[:, :, None].unbind(dim=1)  # each B×1
    rows = torch.arange(height, device=images.device)[None, :]
    cols = torch.arange(width, device=images.device)[None, :]
    inside_rows = (rows >= top) & (rows < top + box_h)  # B×H
    inside_cols = (cols >= left) & (cols < left + box_w)  # B×W
    inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]  # B×1×H×W
    return images.masked_fill(inside, 0.0)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` out of ``images`` (float B×C×H×W), resize to size×size (bilinear), flip where ``flip``.

    Each output pixel samples its crop at the same source position as
    ``torchvision...resized_crop`` (half-pixel centres, clamped to the crop).

    Args:
        images: float B×C×H×W.
        boxes: B×4 ``(top, left, height, width)`` from :func:`sample_crops`.
        flip: B bool, mirror the view horizontally.
        size: output side.

    Returns:
        float B×C×size×size.
    """
    _, _, height, width = images.shape
    top, left, crop_h, crop_w = boxes.to(images.dtype).unbind(dim=1)
    steps = torch.arange(size, device=images.device, dtype=images.dtype) + 0.5
    xs = left[:, None] + steps[None, :] * (crop_w[:, None] / size) - 0.5  # B×S source columns
    ys = top[:, None] + steps[None, :] * (crop_h[:, None] / size) - 0.5  # B×S source rows
    xs = torch.minimum(torch.maximum(xs, left[:, None]), (left + crop_w - 1)[:, None])
    ys = torch.minimum(torch.maximum(ys, top[:, None]), (top + crop_h - 1)[:, None])
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    grid_x = (2 * xs + 1) / width - 1  # grid_sample's normalised coordinates (align_corners=False)
    grid_y = (2 * ys + 1) / height - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)  # B×S×S×2
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of float B×3×H×W images, B×1×H×W (torchvision's weights)."""
    r, g, b = images.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` with a per-image shift: RGB → HSV, h ← (h + shift) mod 1, → RGB.

    Args:
        images: float B×3×H×W in [0, 1].
        shift: B hue shifts in [-0.5, 0.5]; 0 leaves an image unchanged (up to rounding).
    """
    r, g, b = images.unbind(dim=1)
    maxc, minc = images.amax(dim=1), images.amin(dim=1)
    delta = maxc - minc  # = value · saturation
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue6 = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))  # 6·hue, mod 6
    # HSV → RGB in closed form: channel n ∈ (5, 3, 1) for (r, g, b) is
    # v − v·s·clamp(min(k, 4 − k), 0, 1) with k = (n + 6·hue) mod 6 -- torchvision's six-sector table.
    n = 5.0 - 2.0 * torch.arange(3, device=images.device, dtype=images.dtype)
    k = torch.remainder(n[None, :, None, None] + (hue6 + 6.0 * shift[:, None, None])[:, None], 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return maxc[:, None] - delta[:, None] * ramp


def color_jitter(images: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with per-image factors and per-image order.

    Args:
        images: float B×3×H×W in [0, 1].
        order: B×4 long, a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) per image.
        factors: B×4 ``(brightness, contrast, saturation, hue)``; identity is (1, 1, 1, 0).

    Brightness, contrast and saturation are all ``clamp(f·x + (1 − f)·target)`` with target 0, the
    image's mean luma, and its luma image; each of the four stages applies one blend (the other
    ops with their identity factor) and one hue shift (0 for all but the images whose stage it is).
    """
    ones = torch.ones_like(factors[:, 0])
    for stage in range(4):
        op = order[:, stage]
        blend = torch.where(op < 3, factors.gather(1, op.clamp(max=2)[:, None]).squeeze(1), ones)[:, None, None, None]
        luma = grayscale(images)
        target = torch.where(
            (op == 1)[:, None, None, None],
            luma.mean(dim=(2, 3), keepdim=True),
            torch.where((op == 2)[:, None, None, None], luma, torch.zeros_like(luma)),
        )
        images = (blend * images + (1.0 - blend) * target).clamp(0.0, 1.0)
        images = shift_hue(images, torch.where(op == 3, factors[:, 3], torch.zeros_like(ones)))
    return images


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image σ and reflect padding (torchvision's ``gaussian_blur``).

    Args:
        images: float B×C×H×W.
        sigma: B standard deviations in pixels.
        kernel_size: odd kernel side.
    """
    batch, channels, height, width = images.shape
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel = torch.softmax(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2, dim=1)  # B×k, normalised pdf
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B·C)×k
    pad = kernel_size // 2
    flat = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def blur_kernel_size(sigma_max: float, size: int) -> int:
    """The blur kernel side: odd and covering ±3·``sigma_max`` (13 for σ 2), whatever the image size,
    but at most 2·``size`` − 1 so that reflect padding (pad < side) works on tiny ``size``-pixel views."""
    return min(2 * math.ceil(3 * sigma_max) + 1, 2 * size - 1)


class DeviceAugment(nn.Module):
    """One random view of every image of a uint8 batch: B×C×H×W uint8 → B×C×size×size float, normalised.

    Args:
        recipe: a name of :data:`DEVICE_RECIPES` or a :class:`DeviceRecipe`.
        size: output side.
        mean, std: per-channel normalisation.
    """

    def __init__(self, recipe: str | DeviceRecipe, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if isinstance(recipe, str):
            if recipe not in DEVICE_RECIPES:
                raise ValueError(f"no on-device recipe {recipe!r}; available: {', '.join(DEVICE_RECIPES)}")
            recipe = DEVICE_RECIPES[recipe]
        if recipe.colour and len(mean) != 3:
            raise ValueError("colour augmentation needs 3-channel images")
        self.recipe = recipe
        self.size = size
        self.blur_kernel = blur_kernel_size(recipe.blur_sigma[1], size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None], persistent=False)

    def sample(
        self, batch: int, height: int | torch.Tensor, width: int | torch.Tensor,
        generator: torch.Generator | None = None, device: torch.device | None = None,
    ) -> dict[str, torch.Tensor]:
        """Random parameters of ``batch`` views of height×width images (sides: numbers, or B per image), on
        ``device`` (default: this module's); the erasing boxes ``erase`` are on the size×size view."""
        r, device = self.recipe, device or self.mean.device

        def coin(p: float) -> torch.Tensor:
            return torch.rand(batch, device=device, generator=generator) < p

        jitter = coin(r.jitter_p)
        ranges = [(max(0.0, 1.0 - j), 1.0 + j) for j in r.jitter[:3]] + [(-r.jitter[3], r.jitter[3])]
        factors = torch.stack([_uniform((batch,), lo, hi, device, generator) for lo, hi in ranges], dim=1)
        factors = torch.cat(  # the identity (1, 1, 1, 0) where ColorJitter is not applied
            [torch.where(jitter[:, None], factors[:, :3], 1.0), torch.where(jitter, factors[:, 3], 0.0)[:, None]], dim=1
        )
        return {
            "boxes": sample_crops(batch, height, width, r.scale, r.ratio, device, generator),
            "flip": coin(r.flip_p),
            "order": torch.rand(batch, 4, device=device, generator=generator).argsort(dim=1),
            "factors": factors,
            "grayscale": coin(r.grayscale_p),
            "blur": coin(r.blur_p),
            "sigma": _uniform((batch,), *r.blur_sigma, device, generator),
            # an empty box where the image is not erased
            "erase": sample_erasing(batch, self.size, self.size, r.erasing_scale, r.erasing_ratio, device, generator)
            * coin(r.erasing_p)[:, None],
        }

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The views of uint8 B×C×H×W ``images`` for given ``params`` (see :meth:`sample`), normalised."""
        return self.finish(resized_crop(images.float() / 255.0, params["boxes"], params["flip"], self.size), params)

    def finish(self, views: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Everything after the crop: colour, grayscale, blur, normalisation and erasing of float
        B×C×size×size ``views`` in [0, 1] (already cropped, resized and flipped), for ``params``."""
        r = self.recipe
        if r.jitter_p > 0 and any(r.jitter):
            views = color_jitter(views, params["order"], params["factors"])
        if r.grayscale_p > 0:
            views = torch.where(params["grayscale"][:, None, None, None], grayscale(views).expand_as(views), views)
        if r.blur_p > 0:
            blurred = gaussian_blur(views, params["sigma"], self.blur_kernel)
            views = torch.where(params["blur"][:, None, None, None], blurred, views)
        views = (views - self.mean) / self.std
        if r.erasing_p > 0:
            views = erase(views, params["erase"])
        return views

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], images.shape[2], images.shape[3], generator))


class DeviceViewSource(nn.Module):
    """A small-image data set kept on the device as uint8, turned into views batch by batch.

    The training loader then yields only image indices; ``forward(indices)`` gathers the images
    on the device and returns ``(views, indices)`` -- the batch the training step expects. The
    images are a non-persistent buffer: they move with the module (``.to(device)``) but are never
    written to a checkpoint.

    Args:
        images: uint8 N×H×W×C (an :class:`~crosslevel.data.InMemoryImages`'s array).
        augment: the view maker.
        num_views: views per image.
    """

    def __init__(self, images: torch.Tensor, augment: DeviceAugment, num_views: int = 2) -> None:
        super().__init__()
        self.register_buffer("images", images.permute(0, 3, 1, 2).contiguous(), persistent=False)
        self.augment = augment
        self.num_views = num_views

    def compile_views(self, mode: str) -> None:
        """``torch.compile`` the view maker in place with ``mode``: one static graph per batch shape."""
        self.augment.compile(dynamic=False, mode=mode)

    def forward(self, indices: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """B indices → (``num_views`` float B×C×size×size views, the indices)."""
        batch = self.images.index_select(0, indices.to(self.images.device))
        views = self.augment(batch.repeat(self.num_views, 1, 1, 1))  # all views in one pass: fewer kernel launches
        return list(views.chunk(self.num_views)), indices
