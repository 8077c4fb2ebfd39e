"""PIRL's jigsaw auxiliary (Misra & van der Maaten 2020), as the CLD reference's InfoMin/MoCo code
uses it for the paper's "CLDm §" ImageNet row: one more view of each image is cut into a 3×3 grid of
patches, each patch is encoded on its own, and the patch features, shuffled and concatenated, give a
jigsaw query that the instance branch scores against the same bank rows / keys as the image's query:

    loss = (1 − β)·instance loss + β·instance loss of the jigsaw query (+ λ·CLD),  β = ``jigsaw_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.heads import NormLinear

GRID = 3  # patches per side
CROP_OF_CELL = 64 / 85  # the reference: a 64-px patch at a random place in each 85-px cell of a 255-px crop


def jigsaw_patches(images: torch.Tensor, grid: int = GRID, crop_of_cell: float = CROP_OF_CELL) -> torch.Tensor:
    """Cut each image into ``grid``² patches: one square of side ``round(cell·crop_of_cell)`` at a
    random place inside each of the grid's cells (row-major), as the reference's ``JigsawCrop``.

    Args:
        images: B×C×H×W views (H, W ≥ ``grid``).

    Returns:
        (B·grid²)×C×c×c patches, the ``grid``² patches of image 0 first.
    """
    batch, channels, height, width = images.shape
    cell = min(height, width) // grid
    crop = max(1, round(cell * crop_of_cell))
    cells = torch.arange(grid, device=images.device) * cell
    tops = cells.repeat_interleave(grid)[None] + torch.randint(cell - crop + 1, (batch, grid * grid), device=images.device)
    lefts = cells.repeat(grid)[None] + torch.randint(cell - crop + 1, (batch, grid * grid), device=images.device)
    offsets = torch.arange(crop, device=images.device)
    rows = (tops[..., None] + offsets)[..., :, None]  # B×P×c×1
    cols = (lefts[..., None] + offsets)[..., None, :]  # B×P×1×c
    which = torch.arange(batch, device=images.device)[:, None, None, None]
    patches = images.permute(0, 2, 3, 1)[which, rows, cols]  # B×P×c×c×C
    return patches.permute(0, 1, 4, 2, 3).reshape(batch * grid * grid, channels, crop, crop)


class JigsawHead(nn.Module):
    """(B·P)×d pooled patch features → B×D unit jigsaw queries: a per-patch projection, a random
    permutation of each image's P patch features, their concatenation and a second projection (the
    reference's ``JigsawHead``; with ``normlinear`` both projections are cosine layers, with ``mlp``
    the first is Linear(d, d) → ReLU → projection)."""

    def __init__(self, in_dim: int, out_dim: int, normlinear: bool = False, mlp: bool = False, patches: int = GRID * GRID) -> None:
        super().__init__()
        linear = NormLinear if normlinear else nn.Linear
        trunk = [nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True)] if mlp else []
        self.per_patch = nn.Sequential(*trunk, linear(in_dim, out_dim))
        self.joint = linear(out_dim * patches, out_dim)
        self.patches, self.out_dim = patches, out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.per_patch(features).view(-1, self.patches, self.out_dim)  # B×P×D
        order = torch.rand(projected.shape[:2], device=features.device).argsort(dim=1)  # a permutation per image
        shuffled = projected.gather(1, order[..., None].expand_as(projected))
        return F.normalize(self.joint(shuffled.flatten(1)), dim=1)
