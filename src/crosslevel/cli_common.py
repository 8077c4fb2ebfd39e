"""What the commands of :mod:`.cli` and :mod:`.cli_eval` share: tables on the terminal, argparse
types and the checks of the paths a command is given."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import Config, is_url
from .errors import CrossLevelError
from .paths import check_creatable


PERCENT_COLUMNS = {"top1", "top5", "retrieval", "knn_top1", "best_top1", "shots"}


def fmt(value: object, percent: bool = False) -> str:
    """A table cell: floats to 4 digits (accuracies, ``percent``, as %), dicts as ``key=value``, None as ``-``."""
    if isinstance(value, float):
        return f"{value:.2f}%" if percent else f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{key}={fmt(v, percent)}" for key, v in value.items())
    return "-" if value is None else str(value)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """One header line and one line per row, columns padded to their widest cell; accuracies in %."""
    cells = [columns] + [[fmt(row.get(column), column in PERCENT_COLUMNS) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def count(minimum: int):  # noqa: ANN201 - an argparse type
    """An argparse type: an integer of at least ``minimum``, or a clear usage error."""
    return _at_least(int, "an integer", minimum)


def amount(minimum: float):  # noqa: ANN201 - an argparse type
    """An argparse type: a finite number of at least ``minimum``, or a clear usage error."""
    return _at_least(float, "a number", minimum)


def _at_least(kind: type, name: str, minimum: float):  # noqa: ANN202
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {name}, got {text!r}") from None
        if not minimum <= value < float("inf"):  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{' and finite' if kind is float else ''}, got {value}")
        return value

    return parse


def check_data_path(cfg: Config, run_dir: Path, option: str) -> None:
    """The data set of a run is where ``cfg`` (its saved config, or a new ``data=``) says; else an
    error naming the path and the option that gives a moved data set's new place."""
    if cfg.data and not is_url(cfg.data) and not Path(cfg.data).exists():
        raise CrossLevelError(f"the data set of run {run_dir} is not at {cfg.data}: if it has moved, give its new location with {option}")


def check_output(path: Path) -> None:
    """The folder of a command's ``--out`` file exists or can be made, before any work is done."""
    check_creatable(path.expanduser().parent, f"--out {path} cannot be written")
