"""The ``crosslevel`` command: the parser and :func:`main`, and the commands that train and list runs
(train, runs, show, presets; ``pack`` is in :mod:`.packing`); the commands that read a trained run are in :mod:`.cli_eval`. A command
is a function of the parsed arguments that returns the exit code, and one entry in the parser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .cli_common import check_data_path, fmt, print_table
from .cli_eval import add_commands
from .config import DEFAULT_PRESET, Config, apply_overrides, canonical, describe_keys, load_preset, preset_summary
from .errors import CrossLevelError, CrossLevelWarning, TrainingInterrupted
from .packing import add_pack_command

if TYPE_CHECKING:
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

    check_new_run(cfg)
    if cfg.accelerator not in ("gpu", "cuda", "mps"):
        return
    import torch

    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CrossLevelError(f"accelerator={cfg.accelerator}, but PyTorch sees no CUDA GPU here: use accelerator=cpu or auto")
    if cfg.accelerator == "mps" and not torch.backends.mps.is_available():
        raise CrossLevelError("accelerator=mps, but PyTorch has no MPS device (Apple GPU) here: use accelerator=cpu or auto")


def _best_line(run_dir: Path) -> str:
    """The best evaluated epoch of a run (what the reference reports), beside the final-epoch headline."""
    from .run_dir import SUMMARY_FILE

    best = json.loads((run_dir / SUMMARY_FILE).read_text()).get("knn_best") or {}
    if not best:
        return "best kNN over evaluated epochs: none"
    return f"best kNN over evaluated epochs (as the reference reports): top-1 {best['top1']:.2f}%  top-5 {best['top5']:.2f}% at epoch {best['epoch']}"


def _presets(args: argparse.Namespace) -> int:
    rows = preset_summary()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


RUN_COLUMNS = ("name", "preset", "method", "data", "epochs", "knn_top1", "best_top1", "train_s", "status")
NUMERIC_RUN_COLUMNS = {"epochs", "knn_top1", "best_top1", "train_s"}  # sorted largest first


def _run_row(run: RunInfo) -> dict[str, object]:
    """One line of ``crosslevel runs``, with raw values (``epochs``: the epochs done) to sort by; the kNN of a
    run without a summary's (still training, stopped) is the latest its logs hold."""
    from .run_dir import logged_knn

    cfg, summary = run.cfg, run.summary
    logged = logged_knn(run.path) if not summary.get("knn") else []
    return {
        "name": run.path.name,
        "preset": cfg.preset or None,
        "method": run.method,
        "data": f"{cfg.dataset}:{Path(cfg.data).name}" if cfg.data else cfg.dataset,
        "epochs": run.epochs_done,
        "knn_top1": (summary.get("knn") or {}).get("top1", logged[-1]["top1"] if logged else None),
        "best_top1": (summary.get("knn_best") or {}).get("top1", max(row["top1"] for row in logged) if logged else None),
        "train_s": summary.get("train_seconds"),
        "status": run.status,
    }


def _runs(args: argparse.Namespace) -> int:
    from .run_dir import list_runs

    runs, problems = list_runs(Path(args.folder))
    if not runs and not problems:
        print(f"no runs in {args.folder}")
        return 0
    rows = [(_run_row(run), run.cfg.epochs) for run in runs]
    numeric = args.sort in NUMERIC_RUN_COLUMNS
    rows.sort(key=lambda pair: (pair[0][args.sort] is None, pair[0][args.sort] if not numeric else -(pair[0][args.sort] or 0)))  # type: ignore[operator]
    if rows:
        print_table([{**row, "epochs": f"{row['epochs']}/{asked}"} for row, asked in rows], list(RUN_COLUMNS))
    if problems:
        raise CrossLevelError(f"{len(problems)} run(s) in {args.folder} cannot be read (the table shows the others): {'; '.join(problems)}")
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
        print(f"  {key}: {fmt(value, key.startswith('knn'))}")
    if not run.summary.get("knn"):
        from .run_dir import logged_knn

        for row in logged_knn(run.path):
            print(f"  kNN logged at epoch {row['epoch']}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%")
    return 0


def version() -> str:
    """The installed package's version, or the source tree's when crosslevel runs uninstalled (PYTHONPATH=src)."""
    try:
        return metadata.version("crosslevel")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslevel", description="Cross-Level Discrimination (CLD), NPID and MoCo.")
    parser.add_argument("--version", action="version", version=f"crosslevel {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a preset plus key=value overrides")
    train.add_argument("--config", help=f"preset name (default {DEFAULT_PRESET}); see `crosslevel presets`; with resume= the run's saved config is used")
    train.add_argument("--data", help="data set path (same as data=PATH; with resume=: where the run's data set is now)")
    train.add_argument("--help-keys", action="store_true", help="list every config key with its type and its value in the preset (--config, default digits-cld)")
    train.add_argument("--verbose", action="store_true", help="also show Lightning's own messages and warnings (hidden by default)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=10 batch_size=128")
    train.set_defaults(func=_train)

    add_commands(commands)  # eval, score, plot, embed, cluster, export

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


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file
        return False


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = format_warning  # the command's; a library user's warnings stay Python's
    args = parse(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that left shows here, not at the interpreter's exit
        return code
    except CrossLevelError as err:
        print(f"crosslevel: error: {_own_message(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError as err:
        if not _stdout_reader_left():  # another pipe than stdout (a socket, a FIFO): an error like any OSError
            print(f"crosslevel: error: {err.filename or 'a pipe'}: {err.strerror or err}", file=sys.stderr)
            return 2
        devnull = os.open(os.devnull, os.O_WRONLY)  # the reader of stdout left (`crosslevel presets | head -1`):
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to say, and the exit's flush cannot fail again
        os.close(devnull)
        return 0
    except OSError as err:  # the file system refused a write or a read: a full disk, a quota, a lost mount
        print(f"crosslevel: error: {err.filename or 'a file'}: {err.strerror or err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        _tell_once(f"crosslevel: {stop}")
        return stop.exit_code
    except KeyboardInterrupt:
        _tell_once("crosslevel: interrupted")
        return 130


def _own_message(err: CrossLevelError) -> str:
    """The error's message; one raised in a DataLoader worker comes back with the worker's traceback in
    front of it ("Caught CrossLevelError in DataLoader worker process 1. Original Traceback ..."): without it."""
    text = str(err)
    if "Original Traceback (most recent call last):" not in text:
        return text
    return text.rsplit(f"{type(err).__module__}.{type(err).__qualname__}: ", 1)[-1].strip()


def _tell_once(line: str) -> None:
    """``line`` on stderr from rank 0 only: every rank of a torchrun / SLURM / ddp launch stopped alike."""
    from .run_dir import launch_rank

    if launch_rank() == 0:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
