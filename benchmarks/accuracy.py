"""kNN accuracy of the methods under named protocols (method × data variant × seed) at a stated budget.

Each protocol names a data setting, the config overrides that make it, and its budget; every
method (NPID, CLD, MoCo, CLDm) runs from its preset for that data set, for each seed, and the
script prints a table of weighted-kNN top-1 / top-5 (mean ± sd over seeds) with training time.
Protocols or methods this installation cannot run (a preset, a data-variant key or the data is
missing) are skipped with a note; the paper's full settings run only with ``--gpu-scale``.

Examples::

    python benchmarks/accuracy.py --protocols digits --seeds 0,1,2
    python benchmarks/accuracy.py --protocols cifar10-subset --epochs 5 --set accelerator=cpu
    python benchmarks/accuracy.py --protocols paper-cifar10 --gpu-scale --cifar10 /data/cifar10 \
        --set augment_device=device precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from crosslevel.config import FIELDS, apply_overrides, load_preset, preset_names
from crosslevel.errors import CrossLevelError
from crosslevel.training import train

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
METHODS = ("npid", "cld", "moco", "cldm")
CPU_MODEL = ["backbone=resnet18_cifar", "width=16", "batch_size=128", "num_groups=64", "workers=2"]


@dataclass(frozen=True)
class Protocol:
    """A data setting: the preset family, its overrides, what it needs, and its budget in words."""

    family: str  # preset prefix: digits | cifar10 | cifar100
    overrides: list[str] = field(default_factory=list)
    data: str = ""  # "cifar10" / "cifar100": needs that data set's path
    keys: tuple[str, ...] = ()  # config keys the protocol needs (data variants)
    gpu_scale: bool = False
    budget: str = ""


PROTOCOLS: dict[str, Protocol] = {
    "digits": Protocol("digits", budget="the digits presets as shipped (small CNN)"),
    "cifar10-subset": Protocol(
        "cifar10",
        ["train_subset=5000", "test_subset=2000", "epochs=30", *CPU_MODEL],
        data="cifar10",
        budget="5k train / 2k test images, ResNet-18 width 16, 30 epochs, batch 128, k = 64",
    ),
    "cifar10-lt": Protocol(
        "cifar10",
        ["lt_ratio=100", "test_subset=2000", "epochs=30", *CPU_MODEL],
        data="cifar10",
        keys=("lt_ratio",),
        budget="CIFAR-10-LT (ρ = 100, 12,406 images), 2k test, ResNet-18 width 16, 30 epochs",
    ),
    "cifar10-hc": Protocol(
        "cifar10",
        ["train_subset=1000", "hc_frames=5", "test_subset=2000", "epochs=30", *CPU_MODEL],
        data="cifar10",
        keys=("hc_frames",),
        budget="CIFAR-10-HC: 1k base images × 5 correlated frames, 2k test, ResNet-18 width 16, 30 epochs",
    ),
    "paper-cifar10": Protocol("cifar10", data="cifar10", gpu_scale=True, budget="the paper: presets as shipped, 200 epochs"),
    "paper-cifar100": Protocol("cifar100", data="cifar100", gpu_scale=True, budget="the paper: presets as shipped, 200 epochs"),
}


def data_overrides(kind: str, path: str | None) -> list[str]:
    """``dataset=... data=...`` for a CIFAR path: the python-version folder, or an image folder."""
    if not path:
        raise CrossLevelError(f"no {kind} data: pass --{kind} PATH")
    root = Path(path).expanduser()
    python_folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    if (root / python_folder).is_dir() or root.name == python_folder:
        return [f"dataset={kind}", f"data={root}"]
    if root.is_dir():
        return ["dataset=folder", f"data={root}"]
    raise CrossLevelError(f"{kind} data not found at {root}")


def run_protocol(name: str, protocol: Protocol, args: argparse.Namespace) -> tuple[list[dict], dict[str, str]]:
    rows, skipped = [], {}
    missing = [key for key in protocol.keys if key not in FIELDS]
    if missing:
        return rows, {name: f"this installation has no config key {', '.join(missing)} (data variant not available)"}
    if protocol.gpu_scale and not args.gpu_scale:
        return rows, {name: "GPU scale (200 epochs): pass --gpu-scale"}
    try:
        data = data_overrides(protocol.data, getattr(args, protocol.data)) if protocol.data else []
    except CrossLevelError as err:
        return rows, {name: str(err)}
    for method in args.methods.split(","):
        preset = f"{protocol.family}-{method}"
        if preset not in preset_names():
            skipped[f"{name}/{method}"] = f"preset {preset} is not in this installation"
            continue
        results = []
        for seed in args.seeds:
            overrides = protocol.overrides + data + [f"seed={seed}", f"out={args.out}", f"name={name}-{method}-s{seed}"]
            overrides += ([f"epochs={args.epochs}"] if args.epochs else []) + list(args.set)
            cfg = apply_overrides(load_preset(preset), overrides)
            print(f"== {name} / {method} / seed {seed}: {cfg.epochs} epochs", flush=True)
            started = time.time()
            run_dir, knn = train(cfg)
            results.append({"seed": seed, "run_dir": str(run_dir), "minutes": (time.time() - started) / 60, **(knn or {})})
        top1 = [r["top1"] for r in results if "top1" in r]
        top5 = [r["top5"] for r in results if "top5" in r]
        rows.append(
            {
                "protocol": name,
                "method": method,
                "seeds": args.seeds,
                "epochs": cfg.epochs,
                "top1": statistics.mean(top1),
                "top1_sd": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "top5": statistics.mean(top5),
                "minutes_per_run": statistics.mean(r["minutes"] for r in results),
                "budget": protocol.budget + (f" (epochs={args.epochs} here)" if args.epochs else ""),
                "runs": results,
            }
        )
    return rows, skipped


def format_table(rows: list[dict]) -> str:
    lines = [f"{'protocol':<16} {'method':<6} {'seeds':>5} {'epochs':>6} {'kNN top-1':>14} {'top-5':>7} {'min/run':>8}"]
    for r in rows:
        top1 = f"{r['top1']:.2f} ± {r['top1_sd']:.2f}"
        lines.append(
            f"{r['protocol']:<16} {r['method']:<6} {len(r['seeds']):>5} {r['epochs']:>6} {top1:>14} "
            f"{r['top5']:>7.2f} {r['minutes_per_run']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--protocols", default="digits,cifar10-subset,cifar10-lt,cifar10-hc", help=f"comma-separated of: {', '.join(PROTOCOLS)}"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated of: " + ", ".join(METHODS))
    parser.add_argument("--seeds", default="0", type=lambda text: [int(s) for s in text.split(",")])
    parser.add_argument("--epochs", type=int, default=0, help="override every protocol's epochs (a smaller budget)")
    parser.add_argument(
        "--cifar10",
        default=str(SHARED_CIFAR10) if SHARED_CIFAR10.is_dir() else None,
        help="CIFAR-10: python-version folder or image folder",
    )
    parser.add_argument("--cifar100", default=None, help="CIFAR-100: python-version folder or image folder")
    parser.add_argument("--gpu-scale", action="store_true", help="also run the paper's full 200-epoch protocols")
    parser.add_argument("--out", default="runs/accuracy", help="parent folder of the run directories")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra config overrides for every run")
    parser.add_argument("--json", help="also write the table (with every run) to this JSON file")
    args = parser.parse_args(argv)

    rows, skipped = [], {}
    for name in args.protocols.split(","):
        if name not in PROTOCOLS:
            parser.error(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
        found, missed = run_protocol(name, PROTOCOLS[name], args)
        rows += found
        skipped.update(missed)
    print("\nweighted kNN (k and σ from each preset), feature f_I, mean ± sd over seeds")
    print(format_table(rows))
    for name, row in {r["protocol"]: r for r in rows}.items():
        print(f"  {name}: {row['budget']}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except CrossLevelError as err:
        raise SystemExit(f"accuracy.py: error: {err}") from None
