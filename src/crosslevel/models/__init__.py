"""Backbones (torchvision ResNets, a small CNN, timm models) and the instance / group heads.

:data:`TIMM_PREFIX` is read by the config, which is checked before PyTorch is imported: the modules
that need PyTorch load when one of their names is first used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

TIMM_PREFIX = "timm:"  # backbone=timm:<name> builds any timm model (models/timm_backbone.py)

if TYPE_CHECKING:
    from .backbones import build_backbone
    from .heads import NormLinear, ProjectionHead, TwoHeads

_MODULE_OF = {"build_backbone": "backbones", "NormLinear": "heads", "ProjectionHead": "heads", "TwoHeads": "heads"}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


__all__ = ["TIMM_PREFIX", "NormLinear", "ProjectionHead", "TwoHeads", "build_backbone"]
