"""The ``crosslevel`` command: train, eval, score, plot, embed, cluster, export, pack, runs, show, presets."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import DEFAULT_PRESET, FEATURES, Config, apply_overrides, canonical, describe_keys, is_url, load_preset, preset_summary
from .errors import CrossLevelError, CrossLevelWarning, TrainingInterrupted, warn
from .packing import add_pack_command

if TYPE_CHECKING:
    from .evaluation.features import Run
    from .run_dir import RunInfo


def _shot_line(knn: dict) -> str:
    """'  many/medium/few top-1: ...' for long-tailed support sets, else ''."""
    groups = [(g, value) for g, value in (knn.get("shots") or {}).items() if value is not None]
    return ("\n  top-1 per shot group: " + "  ".join(f"{g} {v:.2f}%" for g, v in groups)) if groups else ""


def _train(args: argparse.Namespace) -> int:
    from .run_dir import launch_rank, resolve_resume

    preset = args.config or DEFAULT_PRESET
    if args.help_keys:
        cfg = load_preset(preset)
        print(f"config keys of preset {preset} (set any with key=value; name, type, value, meaning):\n" + describe_keys(cfg))
        return 0
    overrides = list(args.overrides) + ([f"data={args.data}"] if args.data else [])
    resume = [item for item in overrides if canonical(item.partition("=")[0].strip()) == "resume" and item.partition("=")[2].strip()]
    if resume:  # the run's saved config, not a preset, is what the overrides apply to
        cfg, _ = resolve_resume(apply_overrides(Config(), resume[-1:]), overrides, args.config)
        check_data_path(cfg, Path(cfg.out) / cfg.name, "--data PATH (or data=PATH)")
    else:
        cfg = apply_overrides(load_preset(preset), overrides)
    check_environment(cfg)
    from .training import train  # Lightning and the model stack: imported once the config and paths are checked

    run_dir, knn = train(cfg, verbose=args.verbose)
    if launch_rank() != 0:  # under torchrun / SLURM every rank runs this command; one reports
        return 0
    print(f"run directory: {run_dir}")
    if knn is not None:
        print(f"kNN top-1: {knn['top1']:.2f}%  top-5: {knn['top5']:.2f}%  (k={cfg.knn_k}, σ={cfg.knn_temperature}, f_I)" + _shot_line(knn))
        print(_best_line(run_dir))
    return 0


def check_environment(cfg: Config) -> None:
    """What a config alone cannot tell, checked before any data is loaded: the run directory can be
    created under ``out`` (and is not an existing run's) and the accelerator exists. PyTorch is
    imported only to check a GPU accelerator."""
    from .run_dir import check_new_run

    out = Path(cfg.out).expanduser()
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    if not existing.is_dir():
        raise CrossLevelError(f"out={cfg.out} cannot hold run directories: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CrossLevelError(f"out={cfg.out} cannot hold run directories: {existing} is not writable (permission denied)")
    check_new_run(cfg)
    if cfg.accelerator not in ("gpu", "cuda", "mps"):
        return
    import torch

    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CrossLevelError(f"accelerator={cfg.accelerator}, but PyTorch sees no CUDA GPU here: use accelerator=cpu or auto")
    if cfg.accelerator == "mps" and not torch.backends.mps.is_available():
        raise CrossLevelError("accelerator=mps, but PyTorch has no MPS device (Apple GPU) here: use accelerator=cpu or auto")


def check_data_path(cfg: Config, run_dir: Path, option: str) -> None:
    """The data set of a run is where ``cfg`` (its saved config, or a new ``data=``) says; else an
    error naming the path and the option that gives a moved data set's new place."""
    if cfg.data and not is_url(cfg.data) and not Path(cfg.data).exists():
        raise CrossLevelError(f"the data set of run {run_dir} is not at {cfg.data}: if it has moved, give its new location with {option}")


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


def _best_line(run_dir: Path) -> str:
    """The best evaluated epoch of a run (what the reference reports), beside the final-epoch headline."""
    from .run_dir import SUMMARY_FILE

    best = json.loads((run_dir / SUMMARY_FILE).read_text()).get("knn_best") or {}
    if not best:
        return "best kNN over evaluated epochs: none"
    return f"best kNN over evaluated epochs (as the reference reports): top-1 {best['top1']:.2f}%  top-5 {best['top5']:.2f}% at epoch {best['epoch']}"


PERCENT_COLUMNS = {"top1", "top5", "retrieval", "knn_top1", "best_top1", "shots"}


def _fmt(value: object, percent: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:.2f}%" if percent else f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{key}={_fmt(v, percent)}" for key, v in value.items())
    return "-" if value is None else str(value)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    """One header line and one line per row, columns padded to their widest cell; accuracies in %."""
    cells = [columns] + [[_fmt(row.get(column), column in PERCENT_COLUMNS) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


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
    _print_table([{"metric": metric, **result} for metric, result in results.items()], METRIC_COLUMNS)
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
    _print_table([result], ["fraction", "labelled_images", "epochs", "top1", "top5", "shots"])
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
    _print_table(rows, ["score_rank", "run", "score", "nmi", "retrieval", "knn_top1", "knn_rank"])
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
    from .evaluation.figures import plot_run

    run = open_evaluation_run(args.run_dir, args.data)
    for path in plot_run(run, args.feature, args.max_points, args.pairs, args.seed):
        print(f"wrote {path}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation.features import Run
    from .export import embed_folder

    run = Run.open(Path(args.run_dir))
    paths, _, features = embed_folder(run, Path(args.data), args.feature)
    out = Path(args.out)
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

    run = Run.open(Path(args.run_dir))
    sizes = cluster_folder(run, Path(args.data), args.k, Path(args.out), args.feature, args.seed)
    _print_table([{"group": group, "images": size} for group, size in enumerate(sizes)], ["group", "images"])
    print(f"wrote {args.out} and {len(sizes)} contact sheets {Path(args.out).stem}_group<g>.png")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_backbone

    described, written = export_backbone(Path(args.run_dir), Path(args.out), args.format)
    _print_table([described], list(described))
    print("wrote " + " and ".join(str(path) for path in written))
    return 0


def _presets(args: argparse.Namespace) -> int:
    rows = preset_summary()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


RUN_COLUMNS = ("name", "preset", "method", "data", "epochs", "knn_top1", "best_top1", "train_s", "status")
NUMERIC_RUN_COLUMNS = {"epochs", "knn_top1", "best_top1", "train_s"}  # sorted largest first


def _run_row(run: RunInfo) -> dict[str, object]:
    """One line of ``crosslevel runs``, with raw values (``epochs``: the epochs done) to sort by."""
    cfg, summary = run.cfg, run.summary
    return {
        "name": run.path.name,
        "preset": cfg.preset or None,
        "method": run.method,
        "data": f"{cfg.dataset}:{Path(cfg.data).name}" if cfg.data else cfg.dataset,
        "epochs": run.epochs_done,
        "knn_top1": (summary.get("knn") or {}).get("top1"),
        "best_top1": (summary.get("knn_best") or {}).get("top1"),
        "train_s": summary.get("train_seconds"),
        "status": run.status,
    }


def _runs(args: argparse.Namespace) -> int:
    from .run_dir import list_runs

    runs = list_runs(Path(args.folder))
    if not runs:
        print(f"no runs in {args.folder}")
        return 0
    rows = [(_run_row(run), run.cfg.epochs) for run in runs]
    numeric = args.sort in NUMERIC_RUN_COLUMNS
    rows.sort(key=lambda pair: (pair[0][args.sort] is None, pair[0][args.sort] if not numeric else -(pair[0][args.sort] or 0)))  # type: ignore[operator]
    _print_table([{**row, "epochs": f"{row['epochs']}/{asked}"} for row, asked in rows], list(RUN_COLUMNS))
    return 0


def _show(args: argparse.Namespace) -> int:
    from .run_dir import read_run

    run = read_run(Path(args.run_dir))
    print(f"run {run.path}: {run.method}, status: {run.status} ({run.epochs_done}/{run.cfg.epochs} epochs)")
    print("config (keys that differ from the defaults):")
    defaults = Config()
    for field in dataclasses.fields(run.cfg):
        if getattr(run.cfg, field.name) != getattr(defaults, field.name):
            print(f"  {field.name} = {getattr(run.cfg, field.name)}")
    print("results (summary.json):" if run.summary else "results: none yet (no summary.json)")
    for key, value in run.summary.items():
        print(f"  {key}: {_fmt(value, key.startswith('knn'))}")
    return 0


def count(minimum: int):  # noqa: ANN201 - an argparse type
    """An argparse type: an integer of at least ``minimum``, or a clear usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def version() -> str:
    """The installed package's version, or the source tree's when crosslevel runs uninstalled (PYTHONPATH=src)."""
    try:
        return metadata.version("crosslevel")
    except metadata.PackageNotFoundError:
        return __version__


MOVED_DATA_HELP = "the run's data set, where it is now (when it moved since training: another machine, a renamed folder)"
FOLDER_DATA_HELP = "folder of images to {} (searched recursively; not the run's data set)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslevel", description="Cross-Level Discrimination (CLD), NPID and MoCo.")
    parser.add_argument("--version", action="version", version=f"crosslevel {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a preset plus key=value overrides")
    train.add_argument("--config", help=f"preset name (default {DEFAULT_PRESET}); see `crosslevel presets`; with resume= the run's saved config is used")
    train.add_argument("--data", help="data set path (same as data=PATH; with resume=: where the run's data set is now)")
    train.add_argument("--help-keys", action="store_true", help="list every config key with its type and default")
    train.add_argument("--verbose", action="store_true", help="also show Lightning's own messages and warnings (hidden by default)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=10 batch_size=128")
    train.set_defaults(func=_train)

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
            sub.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty of the classifier (default 1e-4)")
        if metric in ("nmi", "all"):
            sub.add_argument("--seed", type=int, default=0, help="k-means seed")
        sub.set_defaults(func=_eval, augmented=False, epochs=10, weight_decay=1e-4, seed=0)
    semi = metrics.add_parser("semi", help="fine-tune backbone + classifier on a class-balanced label fraction")
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
    plot.add_argument("--pairs", type=count(1), default=1000, help="images for the similarity histograms (default 1000)")
    plot.add_argument("--seed", type=int, default=0)
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

    add_pack_command(commands)

    runs = commands.add_parser("runs", help="one table of the runs under a folder: method, data, epochs, kNN, time, status")
    runs.add_argument("folder", nargs="?", default="runs", help="folder holding run directories (default runs)")
    runs.add_argument("--sort", choices=RUN_COLUMNS, default="name", help="column to sort by (numbers largest first; default name)")
    runs.set_defaults(func=_runs)

    show = commands.add_parser("show", help="one run's status, config (keys that differ from the defaults) and results")
    show.add_argument("run_dir")
    show.set_defaults(func=_show)

    presets = commands.add_parser("presets", help="list the presets with a one-line description each")
    presets.set_defaults(func=_presets)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand before, between or after options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


PYTHON_FORMATWARNING = warnings.formatwarning


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """crosslevel's own warnings as one ``crosslevel: warning: ...`` line; any other as Python writes it."""
    if issubclass(category, CrossLevelWarning):
        return f"crosslevel: warning: {message}\n"
    return PYTHON_FORMATWARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = format_warning  # the command's; a library user's warnings stay Python's
    args = parse(argv)
    try:
        return args.func(args)
    except CrossLevelError as err:
        print(f"crosslevel: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"crosslevel: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("crosslevel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
