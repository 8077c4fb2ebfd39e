"""The paper's CIFAR-10 row beside crosslevel's runs: weighted-kNN top-1 (k = 200, f_I) at the end of
training and at the best evaluated epoch (what the reference reports), against Table 2 of the paper.

Reads finished or interrupted run directories (``summary.json`` when training ended, else the CSV
log of every attempt) and prints a markdown table; ``--out FILE`` writes it too.

    python benchmarks/paper_table.py runs/cld runs/npid-1view runs/cldm runs/moco
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from crosslevel.run_dir import current_metrics

# Table 2 of the paper, CIFAR-10 kNN top-1 (%), 200 epochs, ResNet-18; by the preset that trains it
PAPER_CIFAR10 = {"cifar10-npid-1view": ("NPID", 80.8), "cifar10-moco": ("MoCo", 82.1), "cifar10-cld": ("CLD", 86.7), "cifar10-cldm": ("CLDm", 87.5)}


def knn_curve(run: Path) -> dict[int, float]:
    """Epoch (from 1) → kNN top-1 of a run, from its logs as they stand (:func:`~crosslevel.run_dir.current_metrics`:
    finished, unfinished, or trained on after it finished)."""
    metrics = current_metrics(run)
    rows = csv.DictReader(open(metrics, newline="")) if metrics is not None else []
    return {int(float(row["epoch"])): float(row["knn_top1"]) for row in rows if row.get("knn_top1")}


def epoch_seconds(run: Path) -> list[float]:
    """Seconds per epoch from summary.json, else derived from the CSV logs' images/s (unfinished runs)."""
    summary = run / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())["epoch_seconds"]
    train_images = json.loads((run / "data.json").read_text())["num_train"] if (run / "data.json").is_file() else 0
    speeds = [float(row["images_per_s"]) for part in sorted((run / "logs").glob("version_*/metrics.csv"))
              for row in csv.DictReader(open(part, newline="")) if row.get("images_per_s")]  # fmt: skip
    return [train_images / speed for speed in speeds if speed > 0]


def row(run: Path) -> dict:
    """One run's line: preset, epochs trained of those configured, final and best kNN top-1, paper figure."""
    cfg = json.loads((run / "config.json").read_text())
    curve = knn_curve(run)
    method, paper = PAPER_CIFAR10.get(cfg.get("preset", ""), (cfg.get("preset") or run.name, None))
    last = max(curve) if curve else None
    best = max(curve, key=curve.get) if curve else None
    seconds = epoch_seconds(run)
    return {
        "run": str(run), "method": method, "preset": cfg.get("preset", ""), "epochs": f"{last or 0}/{cfg['epochs']}",
        "final": curve.get(last) if last else None, "best": curve.get(best) if best else None, "best_epoch": best,
        "paper": paper, "median_epoch_s": statistics.median(seconds) if seconds else None,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    """Markdown: method, preset, epochs, final / best kNN top-1, the paper's, final − paper and best − paper
    (the reference reports its best epoch), epoch time."""
    cell = lambda value, fmt="{:.2f}": "–" if value is None else fmt.format(value)  # noqa: E731
    gap = lambda value, paper: None if value is None or paper is None else value - paper  # noqa: E731
    lines = [
        "| method | preset | epochs (evaluated / configured) | kNN top-1 final | best (epoch) | paper | final − paper | best − paper | median epoch s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = f"{cell(r['best'])} ({r['best_epoch']})" if r["best"] is not None else "–"
        lines.append(
            f"| {r['method']} | `{r['preset']}` | {r['epochs']} | {cell(r['final'])} | {best} | {cell(r['paper'], '{:.1f}')} "
            f"| {cell(gap(r['final'], r['paper']), '{:+.2f}')} | {cell(gap(r['best'], r['paper']), '{:+.2f}')} | {cell(r['median_epoch_s'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    rows = [row(run) for run in args.runs if (run / "config.json").is_file()]
    missing = [str(run) for run in args.runs if not (run / "config.json").is_file()]
    text = table(rows) + "".join(f"\n(no run at {run})" for run in missing)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
