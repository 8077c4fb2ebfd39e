"""``backbone=timm:<name>``: any timm model as the backbone (the optional extra ``crosslevel[timm]``)."""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..errors import CrossLevelError


def import_timm() -> ModuleType:
    """The ``timm`` package, or a clear error saying how to install it."""
    try:
        import timm
    except ImportError:
        raise CrossLevelError("timm backbones need the timm package: pip install 'crosslevel[timm]'") from None
    return timm


def check_timm_name(name: str) -> None:
    """Raise a :class:`CrossLevelError` (with the closest names) unless timm has a model ``name``."""
    timm = import_timm()
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(f'timm:{match}' for match in close)}?)" if close else ""
    raise CrossLevelError(f"timm has no model '{name}'{hint}; timm.list_models('*vit*') lists names that match a pattern")


class TimmBackbone(nn.Module):
    """A timm model built untrained (no download) without its classifier (``num_classes=0``):
    B×C×H×W → B×d features, pooled the model's own way (``global_pool``).

    ``self.model`` is the plain timm model: its ``state_dict`` loads into
    ``timm.create_model(name, num_classes=0, in_chans=C, img_size=S, **args)``.

    Args:
        name: a timm model name (``timm.list_models()``).
        in_channels: image channels (timm's ``in_chans``).
        image_size: the input's side, passed as ``img_size`` to the models that take it (ViTs: their
            position embeddings are made for (image_size / patch)² patches); 0, or a model that does not
            take it (ConvNeXt, ResNet: any size): the model's default.
        args: further keyword arguments of the model (the ``backbone_args`` key), e.g. ``patch_size=4``.
    """

    def __init__(self, name: str, in_channels: int = 3, image_size: int = 0, args: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_timm_name(name)
        kwargs = {**(args or {}), "pretrained": False, "num_classes": 0, "in_chans": in_channels}
        self.model = _create(import_timm(), name, kwargs, image_size)
        # the pooled width: a head's hidden layer where it has one (MobileNetV3), else num_features
        self.out_dim: int = getattr(self.model, "head_hidden_size", None) or self.model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _create(timm: ModuleType, name: str, kwargs: dict[str, Any], image_size: int) -> nn.Module:
    """``timm.create_model(name, img_size=image_size, **kwargs)``, without ``img_size`` for models
    that do not take it; a model timm cannot build is a :class:`CrossLevelError`."""
    sized = {"img_size": image_size} if image_size and "img_size" not in kwargs else {}
    try:
        try:
            return timm.create_model(name, **sized, **kwargs)
        except TypeError as err:
            if not sized or "img_size" not in str(err):
                raise
            return timm.create_model(name, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        shown = ", ".join(f"{key}={value!r}" for key, value in {**sized, **kwargs}.items())
        raise CrossLevelError(f"timm cannot build '{name}' with {shown}: {err}") from None
