"""On-device batched augmentation against torchvision: op by op exactly, and the recipe in distribution."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from crosslevel.data.device_views import (
    DEVICE_RECIPES,
    DeviceAugment,
    DeviceViewSource,
    color_jitter,
    gaussian_blur,
    resized_crop,
    sample_crops,
    sample_erasing,
    shift_hue,
)
from crosslevel.config import apply_overrides, load_preset
from crosslevel.data.images import InMemoryImages
from crosslevel.data.sources import CIFAR_MEAN, CIFAR_STD
from crosslevel.data.views import view_transform
from crosslevel.data.datamodule import Data, device_views


def smooth_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Fixed uint8 count×3×size×size test images: smooth colour blobs (like downscaled photos)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8)


def test_resized_crop_equals_torchvision_per_image() -> None:
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    boxes = sample_crops(16, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"), torch.Generator().manual_seed(2))
    flip = torch.arange(16) % 2 == 0
    ours = resized_crop(images, boxes, flip, 32)
    for i, (top, left, height, width) in enumerate(boxes.tolist()):
        reference = TF.resized_crop(images[i], top, left, height, width, [32, 32], antialias=True)
        if flip[i]:
            reference = TF.horizontal_flip(reference)
        torch.testing.assert_close(ours[i], reference, atol=1e-5, rtol=0)


def test_crop_sampler_has_torchvision_distribution() -> None:
    torch.manual_seed(0)
    reference = v2.RandomResizedCrop(32, scale=(0.2, 1.0))
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    theirs = np.array([list(reference.make_params([image]).values()) for _ in range(4000)], dtype=float)
    ours = sample_crops(4000, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"), torch.Generator().manual_seed(3))
    ours = ours.numpy().astype(float)  # columns: top, left, height, width, as make_params
    for stat in (
        lambda x: x[:, 2] * x[:, 3] / 1024,  # area fraction (below U(0.2, 1)'s mean 0.6: large crops often do not fit)
        lambda x: np.log(x[:, 3] / x[:, 2]),  # log aspect ratio
        lambda x: x[:, 0] + x[:, 2] / 2,  # crop centre row
        lambda x: x[:, 1] + x[:, 3] / 2,  # crop centre column
    ):
        assert ks_2samp(stat(ours), stat(theirs)).pvalue > 1e-3
        assert abs(stat(ours).mean() - stat(theirs).mean()) < 4 * stat(theirs).std() / math.sqrt(2000)


def test_crop_sampler_falls_back_to_central_crop() -> None:
    boxes = sample_crops(5, 10, 40, (0.99, 1.0), (1.0, 1.0), torch.device("cpu"))  # never fits: 20×20 > 10 rows
    assert boxes.tolist() == [[0, 15, 10, 10]] * 5


def test_color_jitter_equals_torchvision_per_image() -> None:
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(24, 3, 8, 8, generator=generator)
    order = torch.rand(24, 4, generator=generator).argsort(dim=1)
    factors = torch.stack(
        [
            torch.rand(24, generator=generator) * 0.8 + 0.6,
            torch.rand(24, generator=generator) * 0.8 + 0.6,
            torch.rand(24, generator=generator) * 0.8 + 0.6,
            torch.rand(24, generator=generator) * 0.8 - 0.4,
        ],
        dim=1,
    )
    ours = color_jitter(images, order, factors)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(24):
        reference = images[i]
        for op in order[i].tolist():
            reference = ops[op](reference, float(factors[i, op]))
        torch.testing.assert_close(ours[i], reference, atol=2e-5, rtol=0)


def test_hue_shift_of_zero_is_identity() -> None:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(shift_hue(images, torch.zeros(4)), images, atol=2e-6, rtol=0)


@pytest.mark.parametrize("kernel", [5, 13])
def test_gaussian_blur_equals_torchvision_per_image(kernel: int) -> None:
    images = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    ours = gaussian_blur(images, sigma, kernel)
    for i in range(6):
        reference = TF.gaussian_blur(images[i], [kernel, kernel], [float(sigma[i])] * 2)
        torch.testing.assert_close(ours[i], reference, atol=1e-5, rtol=0)


def wide_gaussian_blur(images: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Naive float64 2-D Gaussian convolution of B×C×H×W ``images``: a (2·radius + 1)² kernel, reflect padding."""
    padded = np.pad(images.double().numpy(), ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    height, width = images.shape[2:]
    out = np.zeros(images.shape)
    for dy, dx in np.ndindex(kernel.shape):
        out += kernel[dy, dx] * padded[:, :, dy : dy + height, dx : dx + width]
    return torch.from_numpy(out)


def test_blur_reaches_sigma_2_at_32_pixels() -> None:
    """The reference blurs with σ up to 2 px at every size: the kernel covers ±3σ (a 5-tap one is off by 0.16)."""
    augment = DeviceAugment("v2", 32, CIFAR_MEAN, CIFAR_STD)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    ours = gaussian_blur(images, torch.full((4,), 2.0), augment.blur_kernel)
    torch.testing.assert_close(ours.double(), wide_gaussian_blur(images, 2.0, radius=10), atol=2e-3, rtol=0)
    (blur,) = [step.transforms[0] for step in view_transform("v2", 32, 3, CIFAR_MEAN, CIFAR_STD).transforms
               if isinstance(step, v2.RandomApply) and isinstance(step.transforms[0], v2.GaussianBlur)]  # fmt: skip
    assert min(blur.kernel_size) >= 13 and augment.blur_kernel >= 13


@pytest.mark.parametrize("size", [4, 8])
def test_blur_works_on_tiny_views(size: int) -> None:
    """Reflect padding needs pad < side: 13 taps on 8 px (pad 6); the kernel is clamped below 7 px."""
    recipe = dataclasses.replace(DEVICE_RECIPES["v2"], blur_p=1.0)
    views = DeviceAugment(recipe, size, CIFAR_MEAN, CIFAR_STD)(smooth_images(3, size))
    assert views.shape == (3, 3, size, size) and views.isfinite().all()
    transform = view_transform("v2", size, 3, CIFAR_MEAN, CIFAR_STD, blur=1.0)
    assert transform(smooth_images(1, size)[0]).shape == (3, size, size)


def test_blur_zero_means_no_blur_on_both_paths() -> None:
    cpu = view_transform("v2", 32, 3, CIFAR_MEAN, CIFAR_STD, blur=0.0)
    steps = [inner for step in cpu.transforms for inner in getattr(step, "transforms", [step])]
    assert not any(isinstance(step, v2.GaussianBlur) for step in steps)
    images = InMemoryImages(smooth_images(8).permute(0, 2, 3, 1).numpy(), np.zeros(8, dtype=np.int64), (), CIFAR_MEAN, CIFAR_STD)
    for blur in (0.0, 1.0):
        cfg = apply_overrides(load_preset("cifar10-moco"), ["data=unused", "augment_device=device", f"blur={blur}"])
        augment = device_views(cfg, images).augment
        assert augment.recipe.blur_p == blur and augment.recipe.erasing_p == cfg.random_erasing > 0
        assert augment.sample(1000, 32, 32, torch.Generator().manual_seed(11))["blur"].float().mean() == blur


def test_flip_sets_both_paths_and_the_original_npid_preset_never_mirrors() -> None:
    """``flip`` is the mirror probability of the cifar and v2 recipes on the CPU and on the device;
    ``cifar10-npid-1view`` (NPID's own CIFAR script) has none, CLD's recipe 0.5."""
    steps = view_transform("cifar", 32, 3, CIFAR_MEAN, CIFAR_STD, flip=0.0).transforms
    assert not any(isinstance(step, v2.RandomHorizontalFlip) for step in steps)
    (mirror,) = [step for step in view_transform("v2", 32, 3, CIFAR_MEAN, CIFAR_STD, flip=0.3).transforms if isinstance(step, v2.RandomHorizontalFlip)]
    assert mirror.p == 0.3
    images = InMemoryImages(smooth_images(8).permute(0, 2, 3, 1).numpy(), np.zeros(8, dtype=np.int64), (), CIFAR_MEAN, CIFAR_STD)
    for preset, rate in (("cifar10-npid-1view", 0.0), ("cifar10-cld", 0.5)):
        cfg = apply_overrides(load_preset(preset), ["data=unused", "augment_device=device"])
        augment = device_views(cfg, images).augment
        assert cfg.flip == augment.recipe.flip_p == rate
        flipped = augment.sample(2000, 32, 32, torch.Generator().manual_seed(11))["flip"].float().mean()
        assert flipped == 0.0 if rate == 0 else abs(flipped - rate) < 0.05
        cpu_views = Data(images, None).train_loader(dataclasses.replace(cfg, augment_device="cpu", batch_size=4)).dataset.transform
        assert [step.p for step in cpu_views.transforms if isinstance(step, v2.RandomHorizontalFlip)] == ([rate] if rate else [])


def test_erasing_sampler_has_torchvision_distribution() -> None:
    torch.manual_seed(12)
    reference = v2.RandomErasing(p=1.0)
    image = torch.ones(3, 32, 32)
    theirs = [reference.make_params([image]) for _ in range(4000)]
    theirs = np.array([[p["i"], p["j"], p["h"], p["w"]] for p in theirs if p["v"] is not None], dtype=float)
    ours = sample_erasing(4000, 32, 32, (0.02, 0.33), (0.3, 3.3), torch.device("cpu"), torch.Generator().manual_seed(13))
    ours = ours.numpy().astype(float)  # columns: top, left, height, width, as make_params
    assert len(theirs) > 3990 and (ours[:, 2] * ours[:, 3] > 0).mean() > 0.998  # hardly ever no box that fits
    ours = ours[ours[:, 2] * ours[:, 3] > 0]
    for stat in (
        lambda x: x[:, 2] * x[:, 3] / 1024,  # erased area fraction
        lambda x: np.log(x[:, 2] / x[:, 3]),  # log aspect ratio (height / width)
        lambda x: x[:, 0] + x[:, 2] / 2,  # box centre row
        lambda x: x[:, 1] + x[:, 3] / 2,  # box centre column
    ):
        assert ks_2samp(stat(ours), stat(theirs)).pvalue > 1e-3
        assert abs(stat(ours).mean() - stat(theirs).mean()) < 4 * stat(theirs).std() / math.sqrt(2000)
        quantiles = np.linspace(0.1, 0.9, 9)
        spread = np.quantile(stat(theirs), 0.9) - np.quantile(stat(theirs), 0.1)
        assert np.abs(np.quantile(stat(ours), quantiles) - np.quantile(stat(theirs), quantiles)).max() < 0.05 * spread


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_random_erasing_matches_torchvision(p: float) -> None:
    """Rate of erased views as torchvision's; erased pixels exactly 0 after normalisation, the others untouched."""
    n = 3000
    images = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)
    augment = DeviceAugment(dataclasses.replace(DEVICE_RECIPES["none"], erasing_p=p), 32, CIFAR_MEAN, CIFAR_STD)
    plain = DeviceAugment("none", 32, CIFAR_MEAN, CIFAR_STD)(images[:1])[0]  # no zero anywhere
    params = augment.sample(n, 32, 32, torch.Generator().manual_seed(14))
    views = augment.apply(images, params)
    top, left, height, width = params["erase"].unbind(dim=1)
    rows, cols = torch.arange(32)[None, :], torch.arange(32)[None, :]
    inside = (((rows >= top[:, None]) & (rows < (top + height)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + width)[:, None]))[:, None, :])  # fmt: skip
    assert (views == 0).all(dim=1).eq(inside).all() and (views[inside[:, None].expand_as(views)] == 0).all()
    torch.testing.assert_close(views, torch.where(inside[:, None], 0.0, plain.expand_as(views)), atol=0, rtol=0)
    torch.manual_seed(15)
    reference = v2.RandomErasing(p=p)
    normalised = plain.expand(n, -1, -1, -1)
    theirs = torch.stack([(reference(view) == 0).any() for view in normalised]).float().mean()
    ours = inside.flatten(1).any(dim=1).float().mean()
    tolerance = 4 * math.sqrt(0.25 / n)
    assert abs(ours - theirs) < 2 * tolerance and abs(ours - p) < tolerance


@pytest.mark.parametrize("name", ["cifar", "v2"])
def test_random_parameters_have_the_recipe_rates(name: str) -> None:
    recipe = DEVICE_RECIPES[name]
    augment = DeviceAugment(name, 32, CIFAR_MEAN, CIFAR_STD)
    n = 20000
    params = augment.sample(n, 32, 32, torch.Generator().manual_seed(7))
    tolerance = 4 * math.sqrt(0.25 / n)
    assert abs(params["flip"].float().mean() - recipe.flip_p) < tolerance
    assert abs(params["grayscale"].float().mean() - recipe.grayscale_p) < tolerance
    assert abs(params["blur"].float().mean() - recipe.blur_p) < tolerance
    jittered = params["factors"][:, 3] != 0
    assert abs(jittered.float().mean() - recipe.jitter_p) < tolerance
    factors = params["factors"][jittered]
    for column, strength in enumerate(recipe.jitter):
        centre = 0.0 if column == 3 else 1.0
        assert factors[:, column].min() >= centre - strength and factors[:, column].max() <= centre + strength
        assert abs(factors[:, column].mean() - centre) < 0.01
    first_op = torch.bincount(params["order"][:, 0], minlength=4).float() / n  # random order per image
    assert (first_op - 0.25).abs().max() < tolerance
    assert (params["order"].sort(dim=1).values == torch.arange(4)).all()


def _summaries(views: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-view statistics of normalised float views N×3×H×W (undone to 8-bit levels in [0, 1])."""
    pixels = views * torch.tensor(CIFAR_STD)[:, None, None] + torch.tensor(CIFAR_MEAN)[:, None, None]
    pixels = (pixels * 255).round() / 255
    columns = pixels.mean(dim=(1, 2))  # N×W column profile
    return {
        "brightness": pixels.mean(dim=(1, 2, 3)).numpy(),
        "contrast": pixels.std(dim=(1, 2, 3)).numpy(),
        "colourfulness": (pixels - pixels.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3)).numpy(),
        "grey": ((pixels.amax(1) - pixels.amin(1)).amax(dim=(1, 2)) < 0.01).numpy(),
        "flipped": (columns[:, -4:].mean(1) < columns[:, :4].mean(1)).numpy(),
    }


def test_device_views_match_the_torchvision_recipe_in_distribution() -> None:
    """Same fixed images through both paths, 1,500 views each: per-view statistics agree."""
    images = smooth_images(3)
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8)  # left→right brightness ramp: shows flips
    images[:, :, :, :] = (images.float() * 0.5 + ramp.float() * 0.5).round().to(torch.uint8)
    repeats = 500
    torch.manual_seed(8)
    transform = view_transform("cifar", 32, 3, CIFAR_MEAN, CIFAR_STD)
    cpu = torch.stack([transform(image) for image in images for _ in range(repeats)])
    augment = DeviceAugment("cifar", 32, CIFAR_MEAN, CIFAR_STD)
    device = augment(images.repeat_interleave(repeats, dim=0), torch.Generator().manual_seed(9))
    ours, theirs = _summaries(device), _summaries(cpu)
    for key in ("brightness", "contrast", "colourfulness"):
        assert ks_2samp(ours[key], theirs[key]).pvalue > 1e-3, key
    for key, rate in (("grey", 0.2), ("flipped", 0.5)):
        assert abs(ours[key].mean() - theirs[key].mean()) < 0.05, key
        assert abs(ours[key].mean() - rate) < 0.05, key


def test_view_source_keeps_uint8_images_out_of_checkpoints() -> None:
    images = smooth_images(10, 16).permute(0, 2, 3, 1)  # N×H×W×C as an InMemoryImages holds them
    source = DeviceViewSource(images, DeviceAugment("cifar", 16, CIFAR_MEAN, CIFAR_STD), num_views=3)
    assert source.images.dtype == torch.uint8 and source.images.shape == (10, 3, 16, 16)
    assert source.state_dict() == {}
    indices = torch.tensor([3, 7, 1, 0])
    views, returned = source(indices)
    assert len(views) == 3 and all(v.shape == (4, 3, 16, 16) and v.dtype == torch.float32 for v in views)
    assert torch.equal(returned, indices)
    plain = DeviceViewSource(images, DeviceAugment("none", 16, CIFAR_MEAN, CIFAR_STD), num_views=1)(indices)[0][0]
    expected = (images[indices].permute(0, 3, 1, 2) / 255.0 - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(
        CIFAR_STD
    )[:, None, None]
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)


def test_colour_recipes_refuse_grey_images() -> None:
    with pytest.raises(ValueError, match="3-channel"):
        DeviceAugment("cifar", 8, (0.5,), (0.2,))
    assert DeviceAugment("none", 8, (0.5,), (0.2,))(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 1, 8, 8)
