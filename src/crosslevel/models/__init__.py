"""Backbones (torchvision ResNets, a small CNN) and the instance / group heads."""

from .backbones import build_backbone
from .heads import NormLinear, ProjectionHead, TwoHeads

__all__ = ["NormLinear", "ProjectionHead", "TwoHeads", "build_backbone"]
