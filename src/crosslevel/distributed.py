"""Small helpers for code that must behave the same on one process and under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks, in rank order; no gradient."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """:func:`gather` whose backward hands each rank its own rows of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = len(tensor)
        return gather(tensor)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad)
        return grad[rank() * ctx.rows : (rank() + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`gather` that keeps the autograd graph: ``[x_0; …; x_{W-1}]`` in rank order.

    Backward: the gradient w.r.t. the gathered tensor is summed over ranks (all-reduce) and each rank
    keeps its own rows, i.e. rank r receives ``Σ_s ∂L_s/∂x_r``. With DDP's averaging of parameter
    gradients over the W ranks this equals the gradient of ``(1/W) Σ_s L_s``: the single-process
    gradient when each L_s is the mean over rank s's rows of a loss on the concatenated batch.
    """
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def _max_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``tensor`` over the ranks (a new tensor under DDP)."""
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def any_rank(flag: torch.Tensor) -> bool:
    """True when the boolean scalar ``flag`` is true on at least one rank (one host sync)."""
    return bool(_max_over_ranks(flag.to(torch.int32)))


def largest_over_ranks(value: int, device: torch.device) -> int:
    """The largest of this rank's ``value`` over the ranks: ``value`` itself on one process, else one
    all-reduce on ``device`` and a host sync."""
    if world_size() == 1:
        return value
    return int(_max_over_ranks(torch.tensor(value, dtype=torch.int32, device=device)))
