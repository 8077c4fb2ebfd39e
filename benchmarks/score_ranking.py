"""Rank digits runs that differ in λ (cld_weight) or T_G (cld_temperature) by the label-free score
NMI(f, f')·R(f, f') and compare with their kNN ranking (Spearman's ρ).

Trains each run of the default preset that is not already complete under --out, then runs
``crosslevel score`` over all of them. Example (about 2 CPU minutes per run)::

    PYTHONPATH=src python benchmarks/score_ranking.py --out runs/score-ranking
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from crosslevel.cli import main as crosslevel
from crosslevel.evaluation import protocols, spearman
from crosslevel.evaluation.features import Run

RUNS = {
    "lambda-0": ["cld_weight=0"],
    "lambda-0.25": ["cld_weight=0.25"],
    "lambda-1": ["cld_weight=1"],
    "lambda-4": ["cld_weight=4"],
    "tg-0.05": ["cld_temperature=0.05"],
    "tg-1": ["cld_temperature=1.0"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/score-ranking", help="parent folder of the runs")
    parser.add_argument("--config", default="digits-cld", help="preset every run starts from")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra overrides for every run, e.g. epochs=30")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for name, overrides in RUNS.items():
        if (out / name / "summary.json").is_file():
            print(f"{name}: already trained")
            continue
        train = ["train", "--config", args.config, f"out={out}", f"name={name}", "progress=false", *overrides, *args.overrides]
        if crosslevel(train) != 0:
            return 1
    if crosslevel(["score", *(str(out / name) for name in RUNS), "--out", str(out / "ranking.csv")]) != 0:
        return 1
    scores, probes = [], []
    print("\nlinear probe (cached protocol, f) of the same runs:")
    for name in RUNS:
        scores.append(json.loads((out / name / "score_f_I.json").read_text())["score"])
        probes.append(protocols.linear(Run.open(out / name))["top1"])
        print(f"  {name:<12} score {scores[-1]:.4f}  linear top-1 {probes[-1]:.2f}")
    print(f"Spearman's rho (score vs linear top-1, {len(RUNS)} runs): {spearman(scores, probes):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
