"""Per-view BatchNorm: V views of a batch stacked into one forward pass, each view normalised with its
own batch statistics (``fused_views``).

One pass over V·B images instead of V passes over B launches each convolution, activation and head
once, with V times the work (a small-image step on a GPU is bound by kernel launches), while every
BatchNorm layer still sees each view apart: the outputs, gradients and running statistics are those
of V separate passes (to rounding), so BatchNorm never mixes views, as in the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import CrossLevelError


class _PerView:
    """Mixin of a BatchNorm class: in training with ``views`` = V > 1 the input (V·B rows, views
    stacked in order) is normalised chunk by chunk, each chunk updating the running statistics in
    turn, exactly as V calls would; otherwise the plain layer."""

    views: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = super().forward  # type: ignore[misc]
        if self.views == 1 or not self.training:
            return plain(x)
        return torch.cat([plain(chunk) for chunk in x.chunk(self.views)])


class PerViewBatchNorm1d(_PerView, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` with per-view statistics (:class:`_PerView`)."""


class PerViewBatchNorm2d(_PerView, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with per-view statistics (:class:`_PerView`)."""


PER_VIEW = {nn.BatchNorm1d: PerViewBatchNorm1d, nn.BatchNorm2d: PerViewBatchNorm2d}


def per_view_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Make every BatchNorm1d/2d of ``model`` per-view, in place (parameters, buffers and their names
    unchanged, so checkpoints are those of the plain model); returns those layers.

    Raises :class:`CrossLevelError` for another kind of batch normalisation (e.g. timm's
    BatchNormAct2d, SyncBatchNorm), whose statistics would mix the stacked views.
    """
    layers = []
    for name, module in model.named_modules():
        if type(module) in PER_VIEW:
            module.__class__ = PER_VIEW[type(module)]
        if isinstance(module, _PerView):
            layers.append(module)
        elif isinstance(module, _BatchNorm) and not isinstance(module, _PerView):
            raise CrossLevelError(
                f"fused_views=true needs plain BatchNorm layers to keep the views apart; {name or 'the model'} "
                f"is a {type(module).__name__}: use fused_views=false (one forward pass per view)"
            )
    return layers


@contextmanager
def stacked_views(layers: list[nn.Module], views: int) -> Iterator[None]:
    """Within the block, the per-view BatchNorm ``layers`` take batches of ``views`` stacked views."""
    for layer in layers:
        layer.views = views
    try:
        yield
    finally:
        for layer in layers:
            layer.views = 1
