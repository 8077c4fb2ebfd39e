"""kNN top-1 of NPID, CLD, MoCo and CLDm side by side on CIFAR-10, CIFAR-10-LT and CIFAR-10-HC.

Every run uses its method's CIFAR-10 preset (augmentation, temperatures, λ, ...) with the same
small budget on top: a seeded subset, a narrow backbone, a few epochs, the same seed. The three
data settings train on the same number of images:

* balanced: a class-stratified subset of ``--train`` images;
* LT: CIFAR-10-LT (ρ = ``--rho``) built from the full training set, then a stratified subset of
  ``--train`` images (the profile is kept);
* HC: ``--train / --frames`` base images, each turned into ``--frames`` correlated frames.

kNN (k = 200) uses the training images actually used as support and a stratified subset of
``--test`` test images. The ``init`` row is the NPID model before any training (the floor that
training must beat). On the LT support set a 200-neighbour vote rarely picks a tail class, so the
LT rows are also evaluated with k = ``--lt-k``. ``--reuse`` evaluates runs already in ``--out``
instead of training them again. ``--data`` is a CIFAR-10 folder: the python-version pickles, or an image
folder (``train/<class>/*.jpg``, ``test/...``) that is converted once into pickles in ``--cache``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/methods_table.py --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from crosslevel.config import Config, apply_overrides, load_preset
from crosslevel.data.folders import load_folder_split
from crosslevel.methods import ContrastiveModule
from crosslevel.data.datamodule import Data, load_data
from crosslevel.run_dir import checkpoint_of, open_run
from crosslevel.training import evaluate_knn, train

METHODS = {
    "init": "cifar10-npid", "NPID": "cifar10-npid", "CLD": "cifar10-cld", "MoCo": "cifar10-moco", "CLDm": "cifar10-cldm"
}


def trained_model(cfg: Config, method: str, reuse: bool) -> tuple[ContrastiveModule, Data]:
    """(module, data) of the run ``cfg`` describes: untrained for ``init``, reloaded with ``reuse``, else trained."""
    run_dir = Path(cfg.out) / cfg.name
    if method == "init":
        pl.seed_everything(cfg.seed, verbose=False)
        data = load_data(cfg)
        return ContrastiveModule(cfg, len(data.train), data.train.channels), data
    if not (reuse and checkpoint_of(run_dir).is_file()):
        train(cfg)
    _, module, data = open_run(run_dir, with_data=True)
    return module, data


def cifar10_pickles(data: Path, cache: Path) -> Path:
    """A folder holding ``cifar-10-batches-py`` for ``data`` (written once from an image folder)."""
    if (data / "cifar-10-batches-py").is_dir() or data.name == "cifar-10-batches-py":
        return data
    target = cache / "cifar-10-batches-py"
    if not (target / "test_batch").is_file():
        target.mkdir(parents=True, exist_ok=True)
        train, test = load_folder_split(data, "train"), load_folder_split(data, "test")
        flat = lambda s: s.images.transpose(0, 3, 1, 2).reshape(len(s), -1)  # noqa: E731
        parts = np.array_split(np.arange(len(train)), 5)
        for number, rows in enumerate(parts, 1):
            batch = {"data": flat(train)[rows], "labels": train.labels[rows].tolist()}
            (target / f"data_batch_{number}").write_bytes(pickle.dumps(batch))
        (target / "test_batch").write_bytes(pickle.dumps({"data": flat(test), "labels": test.labels.tolist()}))
        (target / "batches.meta").write_bytes(pickle.dumps({"label_names": list(train.classes)}))
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 (python pickles or image folder)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/crosslevel-cifar10"), help="where converted pickles go")
    parser.add_argument("--out", type=Path, default=Path("runs/methods-table"))
    parser.add_argument("--train", type=int, default=2000, help="training images per setting")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rho", type=float, default=100.0)
    parser.add_argument("--frames", type=int, default=8, help="HC frames per base image")
    parser.add_argument("--lt-k", type=int, default=20, help="extra kNN k for the LT rows")
    parser.add_argument("--reuse", action="store_true", help="evaluate finished runs in --out instead of retraining")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ",".join(METHODS))
    parser.add_argument("--settings", default="balanced,LT,HC")
    parser.add_argument("overrides", nargs="*", help="extra key=value for every run")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = cifar10_pickles(args.data.expanduser(), args.cache)
    budget = [
        f"data={root}", f"epochs={args.epochs}", f"test_subset={args.test}", "backbone=smallcnn", "width=8",
        "feature_dim=64", "batch_size=128", "num_groups=10", "queue_size=1024", "ema_momentum=0.99",
        "warmup_epochs=1", "workers=0", "progress=false", "logger=csv", "seed=0", f"out={args.out}",
    ]
    settings = {
        "balanced": [f"train_subset={args.train}"],
        "LT": [f"lt_ratio={args.rho}", f"train_subset={args.train}"],
        "HC": [f"train_subset={args.train // args.frames}", f"hc_frames={args.frames}", "hc_mode=walk"],
    }
    rows = []
    for setting in args.settings.split(","):
        for method in args.methods.split(","):
            name = f"{setting}-{method}"
            cfg = apply_overrides(load_preset(METHODS[method]), budget + settings[setting] + [f"name={name}"] + args.overrides)
            started = time.time()
            module, data = trained_model(cfg, method, args.reuse)
            knn = evaluate_knn(module, data, cfg)
            if setting == "LT":
                few_neighbours = evaluate_knn(module, data, dataclasses.replace(cfg, knn_k=args.lt_k))
                knn.update({f"k{args.lt_k}_{key}": value for key, value in few_neighbours.items()})
            seconds = time.time() - started
            rows.append((setting, method, knn, seconds))
            print(f"{name}: {knn} ({seconds:.0f} s)", flush=True)

    print(f"\nbudget: {' '.join(budget[1:])} + per setting: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in settings.items()))
    groups = ("many", "medium", "few")
    print("\nkNN k = 200 (LT: also k = %d); top-1 per shot group on LT; seconds = train (if run) + eval" % args.lt_k)
    print(f"\n| setting | method | top-1 | top-5 | many | medium | few | top-1 k={args.lt_k} | many | medium | few | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for setting, method, knn, seconds in rows:
        shots = knn.get("shots") or {}
        cells = [knn["top1"], knn["top5"], *(shots.get(g) for g in groups), knn.get(f"k{args.lt_k}_top1"),
                 *((knn.get(f"k{args.lt_k}_shots") or {}).get(g) for g in groups)]
        text = " | ".join("" if value is None else f"{value:.1f}" for value in cells)
        print(f"| {setting} | {method} | {text} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
