"""kNN top-1 of every instance method with and without the CLD term, side by side, at the README's
small CPU budget (CIFAR-10 folder, ResNet-18 CIFAR stem at width 8, 4,000 class-stratified training
images, 2,000 test images, 10 epochs, 1 warm-up epoch, batch 128, k = 64, the same seed).

Each row trains a shipped preset (its method's recipe: augmentation, temperatures, λ, head) with the
budget on top; ``--presets`` picks the rows (comma-separated) so the grid can be split across
processes, ``--reuse`` reads finished runs from ``--out`` instead of training them again, and extra
``key=value`` arguments apply to every row (e.g. ``grouping=ncuts``).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/plugin_table.py --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from crosslevel.config import apply_overrides, load_preset
from crosslevel.run_dir import SUMMARY_FILE
from crosslevel.training import train

PAIRS = {
    "NPID": ("cifar10-npid", "cifar10-cld"),
    "MoCo": ("cifar10-moco", "cifar10-cldm"),
    "SimCLR": ("cifar10-simclr", "cifar10-simclr-cld"),
    "BYOL": ("cifar10-byol", "cifar10-byol-cld"),
}
BUDGET = [
    "dataset=folder", "train_subset=4000", "test_subset=2000", "backbone=resnet18_cifar", "width=8", "epochs=10",
    "warmup_epochs=1", "batch_size=128", "num_groups=64", "queue_size=1024", "augment_device=device", "workers=0",
    "seed=0", "progress=false",
]


def run(preset: str, data: Path, out: Path, reuse: bool, extra: list[str]) -> dict:
    """The summary of ``preset`` trained at the budget (read back from ``out`` with ``reuse``)."""
    name = "-".join([preset, *(item.replace("=", "") for item in extra)])
    summary = out / name / SUMMARY_FILE
    if not (reuse and summary.is_file()):
        cfg = apply_overrides(load_preset(preset), [*BUDGET, f"data={data}", f"out={out}", f"name={name}", *extra])
        started = time.time()
        train(cfg)
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 image folder (train/<class>/, test/<class>/)")
    parser.add_argument("--out", type=Path, default=Path("runs/plugin-table"))
    parser.add_argument("--presets", default=",".join(p for pair in PAIRS.values() for p in pair), help="rows to train")
    parser.add_argument("--reuse", action="store_true", help="read finished runs instead of training them again")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted = args.presets.split(",")
    results = {preset: run(preset, args.data.expanduser().resolve(), args.out, args.reuse, args.overrides) for preset in wanted}
    print(f"\nbudget: {' '.join(BUDGET)} {' '.join(args.overrides)}\n")
    print("| method | without CLD top-1 / top-5 | with CLD top-1 / top-5 | CLD − without (top-1) |")
    print("|---|---|---|---|")
    cell = lambda s: f"{s['knn']['top1']:.2f} / {s['knn']['top5']:.2f}"  # noqa: E731
    for method, (plain, cld) in PAIRS.items():
        if plain in results and cld in results:
            gain = results[cld]["knn"]["top1"] - results[plain]["knn"]["top1"]
            print(f"| {method} | {cell(results[plain])} | {cell(results[cld])} | {gain:+.2f} |")


if __name__ == "__main__":
    main()
