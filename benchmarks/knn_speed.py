"""Time of weighted-kNN scoring (``knn_scores``) at CIFAR scale: 50k support × 10k queries × 128-d.

Random unit features (the time does not depend on their values), k = 200, 10 classes; prints the
median of ``--repeats`` runs for each chunk size, and the time of the bare similarity products
(the floor any exact method pays).

    python benchmarks/knn_speed.py --chunks 0,256,1024,4096    # 0: the default chunking
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crosslevel.evaluation.knn import knn_scores


def median_seconds(function, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Median wall-clock and process-CPU seconds of ``function()``; on a shared machine the CPU
    seconds divided by the thread count estimate the wall time the machine would give unshared."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--support", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunks", default="0", help="comma-separated query chunk sizes; 0 = the default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    support = torch.nn.functional.normalize(torch.randn(args.support, args.dim, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=1)
    labels = torch.randint(0, 10, (args.support,), generator=generator)
    print(f"{args.support} × {args.queries} × {args.dim}-d, k=200, {torch.get_num_threads()} threads")
    wall, cpu = median_seconds(lambda: [q @ support.t() for q in queries.split(1024)], args.repeats)
    print(f"similarity products alone: {wall:.2f} s wall, {cpu:.2f} CPU-s")
    for chunk in (int(c) for c in args.chunks.split(",")):
        wall, cpu = median_seconds(lambda: knn_scores(support, labels, queries, 200, 0.1, 10, chunk or None), args.repeats)
        print(f"knn_scores, chunk {chunk or 'default'}: {wall:.2f} s wall, {cpu:.2f} CPU-s")


if __name__ == "__main__":
    main()
