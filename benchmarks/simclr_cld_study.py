"""CLD on SimCLR at the README's small CPU budget, one factor of ``cifar10-simclr-cld`` at a time
(λ, T_G, k, a projector trunk of the group head's own, fewer in-batch negatives): kNN top-1 / top-5 of f_I.

Every cell is ``cifar10-simclr-cld`` (or ``cifar10-simclr``, λ = 0) trained at plugin_table's budget
(its ``BUDGET`` and ``run``: CIFAR-10 folder, ResNet-18 CIFAR stem at width 8, 4,000 / 2,000 images,
10 epochs, batch 128, k = 64) with the cell's overrides and each of ``--seeds``. ``--cells`` picks
cells by name (comma-separated), ``--reuse`` reads finished runs from ``--out`` instead of training
them again; the table gives each cell's top-1 per seed, the means, and the difference to SimCLR's
mean over the same seeds (at the cell's batch) when those SimCLR runs are in the table.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/simclr_cld_study.py --data ../shared/data/cifar10 --reuse
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/simclr_cld_study.py --data ../shared/data/cifar10 \\
        --cells lambda0.25 --seeds 0,1,2 --reuse
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plugin_table import BUDGET, run  # noqa: E402  (the budget and the runner of the plug-in table)

# name → (preset, overrides): one factor changed per cell from the CLD setting of the first study
# (λ = 1, T_G = 0.2, k = 64 at this budget, one projector trunk Linear → BN → ReLU shared by f_I and
# f_G), λ written out so that the cells stay what they were whatever the preset's λ becomes
LAMBDA1 = ["cld_weight=1.0"]
CELLS = {
    "simclr": ("cifar10-simclr", []),
    "default": ("cifar10-simclr-cld", LAMBDA1),
    "lambda0.5": ("cifar10-simclr-cld", ["cld_weight=0.5"]),
    "lambda0.25": ("cifar10-simclr-cld", ["cld_weight=0.25"]),
    "lambda0.1": ("cifar10-simclr-cld", ["cld_weight=0.1"]),
    "T_G0.1": ("cifar10-simclr-cld", [*LAMBDA1, "cld_temperature=0.1"]),
    "T_G0.5": ("cifar10-simclr-cld", [*LAMBDA1, "cld_temperature=0.5"]),
    "k10": ("cifar10-simclr-cld", [*LAMBDA1, "num_groups=10"]),
    "k32": ("cifar10-simclr-cld", [*LAMBDA1, "num_groups=32"]),
    "separate-trunk": ("cifar10-simclr-cld", [*LAMBDA1, "mlp_shared=false"]),
    # fewer in-batch negatives (62 instead of 254), k/B as above: does CLD help SimCLR when NT-Xent has fewer?
    "simclr-b32": ("cifar10-simclr", ["batch_size=32", "num_groups=16"]),
    "default-b32": ("cifar10-simclr-cld", [*LAMBDA1, "batch_size=32", "num_groups=16"]),
}
BASELINES = {"default-b32": "simclr-b32"}  # the SimCLR cell each cell is compared with (else "simclr")


def table(results: dict[str, dict[int, dict]]) -> list[str]:
    """Markdown rows: cell, overrides, seeds, top-1 per seed (mean), mean top-5, mean top-1 − SimCLR's."""
    top1 = lambda summaries: [summaries[seed]["knn"]["top1"] for seed in sorted(summaries)]  # noqa: E731
    lines = [
        "| cell | overrides of cifar10-simclr-cld | seeds | kNN top-1 per seed (mean) | top-5 (mean) | − SimCLR, same seeds (top-1) |",
        "|---|---|---|---|---|---|",
    ]
    for name, summaries in results.items():
        preset, overrides = CELLS[name]
        values = top1(summaries)
        mean = statistics.fmean(values)
        top5 = statistics.fmean(summaries[seed]["knn"]["top5"] for seed in summaries)
        baseline = results.get(BASELINES.get(name, "simclr"), {})
        same = {seed: baseline[seed] for seed in summaries if seed in baseline}
        plain = preset == "cifar10-simclr"
        gain = f"{mean - statistics.fmean(top1(same)):+.2f}" if len(same) == len(summaries) and not plain else "—"
        setting = " ".join(["λ = 0 (cifar10-simclr)", *overrides]) if plain else " ".join(overrides)
        per_seed = " / ".join(f"{value:.2f}" for value in values)
        lines.append(f"| {name} | {setting} | {','.join(map(str, sorted(summaries)))} | {per_seed} ({mean:.2f}) | {top5:.2f} | {gain} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 image folder (train/<class>/, test/<class>/)")
    parser.add_argument("--out", type=Path, default=Path("runs/simclr-cld-study"))
    parser.add_argument("--cells", default=",".join(CELLS), help=f"cells to train or read ({', '.join(CELLS)})")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of every chosen cell")
    parser.add_argument("--reuse", action="store_true", help="read finished runs instead of training them again")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = args.data.expanduser().resolve()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    unknown = [name for name in args.cells.split(",") if name not in CELLS]
    if unknown:
        parser.error(f"unknown cells {', '.join(unknown)}; known: {', '.join(CELLS)}")
    results: dict[str, dict[int, dict]] = {}
    for name in args.cells.split(","):
        preset, overrides = CELLS[name]
        # seed 0 is the budget's own: no seed= in the override list, so the run directory is plugin_table's
        results[name] = {seed: run(preset, data, args.out, args.reuse, overrides + ([f"seed={seed}"] if seed else [])) for seed in seeds}
    print(f"\nbudget: {' '.join(BUDGET)}\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
