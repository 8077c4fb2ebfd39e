"""The exported backbone file: read back with :func:`load_backbone`; and the key layouts of other tools
(a plain torchvision ``state_dict``, detectron2's ResNet names).

The file is ``torch.save`` of ``{"format": FORMAT, "version": VERSION, "backbone": {name, width,
in_channels, pool_window}, "state_dict": ..., "preprocessing": {channels, image_size, mean, std},
"feature_dim": d}``; a ``timm:<name>`` backbone also records ``image_size`` and ``args`` (the
constructor's keyword arguments) under ``"backbone"``, and loads back where timm is installed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CrossLevelError
from .backbones import build_backbone

FORMAT = "crosslevel-backbone"
VERSION = 1


def load_backbone(path: str | Path) -> nn.Module:
    """The backbone saved by ``crosslevel export`` at ``path``, in eval mode: B×C×H×W images normalised
    as ``model.preprocessing`` says (channels, image_size, mean, std) → B×``feature_dim`` features."""
    path = Path(path)
    if not path.is_file():
        raise CrossLevelError(f"no such file: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        saved = None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CrossLevelError(f"{path} is not a backbone written by `crosslevel export RUN --out FILE`")
    if saved["version"] > VERSION:
        raise CrossLevelError(f"{path} is version {saved['version']} of the export format; this crosslevel reads up to {VERSION}")
    try:
        spec = saved["backbone"]
        model = build_backbone(
            spec["name"], spec["in_channels"], spec["width"], spec["pool_window"], image_size=spec.get("image_size", 0), args=spec.get("args")
        )
        model.load_state_dict(saved["state_dict"])
        model.preprocessing = saved["preprocessing"]
    except (KeyError, RuntimeError) as err:
        raise CrossLevelError(f"{path} is a damaged backbone export: {str(err).strip().splitlines()[-1].strip()}") from None
    return model.eval()


def torchvision_architecture(spec: dict, cifar_stem: bool = True) -> str | None:
    """``resnet18`` / ``resnet50`` when the backbone ``spec`` is that torchvision network (width 64,
    3 channels, global pooling; the CIFAR stem only with ``cifar_stem``), else None."""
    names = {"resnet18": "resnet18", "resnet50": "resnet50", **({"resnet18_cifar": "resnet18"} if cifar_stem else {})}
    standard = spec["width"] == 64 and spec["in_channels"] == 3 and spec["pool_window"] == 0
    return names.get(spec["name"]) if standard else None


def detectron2_key(key: str) -> str:
    """A torchvision ResNet key as detectron2 names it: ``layerN`` → ``res{N+1}``, ``bnK`` →
    ``convK.norm``, ``downsample.0/1`` → ``shortcut`` / ``shortcut.norm``, the stem under ``stem.``."""
    key = re.sub(r"^layer(\d)", lambda match: f"res{int(match[1]) + 1}", key)
    key = key if key.startswith("res") else f"stem.{key}"
    key = re.sub(r"\bbn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
