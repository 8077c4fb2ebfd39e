"""Cost of CLD's grouping and of ``kmeans_scope=global``'s gather, on this machine's CPU.

1. CPU ms per call (median) of ``batch_kmeans`` and ``batch_ncuts`` (forward, as in a training step: each view
   is grouped once) at each ``--sizes`` entry ``BxDxk``, unit random rows, ``--iters`` iterations.
2. ms per step of the all-gather-with-gradient of ``kmeans_scope=global`` (forward all-gather of the
   B×2D group features of both views, backward all-reduce of the W·B×2D gradient) on ``--world``
   CPU processes joined by gloo, and the bytes each rank sends.

    python benchmarks/cld_grouping.py --sizes 256x128x128,64x128x16 --gather-batch 256 --dim 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crosslevel.cluster import batch_kmeans, batch_ncuts
from crosslevel.distributed import gather_with_grad


def cpu_ms_per_call(function: Callable[[], object], repeats: int) -> float:
    """Median process-CPU milliseconds of ``function()`` over ``repeats`` calls, after one warm-up call
    (at one thread this is the wall time an unshared core gives; robust on a busy machine)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(1000 * (time.process_time() - start))
    return statistics.median(times)


def grouping_costs(sizes: list[tuple[int, int, int]], iters: int, eigenvectors: int, repeats: int) -> list[dict]:
    rows = []
    for batch, dim, k in sizes:
        x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(0)), dim=1)
        kmeans = cpu_ms_per_call(lambda: batch_kmeans(x, k, iters), repeats)
        ncuts = cpu_ms_per_call(lambda: batch_ncuts(x, k, iters, eigenvectors), repeats)
        rows.append({"B": batch, "D": dim, "k": k, "kmeans_ms": kmeans, "ncuts_ms": ncuts, "ncuts_over_kmeans": ncuts / kmeans})
    return rows


def gather_bytes(batch: int, dim: int, world: int) -> dict[str, int]:
    """Bytes each rank sends per step (float32): the all-gather of B×2D, and the ring all-reduce of W·B×2D."""
    payload = batch * 2 * dim * 4
    return {"forward_all_gather": (world - 1) * payload, "backward_all_reduce": 2 * (world - 1) * payload}


def _gather_rank(rank: int, world: int, folder: str, batch: int, dim: int, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        features = torch.randn(batch, 2 * dim, requires_grad=True)

        def ms_per_step(step: Callable[[], object]) -> float:
            step()  # warm-up
            dist.barrier()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            dist.barrier()
            return 1000 * (time.perf_counter() - start) / steps

        forward = ms_per_step(lambda: gather_with_grad(features))
        both = ms_per_step(lambda: gather_with_grad(features).sum().backward())
        if rank == 0:
            (Path(folder) / "result.json").write_text(json.dumps({"forward_ms": forward, "forward_backward_ms": both}))
    finally:
        dist.destroy_process_group()


def gather_cost(batch: int, dim: int, world: int, repeats: int) -> dict:
    """Mean ms per step of the gather forward, and of forward + backward, over ``repeats`` steps."""
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_gather_rank, args=(world, folder, batch, dim, repeats), nprocs=world, join=True, start_method="fork")
        timings = json.loads((Path(folder) / "result.json").read_text())
    return {"B": batch, "D": dim, "world": world, **timings, "bytes_sent_per_rank": gather_bytes(batch, dim, world)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256x128x128,64x128x16", help="comma-separated BxDxk")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--eigenvectors", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--gather-batch", type=int, default=256, help="B per rank for the gather timing (0: skip)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    result = {"grouping": grouping_costs(sizes, args.iters, args.eigenvectors, args.repeats)}
    for row in result["grouping"]:
        print(f"B={row['B']} D={row['D']} k={row['k']}: kmeans {row['kmeans_ms']:.2f} ms, ncuts {row['ncuts_ms']:.2f} ms ({row['ncuts_over_kmeans']:.1f}×)")
    if args.gather_batch:
        gather = result["gather"] = gather_cost(args.gather_batch, args.dim, args.world, args.repeats)
        sent = gather["bytes_sent_per_rank"]
        print(
            f"gather B={gather['B']} D={gather['D']} on {gather['world']} gloo processes: forward {gather['forward_ms']:.2f} ms, "
            f"forward + backward {gather['forward_backward_ms']:.2f} ms; bytes sent per rank: {sent['forward_all_gather']} (all-gather) "
            f"+ {sent['backward_all_reduce']} (all-reduce)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
