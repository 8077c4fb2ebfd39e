"""The commands that read a trained run: ``eval`` (kNN, linear probe, NMI, retrieval, semi-supervised),
``score``, ``plot``, ``embed``, ``cluster`` and ``export``. A command is a function of the parsed
arguments that returns the exit code, and one entry in :func:`add_commands`."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_common import amount, check_data_path, check_output, count, print_table
from .config import FEATURES, is_url
from .errors import CrossLevelError, warn

if TYPE_CHECKING:
    from .evaluation.features import Run


def open_evaluation_run(run_dir: str, data: str | None) -> Run:
    """A run opened for a command that reads its data set: from ``data`` (``--data``: the data
    set's new location) when given, else from the path saved in the run."""
    from .evaluation.features import Run

    run = Run.open(Path(run_dir))
    if data is None:
        check_data_path(run.cfg, run.path, "--data PATH")
    elif run.cfg.dataset == "digits":
        raise CrossLevelError(f"run {run_dir} was trained on the built-in digits: --data does not apply")
    else:
        run.cfg = dataclasses.replace(run.cfg, data=data if is_url(data) else os.path.abspath(Path(data).expanduser()))
    return run


def _write_json(run_dir: Path, command: str, detail: str, result: object) -> None:
    """Write a command's result where the run directory keeps it (:func:`~.run_dir.result_file`)."""
    from .run_dir import result_file

    path = result_file(run_dir, command, detail)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


METRIC_DEFAULT_FEATURE = {"knn": "f_I", "linear": "f", "nmi": "f_I", "retrieval": "f_I"}
METRIC_COLUMNS = ["metric", "feature", "top1", "top5", "nmi", "retrieval", "shots"]


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import protocols

    run = open_evaluation_run(args.run_dir, args.data)
    metrics = list(METRIC_DEFAULT_FEATURE) if args.metric == "all" else [args.metric]
    results = {}
    for metric in metrics:
        feature = args.feature or METRIC_DEFAULT_FEATURE[metric]
        if metric == "linear":
            results[metric] = protocols.linear(run, feature, args.augmented, args.epochs, args.weight_decay)
        elif metric == "nmi":
            results[metric] = protocols.nmi(run, feature, args.seed)
        else:
            results[metric] = getattr(protocols, metric)(run, feature)
    print_table([{"metric": metric, **result} for metric, result in results.items()], METRIC_COLUMNS)
    if args.metric == "all":
        _write_json(run.path, "eval_all", args.feature or "", results)
    else:
        result = results[args.metric]
        augmented = "_augmented" if result.get("protocol") == "augmented" else ""
        _write_json(run.path, f"{args.metric}{augmented}", result["feature"], result)
    return 0


def _eval_semi(args: argparse.Namespace) -> int:
    from .evaluation import protocols

    run = open_evaluation_run(args.run_dir, args.data)
    result = protocols.semi(run, args.fraction, args.epochs, args.seed)
    print_table([result], ["fraction", "labelled_images", "epochs", "top1", "top5", "shots"])
    _write_json(run.path, "semi", f"{args.fraction:g}", result)
    return 0


def data_differences(runs: list[Run]) -> list[str]:
    """What differs between the data sets of ``runs``: dataset, data path, image size, class names."""
    described = {
        "dataset": [run.cfg.dataset for run in runs],
        "data path": [run.cfg.data for run in runs],
        "image size": [run.info.size for run in runs],
        "class names": [run.info.classes for run in runs],
    }
    return [name for name, values in described.items() if len(set(values)) > 1]


def _score(args: argparse.Namespace) -> int:
    from .evaluation import protocols
    from .evaluation.unsupervised import spearman

    if args.out:
        check_output(Path(args.out))
    runs = [open_evaluation_run(run_dir, args.data) for run_dir in args.run_dirs]
    differences = data_differences(runs)
    if differences:
        described = "; ".join(f"{run.path} ({run.cfg.dataset}{' ' + run.cfg.data if run.cfg.data else ''}, {run.info.size}px, {len(run.info.classes)} classes)" for run in runs)
        warn(f"score ranks runs of different data sets ({', '.join(differences)} differ): {described}; their scores are not comparable")
    rows = []
    for run_dir, run in zip(args.run_dirs, runs):
        result = protocols.score(run, args.feature, args.k, args.seed, args.max_images)
        _write_json(run.path, "score", args.feature, result)
        knn = protocols.knn(run, "f_I")["top1"] if run.data.test is not None else None
        rows.append({"run": str(run_dir), "score": result["score"], "nmi": result["nmi"], "retrieval": result["retrieval"], "knn_top1": knn})
    rows.sort(key=lambda row: -row["score"])
    labelled = [row for row in rows if row["knn_top1"] is not None]
    knn_order = sorted(labelled, key=lambda row: -row["knn_top1"])
    for row in rows:
        row["score_rank"] = rows.index(row) + 1
        row["knn_rank"] = knn_order.index(row) + 1 if row in knn_order else None
    print(f"unsupervised score NMI(f, f')·R(f, f') of {args.feature}, k={args.k}, seed={args.seed}; kNN top-1 of f_I beside it")
    print_table(rows, ["score_rank", "run", "score", "nmi", "retrieval", "knn_top1", "knn_rank"])
    if len(labelled) >= 2:
        rho = spearman([row["score"] for row in labelled], [row["knn_top1"] for row in labelled])
        text = "undefined (all scores or all kNN equal)" if rho != rho else f"{rho:.3f}"
        print(f"Spearman's rho (score vs kNN top-1, {len(labelled)} runs): {text}")
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .evaluation.figures import plot_curves, plot_run

    if args.curves_only:
        print(f"wrote {plot_curves(Path(args.run_dir))}")
        return 0
    run = open_evaluation_run(args.run_dir, args.data)
    for path in plot_run(run, args.feature, args.max_points, args.pairs, args.seed):
        print(f"wrote {path}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation.features import Run
    from .export import embed_folder

    out = Path(args.out)
    out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")  # the name np.save gives it
    check_output(out)
    run = Run.open(Path(args.run_dir))
    paths, _, features = embed_folder(run, Path(args.data), args.feature)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features)
    files = out.with_suffix(".txt")
    files.write_text("".join(f"{path}\n" for path in paths))
    print(f"{len(paths)} images -> {features.shape[1]}-d {args.feature}")
    print(f"wrote {out} (row i = line i of {files})")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from .evaluation.features import Run
    from .export import cluster_folder

    check_output(Path(args.out))
    run = Run.open(Path(args.run_dir))
    sizes = cluster_folder(run, Path(args.data), args.k, Path(args.out), args.feature, args.seed)
    print_table([{"group": group, "images": size} for group, size in enumerate(sizes)], ["group", "images"])
    print(f"wrote {args.out} and {len(sizes)} contact sheets {Path(args.out).stem}_group<g>.png")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_backbone

    check_output(Path(args.out))
    described, written = export_backbone(Path(args.run_dir), Path(args.out), args.format)
    print_table([described], list(described))
    print("wrote " + " and ".join(str(path) for path in written))
    return 0


MOVED_DATA_HELP = "the run's data set, where it is now (when it moved since training: another machine, a renamed folder)"
FOLDER_DATA_HELP = "folder of images to {} (searched recursively; not the run's data set)"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the parsers of these commands to the ``crosslevel`` command's ``commands``."""
    evaluate = commands.add_parser("eval", help="evaluate a trained run (prints a table, writes JSON into the run)")
    metrics = evaluate.add_subparsers(dest="metric", required=True)
    helps = {
        "knn": "weighted kNN top-1/top-5 (k, σ from the run's config; default f_I)",
        "linear": "linear probe top-1/top-5 on the frozen backbone (default f)",
        "nmi": "NMI(f, Y): k-means with k = #classes vs labels (default f_I)",
        "retrieval": "R(f, Y): nearest other test image has the same label (default f_I)",
        "all": "knn, linear, nmi and retrieval, features extracted once",
    }
    for metric, text in helps.items():
        sub = metrics.add_parser(metric, help=text)
        sub.add_argument("run_dir")
        sub.add_argument("--data", metavar="PATH", help=MOVED_DATA_HELP)
        sub.add_argument("--feature", choices=FEATURES, help="f (pooled), f_I (instance head) or f_G (group head)")
        if metric in ("linear", "all"):
            sub.add_argument("--augmented", action="store_true", help="SGD on random training views (standard protocol)")
            sub.add_argument("--epochs", type=count(1), default=10, help="--augmented: epochs (default 10)")
            sub.add_argument("--weight-decay", type=amount(0.0), default=1e-4, help="L2 penalty of the classifier (default 1e-4)")
        if metric in ("nmi", "all"):
            sub.add_argument("--seed", type=int, default=0, help="k-means seed")
        sub.set_defaults(func=_eval, augmented=False, epochs=10, weight_decay=1e-4, seed=0)
    semi = metrics.add_parser("semi", help="fine-tune backbone + classifier on the same fraction of the labels of every class")
    semi.add_argument("run_dir")
    semi.add_argument("--data", metavar="PATH", help=MOVED_DATA_HELP)
    semi.add_argument("--fraction", type=float, required=True, help="share of training labels, e.g. 0.01 or 0.1")
    semi.add_argument("--epochs", type=count(1), default=20, help="fine-tuning epochs (default 20)")
    semi.add_argument("--seed", type=int, default=0, help="seed of the label subset and of training")
    semi.set_defaults(func=_eval_semi)

    score = commands.add_parser("score", help="rank runs by the label-free NMI(f, f')·R(f, f'), beside their kNN")
    score.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    score.add_argument("--data", metavar="PATH", help=MOVED_DATA_HELP + "; the same for every run")
    score.add_argument("--feature", choices=FEATURES, default="f_I")
    score.add_argument("--k", type=count(1), default=10, help="k-means clusters for NMI(f, f') (default 10; same for all runs)")
    score.add_argument("--seed", type=int, default=0, help="seed of the image subset, the augmented view and k-means")
    score.add_argument("--max-images", type=count(2), default=2000, help="training images scored per run (default 2000)")
    score.add_argument("--out", help="also write the ranking as CSV here")
    score.set_defaults(func=_score)

    plot = commands.add_parser("plot", help="PNGs in RUN_DIR/plots: t-SNE, similarity histograms, training curves")
    plot.add_argument("run_dir")
    plot.add_argument("--data", metavar="PATH", help=MOVED_DATA_HELP)
    plot.add_argument("--feature", choices=FEATURES, default="f_I")
    plot.add_argument("--max-points", type=count(5), default=2000, help="images in the t-SNE (default 2000)")
    plot.add_argument("--pairs", type=count(2), default=1000, help="images for the similarity histograms (default 1000)")
    plot.add_argument("--seed", type=int, default=0)
    plot.add_argument("--curves-only", action="store_true", help="only training_curves.png, from metrics.csv: loads no model and no data")
    plot.set_defaults(func=_plot)

    embed = commands.add_parser("embed", help="features of every image under a folder, saved as .npy")
    embed.add_argument("run_dir")
    embed.add_argument("--data", metavar="FOLDER", required=True, help=FOLDER_DATA_HELP.format("embed"))
    embed.add_argument("--out", required=True, help="output .npy (N×D float32); file names go to the same name .txt")
    embed.add_argument("--feature", choices=FEATURES, default="f")
    embed.set_defaults(func=_embed)

    cluster = commands.add_parser("cluster", help="group a folder of images into k clusters: CSV + contact sheets")
    cluster.add_argument("run_dir")
    cluster.add_argument("--data", metavar="FOLDER", required=True, help=FOLDER_DATA_HELP.format("group"))
    cluster.add_argument("--k", type=count(1), required=True, help="number of groups")
    cluster.add_argument("--out", required=True, help="output CSV (file, group); sheets are written beside it")
    cluster.add_argument("--feature", choices=FEATURES, default="f")
    cluster.add_argument("--seed", type=int, default=0)
    cluster.set_defaults(func=_cluster)

    export = commands.add_parser("export", help="the backbone as a file crosslevel.load_backbone reads (or detectron2 weights)")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="output .pth (.pkl for detectron2); standard ResNets also get <stem>_torchvision.pth")
    export.add_argument("--format", choices=["crosslevel", "detectron2"], default="crosslevel", help="detectron2: a .pkl for its train_net.py (ImageNet-stem ResNet-18/50, width 64)")
    export.set_defaults(func=_export)
