"""Backbones: torchvision ResNets (optionally with the CIFAR stem and a narrower width), a small CNN
and any timm model (:mod:`.timm_backbone`).

Every backbone maps B×C×H×W images to B×d pooled features and exposes ``d`` as ``out_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import ResNet

from ..errors import CrossLevelError
from . import TIMM_PREFIX
from .timm_backbone import TimmBackbone


def _rebuild_width(net: ResNet, width: int, in_channels: int) -> None:
    """Rebuild the stem and the four stages of a torchvision ResNet with ``width`` base channels.

    Uses torchvision's own ``_make_layer``; stages get width·(1, 2, 4, 8) planes.
    """
    block = type(net.layer1[0])
    depths = [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
    net.inplanes = width
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, depths[0])
    net.layer2 = net._make_layer(block, width * 2, depths[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, depths[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, depths[3], stride=2)
    for module in net.modules():  # torchvision's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def cifar_stem(net: ResNet) -> None:
    """Replace the ImageNet stem (7×7 stride-2 conv + max-pool) by a 3×3 stride-1 conv, no pool."""
    old = net.conv1
    net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()


class TopLeftPool(nn.Module):
    """The reference's ``F.avg_pool2d(x, window)`` where it yields one position: B×C×H×W → B×C×1×1,
    the mean of the top-left window×window of the map.

    It equals global pooling when the map is window×window (CIFAR at 32 px: 4×4). On STL-10's
    12×12 map with window 7 (the reference's STL setting) it ignores 95 of the 144 positions.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if not (self.window <= min(height, width) and max(height, width) < 2 * self.window):
            raise CrossLevelError(
                f"pool_window={self.window} pools one {self.window}×{self.window} corner, as the reference's "
                f"avg_pool2d; it needs a feature map of {self.window}..{2 * self.window - 1} positions a side, "
                f"got {height}×{width} (pool_window=0 pools globally)"
            )
        return x[..., : self.window, : self.window].mean(dim=(-2, -1), keepdim=True)


def pytorch_default_init(net: nn.Module) -> None:
    """Re-initialise every conv with PyTorch's layer default (kaiming-uniform, a = √5), as the reference's
    CIFAR ResNet does, instead of torchvision's kaiming-normal fan_out."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier: B×C×H×W → B×d pooled features.

    ``self.net`` is a plain torchvision ``ResNet`` (``fc`` = Identity), so its ``state_dict``
    loads into ``torchvision.models.resnet18()`` / ``resnet50()`` (with the same stem).

    Args:
        depth: 18 or 50.
        in_channels: image channels.
        width: channels of the first stage (64: the standard network).
        cifar: the CIFAR stem (3×3 stride-1 conv, no max-pool).
        pool_window: 0: global average pool; N: the reference's ``avg_pool2d(out, N)`` (:class:`TopLeftPool`).
        conv_init: ``torchvision`` (kaiming-normal fan_out) or ``pytorch`` (the layer default).
    """

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        width: int = 64,
        cifar: bool = False,
        pool_window: int = 0,
        conv_init: str = "torchvision",
    ) -> None:
        super().__init__()
        self.net: ResNet = {18: resnet18, 50: resnet50}[depth]()
        if width != 64 or in_channels != 3:
            _rebuild_width(self.net, width, in_channels)
        if cifar:
            cifar_stem(self.net)
        if pool_window:
            self.net.avgpool = TopLeftPool(pool_window)
        if conv_init == "pytorch":
            pytorch_default_init(self.net)
        self.out_dim = self.net.fc.in_features if width == 64 else width * 8 * self.net.layer1[0].expansion
        self.net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A four-layer conv net for CPU demos: B×C×H×W → B×(4·width)."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width, 1),
            *block(width, 2 * width, 1),
            *block(2 * width, 4 * width, 2),
            *block(4 * width, 4 * width, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(
    name: str,
    in_channels: int = 3,
    width: int = 64,
    pool_window: int = 0,
    conv_init: str = "torchvision",
    image_size: int = 0,
    args: dict[str, Any] | None = None,
) -> nn.Module:
    """Backbone ``name`` (resnet18_cifar | resnet18 | resnet50 | smallcnn | timm:<name>); it has ``out_dim``.

    ``pool_window`` and ``conv_init`` apply to the ResNets (see :class:`ResNetTrunk`). A ``timm:<name>``
    backbone (:class:`~.timm_backbone.TimmBackbone`) takes ``image_size`` and ``args`` and no ``width``
    or ``pool_window`` (the config refuses them).
    """
    if name.startswith(TIMM_PREFIX):
        return TimmBackbone(name.removeprefix(TIMM_PREFIX), in_channels, image_size, args)
    resnets = {"resnet18_cifar": (18, True), "resnet18": (18, False), "resnet50": (50, False)}
    if name in resnets:
        depth, cifar = resnets[name]
        return ResNetTrunk(depth, in_channels, width, cifar, pool_window, conv_init)
    if name == "smallcnn":
        return SmallCNN(in_channels, width)
    raise CrossLevelError(f"unknown backbone '{name}' (resnet18_cifar, resnet18, resnet50, smallcnn, timm:<name>)")
