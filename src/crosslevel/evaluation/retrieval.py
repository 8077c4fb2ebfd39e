"""Top-1 retrieval: R(f, Y) (nearest other sample has the same label) and R(f, f') (own view found)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, exclude_self: bool, chunk_size: int = 1024) -> torch.Tensor:
    """Index (M longs) of the most cosine-similar row of ``keys`` (N×D) for each row of ``queries`` (M×D).

    With ``exclude_self`` (queries and keys are the same set, M = N), row i never returns i.
    """
    q = F.normalize(queries.float(), dim=1)
    k = F.normalize(keys.float(), dim=1)
    nearest = torch.empty(len(q), dtype=torch.long, device=q.device)
    for start in range(0, len(q), chunk_size):
        sims = q[start : start + chunk_size] @ k.t()
        if exclude_self:
            rows = torch.arange(len(sims), device=q.device)
            sims[rows, rows + start] = float("-inf")
        nearest[start : start + chunk_size] = sims.argmax(dim=1)
    return nearest


def label_retrieval(features: torch.Tensor, labels: torch.Tensor) -> float:
    """R(f, Y) in %: share of samples whose nearest *other* sample (cosine) has the same label."""
    nearest = nearest_neighbours(features, features, exclude_self=True)
    labels = labels.to(nearest.device)
    return 100.0 * (labels[nearest] == labels).float().mean().item()


def view_retrieval(features: torch.Tensor, view_features: torch.Tensor) -> float:
    """R(f, f') in %: share of images i whose nearest augmented view among all N views is its own, f'_i."""
    nearest = nearest_neighbours(features, view_features, exclude_self=False)
    return 100.0 * (nearest == torch.arange(len(nearest), device=nearest.device)).float().mean().item()
