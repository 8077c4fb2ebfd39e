"""Experiment trackers beside the run directory's CSV log: Weights & Biases and MLflow through
Lightning's loggers, local by default. The run directory stays the source of truth: the CSV logger
still writes the metrics that ``metrics.csv`` joins, and the trackers get the same metrics."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import Logger

from .errors import CrossLevelError
from .run_dir import MLFLOW_DIR

PROJECT = "crosslevel"  # the W&B project and the MLflow experiment


def missing_extra(logger: str, err: ModuleNotFoundError) -> CrossLevelError:
    """The one-line error for ``logger=<logger>`` without its extra (Lightning's own message runs to
    several lines of hints: its first line names what is missing)."""
    missing = str(err).strip().splitlines()[0] if str(err).strip() else "a module is missing"
    return CrossLevelError(f"logger={logger} needs: pip install 'crosslevel[{logger}]' ({missing})")


def wandb_logger(run_dir: Path) -> Logger:
    """A W&B logger writing ``run_dir/wandb/``: offline (no network; ``wandb sync`` uploads later)
    unless the user set ``WANDB_MODE`` (``online``: to the server their ``wandb login`` set)."""
    os.environ.setdefault("WANDB_MODE", "offline")  # inherited by the rank processes and wandb's own
    try:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(name=run_dir.name, save_dir=str(run_dir), project=PROJECT)  # wandb writes save_dir/wandb/
    except ModuleNotFoundError as err:
        raise missing_extra("wandb", err) from None
    if logger._wandb_init.get("anonymous", "") is None:  # Lightning passes anonymous=None, which W&B >= 0.31 warns has no effect
        del logger._wandb_init["anonymous"]
    return logger


def finish_wandb(loggers: list[Logger], exit_code: int) -> None:
    """End the W&B run of ``loggers`` (if any) now, with the command's ``exit_code`` (0: finished; a stop's
    or a failure's otherwise), its closing lines ("You can sync this run ...") on stderr: at the
    interpreter's exit W&B prints them on stdout, which holds the results alone."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        with contextlib.redirect_stdout(sys.stderr):
            wandb.finish(exit_code=exit_code)


def mlflow_logger(run_dir: Path) -> Logger:
    """An MLflow logger: to ``MLFLOW_TRACKING_URI`` when the user set it, else a local file store in
    ``run_dir/mlruns`` (``mlflow ui --backend-store-uri run_dir/mlruns`` shows it; MLflow 3 keeps that
    store in maintenance mode and wants ``MLFLOW_ALLOW_FILE_STORE=true``, set here unless the user set it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = (run_dir / MLFLOW_DIR).absolute().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=PROJECT, run_name=run_dir.name, tracking_uri=uri)
    except ModuleNotFoundError as err:
        raise missing_extra("mlflow", err) from None
