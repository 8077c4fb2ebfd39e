"""Run a function on several CPU processes joined in a gloo group, and compare what each rank ends with.

Reusable for anything that must equal its single-process counterpart under DDP (the NPID bank,
a MoCo queue, gathered evaluation features): write ``fn(rank, world_size, *args)`` returning a
dict of tensors, run it with :func:`run_on_ranks`, and compare with :func:`assert_ranks_match`.
The processes are forked (fast: nothing is imported again); ``fn`` and its arguments need no pickling.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable[..., dict], world_size: int, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, world_size, *args), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., dict[str, Any]], *args: Any, world_size: int = 2) -> list[dict[str, Any]]:
    """``[fn(0, W, *args), ..., fn(W-1, W, *args)]``, each computed in its own process of a gloo group."""
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_entry, args=(fn, world_size, folder, args), nprocs=world_size, join=True, start_method="fork")
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def assert_ranks_match(results: list[dict[str, Any]], reference: dict[str, Any], atol: float = 0.0, rtol: float = 0.0) -> None:
    """Every rank's tensors equal ``reference`` (the single-process result) within the tolerances."""
    for rank, result in enumerate(results):
        assert result.keys() >= reference.keys(), f"rank {rank} lacks {reference.keys() - result.keys()}"
        for key, expected in reference.items():
            torch.testing.assert_close(result[key], expected, atol=atol, rtol=rtol, msg=lambda m: f"rank {rank}, {key}: {m}")
