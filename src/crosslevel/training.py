"""Train: build the data module, the training module and the Lightning trainer from a :class:`Config`,
fit, evaluate with kNN during training, and write the run directory (:mod:`.run_dir`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.fabric.utilities.rank_zero import LightningDeprecationWarning
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

from .checkpointing import LAUNCHER_PID_ENV, AtomicCheckpointIO, LastCheckpoint, ResumeState
from .config import Config, check_groups, save_config, with_absolute_paths
from .data.datamodule import ContrastiveDataModule, Data, load_data
from .errors import CrossLevelError, warn
from .evaluation import extract_features, knn_accuracy
from .methods import ContrastiveModule
from .paths import read_json_object
from .run_dir import (
    CONFIG_FILE, LOG_DIR, RUN_NAME_ENV, SUMMARY_FILE, TENSORBOARD_DIR, DataInfo, check_new_run, checkpoint_of,
    discard_unsaved, epochs_trained, log_after_training, merge_metrics, read_checkpoint, restore, run_dir_of, save_data_info,
)  # fmt: skip
from .tracking import finish_wandb


def build_module(cfg: Config, data: Data) -> ContrastiveModule:
    """The training module for ``cfg`` on ``data``."""
    return ContrastiveModule(cfg, len(data.train), data.train.channels, cfg.image_size or data.side)



class EpochTimer(Callback):
    """Wall-clock seconds of every training epoch (kNN evaluation excluded), in ``seconds``, and of
    training as a whole, :meth:`total`. Kept in checkpoints, so both add up over the attempts of a
    resumed run (an epoch stopped midway counts its part from each attempt).

    At the end of every epoch it logs the speed of this attempt's part of the epoch: ``steps_per_s``
    and ``images_per_s`` (steps × ``batch_size`` per device × devices), on the progress bar and in
    metrics.csv. The first epoch's figure includes compiling (``compile``, ``cuda_graphs``)."""

    def __init__(self, batch_size: int) -> None:
        self.seconds: list[float] = []
        self.batch_size = batch_size
        self._steps = 0  # training steps of the current epoch in this attempt
        self._start: float | None = None  # of the current epoch in this attempt
        self._carried = 0.0  # of the current epoch in earlier attempts
        self._train_start = time.perf_counter()  # reset when training starts (kept under ddp_spawn, whose ranks time it)
        self._earlier = 0.0  # training seconds of earlier attempts

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def total(self) -> float:
        """Training seconds over all attempts so far."""
        return round(self._earlier + time.perf_counter() - self._train_start, 1)

    def state_dict(self) -> dict[str, object]:
        epoch = self._carried + (time.perf_counter() - self._start if self._start is not None else 0.0)
        return {"seconds": self.seconds, "epoch": epoch, "train": self._earlier + time.perf_counter() - self._train_start}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.seconds = list(state_dict["seconds"])  # type: ignore[call-overload]
        self._carried, self._earlier = float(state_dict["epoch"]), float(state_dict["train"])  # type: ignore[arg-type]

    def adopt(self, state_dict: dict[str, object]) -> None:
        """Take the times a rank process measured (``ddp_fork`` / ``ddp_spawn``: this process's timer ran no
        epoch), as saved in its last checkpoint."""
        self.load_state_dict(state_dict)
        self._train_start = time.perf_counter()  # training ended when that checkpoint was written

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = self._start = self._now(pl_module)  # a resumed epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._steps = self._now(pl_module), 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._start is not None
        elapsed = self._now(pl_module) - self._start  # this attempt's part of the epoch
        self.seconds.append(round(self._carried + elapsed, 3))
        self._start, self._carried = None, 0.0
        if self._steps and elapsed > 0:
            steps_per_s = self._steps / elapsed
            speed = {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * self.batch_size * trainer.world_size}
            pl_module.log_dict(speed, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)


def evaluate_knn(module: ContrastiveModule, data: Data, cfg: Config, feature: str = "f_I") -> dict:
    """Weighted kNN of ``feature``: support = the labelled training images with the test transform,
    eval-mode BN. Returns :func:`~crosslevel.evaluation.knn.knn_accuracy`'s result (``top1``,
    ``top5``; ``shots`` for a long-tailed support set), the schema of ``eval knn`` too."""
    if data.test is None:
        raise CrossLevelError("kNN needs a labelled training set and a labelled test split")
    was_training = module.training
    module.eval()
    device = module.device
    embed = lambda images: module.embed(images, feature)  # noqa: E731
    support = data.knn_support
    train_x, train_y = extract_features(embed, data.eval_loader(support, cfg), device, "kNN support", cfg.progress)
    test_x, test_y = extract_features(embed, data.eval_loader(data.test, cfg), device, "kNN queries", cfg.progress)
    module.train(was_training)
    classes = max(len(support.classes), len(data.test.classes))
    return knn_accuracy(train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature, classes)


class KNNMonitor(Callback):
    """kNN top-1 / top-5 every ``eval_every`` epochs and after the last epoch, logged as knn_top1/5.

    ``last`` is the latest result (the final epoch's, the headline); ``best`` the evaluated epoch with
    the highest top-1 (``{"epoch", "top1", "top5"}``, what the reference reports), kept in checkpoints
    so that it survives a resume.
    """

    def __init__(self, data: Data, cfg: Config) -> None:
        self.data, self.cfg = data, cfg
        self.last: dict[str, float] | None = None
        self.best: dict[str, float] | None = None

    def state_dict(self) -> dict[str, object]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.best = state_dict.get("best")  # type: ignore[assignment]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        final = epoch >= trainer.max_epochs
        periodic = self.cfg.eval_every > 0 and epoch % self.cfg.eval_every == 0
        if self.data.test is None or not (final or periodic):
            return
        # Under DDP rank 0 evaluates (the model is the same on every rank) and shares the result.
        result = evaluate_knn(pl_module, self.data, self.cfg) if trainer.is_global_zero else None  # type: ignore[arg-type]
        self._record(trainer.strategy.broadcast(result, src=0), epoch)
        shots = {f"top1_{group}": value for group, value in (self.last.get("shots") or {}).items() if value is not None}
        logged = {"top1": self.last["top1"], "top5": self.last["top5"], **shots}
        pl_module.log_dict({f"knn_{name}": value for name, value in logged.items()}, on_epoch=True, sync_dist=True)

    def evaluate_last_epoch(self, module: ContrastiveModule, epoch: int) -> dict:
        """The kNN of a run that had trained all its ``epoch`` epochs when it stopped, before it evaluated
        them (outside the training loop: one process, nothing logged)."""
        self._record(evaluate_knn(module, self.data, self.cfg), epoch)
        return self.last  # type: ignore[return-value]

    def _record(self, result: dict, epoch: int) -> None:
        self.last = result
        if self.best is None or result["top1"] > self.best["top1"]:
            self.best = {"epoch": epoch, "top1": result["top1"], "top5": result["top5"]}


def _loggers(cfg: Config, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger != "tensorboard":  # one version folder per attempt, so a resume never deletes a log
        loggers.append(CSVLogger(save_dir=str(run_dir), name=LOG_DIR))
    if cfg.logger in ("tensorboard", "both"):
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name=TENSORBOARD_DIR))
        except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
            from .tracking import missing_extra

            raise missing_extra("tensorboard", err) from None
    if cfg.logger in ("wandb", "mlflow"):
        from .tracking import mlflow_logger, wandb_logger

        loggers.append(wandb_logger(run_dir) if cfg.logger == "wandb" else mlflow_logger(run_dir))
    return loggers


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr (Lightning writes it to stdout), so that stdout holds results
    only; epochs numbered from 1 as everywhere else, a resumed epoch's bar going on from the steps it
    had done, and the bar closed when training stops, so that the line saying why starts a line of
    its own."""

    def init_train_tqdm(self) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def on_train_start(self, trainer: pl.Trainer, *args: object) -> None:
        super().on_train_start(trainer, *args)
        if trainer.fit_loop.restarted_mid_epoch:  # Lightning starts no epoch (no on_train_epoch_start)
            self.on_train_epoch_start(trainer)
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            self.train_progress_bar.initial = self.train_progress_bar.n = done  # the bar goes on from the steps done
            self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self._train_progress_bar is not None:  # a resumed epoch's start, not to be counted in the next epoch's rate
            self._train_progress_bar.initial = 0
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch's bar with its metrics (speed, kNN). The metrics are read on every rank, the bars of the
        other ranks being hidden: reading them first reduces the ``sync_dist`` ones over the ranks, collectives
        that rank 0's bar alone would start, pairing with another rank's next ones (its checkpoint's barrier),
        and hanging every run of several processes at its first epoch's end."""
        self.get_metrics(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)


@contextmanager
def lightning_output(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``, hide Lightning's own output while training: its informational lines (GPU/TPU
    available, the litlogger tip, the ``limit_train_batches`` notice, "Loading `train_dataloader`"),
    the warnings it issues or passes on (worker-count hints, deprecations) and PyTorch's line on ending
    the other rank processes of a ``ddp_fork`` / ``ddp_spawn`` run that stopped. crosslevel's own
    warnings and Lightning's logged warnings and errors still show."""
    if verbose:
        yield
        return
    levels = {logging.getLogger(name): logging.getLogger(name).level for name in QUIETER}
    with warnings.catch_warnings():
        _quiet_lightning()
        try:
            yield
        finally:
            for logger, level in levels.items():
                logger.setLevel(level)


QUIETER = {"lightning.pytorch": logging.WARNING, "lightning.fabric": logging.WARNING, "torch.multiprocessing.spawn": logging.ERROR}


def _quiet_lightning() -> None:
    """Lightning's informational lines and its warnings hidden (the loggers' levels in :data:`QUIETER`)."""
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", category=LightningDeprecationWarning)
    for name, level in QUIETER.items():
        logging.getLogger(name).setLevel(level)


class QuietSpawnedRanks(Callback):
    """:func:`lightning_output`'s quiet in the rank processes of ``ddp_spawn``, fresh interpreters that the
    context in the launching process does not reach: applied as this callback is unpickled there, with
    the trainer, before Lightning says anything ("Initializing distributed ...")."""

    def __init__(self) -> None:
        self.in_ranks = True  # some state: pickle calls __setstate__ only for an object that has some

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        _quiet_lightning()


class _CudagraphSkips(logging.Handler):
    """Adds Inductor's "skipping cudagraphs due to ..." warnings to ``reasons``, once each, one line each:
    the reason and, when the warning names one, the innermost source line it was found from. ``seen``
    counts the warnings, repeats included."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.reasons = reasons
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("skipping cudagraph"):  # "...cudagraphs due to", "...cudagraph due to function ... re-recording limit"
            self.seen += 1
            reason, _, trace = message.partition(". Found from")
            frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
            line = f"{reason.strip()} ({frames[-1]})" if frames else reason.strip()
            if line not in self.reasons:
                self.reasons.append(line)


@contextmanager
def recording_cudagraph_skips(enabled: bool = True, on_cuda: bool = True) -> Iterator[list[str]]:
    """The compiled parts Inductor runs without CUDA graphs (kernel by kernel) while the block runs, as it
    says why (torch prints the same warnings), in the list yielded. Torch versions differ in the logger
    they warn on (``cudagraphs``, older ones ``perf_hints``) and some count a skip without a warning;
    with ``on_cuda`` (on a CPU Inductor counts every graph as skipped) Inductor's skip counter catches
    those: one line says how many went unexplained. ``enabled`` False records nothing (and imports no
    part of Inductor)."""
    reasons: list[str] = []
    if not enabled:
        yield reasons
        return
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_utils

    handler = _CudagraphSkips(reasons)
    loggers = [getattr(cudagraph_utils, name) for name in ("cudagraphs_log", "perf_hint_log") if hasattr(cudagraph_utils, name)]
    counted_before = counters["inductor"]["cudagraph_skips"]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield reasons
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        unexplained = counters["inductor"]["cudagraph_skips"] - counted_before - handler.seen
        if on_cuda and unexplained > 0:
            reasons.append(f"{unexplained} skip(s) counted by Inductor without a warning (TORCH_LOGS=perf_hints,cudagraphs may name them)")


def train(cfg: Config, verbose: bool = False) -> tuple[Path, dict[str, float] | None]:
    """Train as ``cfg`` says; return (run directory, final kNN ``{"top1", "top5"}`` or None).
    ``verbose`` shows Lightning's own messages too (:func:`lightning_output`).

    Raises :class:`TrainingInterrupted` after SIGINT/SIGTERM (a resumable checkpoint is written first).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg = with_absolute_paths(cfg)
    run_dir = run_dir_of(cfg)
    check_new_run(cfg)
    if 0 < cfg.epochs <= cfg.warmup_epochs:
        warn(f"warmup_epochs={cfg.warmup_epochs} >= epochs={cfg.epochs}: the learning rate never reaches base_lr")
    data = load_data(cfg)
    if data.no_knn:
        warn(f"kNN evaluation skipped: {data.no_knn}")
    module = build_module(cfg, data)
    trained_before = _restore_unfinished(module, cfg, data, run_dir) if cfg.resume is not None else 0
    if trained_before is None:  # finished: keep its results rather than overwrite them with an empty attempt
        return run_dir, read_json_object(run_dir / SUMMARY_FILE).get("knn")
    on_cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    with lightning_output(verbose), recording_cudagraph_skips(cfg.cuda_graphs, on_cuda) as cudagraph_skips:
        datamodule = ContrastiveDataModule(cfg, data)
        monitor, timer, last = KNNMonitor(data, cfg), EpochTimer(cfg.batch_size), LastCheckpoint(checkpoint_of(run_dir), cfg.checkpoint_every)
        # the timer first, so that epoch times exclude checkpointing and the kNN evaluation
        callbacks = [timer, last, last.at_step_boundaries, ResumeState(datamodule.sampler, cfg.batch_size), monitor]
        trainer = _trainer(cfg, run_dir, datamodule, callbacks + ([] if verbose else [QuietSpawnedRanks()]))
        _check_fits(cfg, data, trainer)
        if rank_zero_only.rank == 0:  # written once every check has passed
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / CONFIG_FILE)
            save_data_info(run_dir, DataInfo.of(cfg, data))
        _fit(trainer, module, datamodule, last, cfg.resume, run_dir)
    knn = monitor.last
    if knn is None and "knn_top1" in trainer.callback_metrics:  # ddp_spawn: the monitor ran in the rank processes
        knn = {key: float(trainer.callback_metrics[f"knn_{key}"]) for key in ("top1", "top5")}
    if knn is None and trained_before >= cfg.epochs and data.test is not None and trainer.is_global_zero:
        knn = monitor.evaluate_last_epoch(module.to(trainer.strategy.root_device), trained_before)  # stopped before evaluating
        log_after_training(run_dir, trained_before, {"knn_top1": knn["top1"], "knn_top5": knn["top5"]})
    if cudagraph_skips:
        warn(f"cuda_graphs=true: Inductor ran {len(cudagraph_skips)} compiled part(s) without CUDA graphs, kernel by kernel "
             f"(first: {cudagraph_skips[0]}); summary.json lists them (cudagraph_skips)")  # fmt: skip
    if trainer.is_global_zero:  # the epochs the last checkpoint holds (under ddp_spawn this trainer trained none)
        saved = read_checkpoint(last.path) if last.path.is_file() else None
        if saved is not None and monitor.best is None:  # ddp_spawn: the monitor that ran was a rank process's
            monitor.load_state_dict(saved.get("callbacks", {}).get(monitor.state_key, {}))
        if saved is not None and not timer.seconds and timer.state_key in saved.get("callbacks", {}):  # and the timer
            timer.adopt(saved["callbacks"][timer.state_key])
        epochs = epochs_trained(saved) if saved is not None else trainer.current_epoch
        _write_summary(run_dir, epochs, timer, monitor, module, data, knn, cudagraph_skips)
    return run_dir, knn


def _restore_unfinished(module: ContrastiveModule, cfg: Config, data: Data, run_dir: Path) -> int | None:
    """Load the ``resume=`` checkpoint's weights into ``module`` (before config.json is rewritten: a
    checkpoint that does not fit leaves the run as it was) and return the epochs it has trained; None,
    with a warning, when the run has finished all ``epochs`` (its summary written for those epochs). A
    run stopped after its last epoch but before its end (the final kNN, the summary) is resumed to
    finish it; one that has trained more than ``epochs`` and not finished is an error (Lightning
    cannot go back)."""
    assert cfg.resume is not None
    saved = read_checkpoint(Path(cfg.resume))
    restore(module, saved, Path(cfg.resume), cfg, len(data.train), data.train.channels)
    trained, summary = epochs_trained(saved), run_dir / SUMMARY_FILE
    finished = summary.is_file() and read_json_object(summary).get("epochs") == trained
    if trained < cfg.epochs or (trained == cfg.epochs and not finished):
        return trained
    if not finished:
        raise CrossLevelError(f"{run_dir} has trained {trained} epochs, more than epochs={cfg.epochs}: resume it with epochs={trained} or more")
    warn(f"{run_dir} has trained {trained} of epochs={cfg.epochs}: nothing left to train (raise epochs= to go on)")
    return None


def _trainer(cfg: Config, run_dir: Path, datamodule: ContrastiveDataModule, callbacks: list[Callback]) -> pl.Trainer:
    """The Lightning trainer of ``cfg``: devices, precision, loggers, ``callbacks`` and the progress bar."""
    limit = cfg.limit_train_batches
    steps_per_epoch = min(len(datamodule.loader), int(limit) if limit > 1 else max(1, int(len(datamodule.loader) * limit)))
    if cfg.progress:
        callbacks = [*callbacks, StderrProgressBar(refresh_rate=max(1, min(20, steps_per_epoch // 4)))]
    return pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices if cfg.devices == "auto" or "," in cfg.devices else int(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        sync_batchnorm=cfg.sync_bn,
        use_distributed_sampler=False,  # ResumableSampler shards the data itself
        plugins=[AtomicCheckpointIO()],
        precision=cfg.precision,
        logger=_loggers(cfg, run_dir),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        limit_train_batches=int(limit) if limit > 1 else limit,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        num_sanity_val_steps=0,
        deterministic=False,
        benchmark=True,  # cuDNN picks the fastest convolutions for the (fixed) input shape
    )


def _check_fits(cfg: Config, data: Data, trainer: pl.Trainer) -> None:
    """What only the trainer knows: SyncBatchNorm needs GPUs; k fits the batch it groups; every device needs a whole batch."""
    if cfg.sync_bn and isinstance(trainer.accelerator, CPUAccelerator):
        raise CrossLevelError("sync_bn=true needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU")
    check_groups(cfg, trainer.world_size)
    if len(data.train) // trainer.world_size < cfg.batch_size:
        raise CrossLevelError(
            f"{len(data.train)} training images over {trainer.world_size} devices is less than one batch "
            f"(batch_size={cfg.batch_size} per device)"
        )


def _fit(
    trainer: pl.Trainer, module: ContrastiveModule, datamodule: ContrastiveDataModule, last: LastCheckpoint, resume: str | None, run_dir: Path
) -> None:
    """``trainer.fit`` with the signal handlers of :class:`LastCheckpoint`; a failure before the first
    checkpoint leaves nothing unusable behind (the run directory is removed)."""
    os.environ[RUN_NAME_ENV] = run_dir.name  # inherited by the rank processes Lightning starts
    launching = LAUNCHER_PID_ENV not in os.environ  # not a rank process started by another crosslevel process
    os.environ.setdefault(LAUNCHER_PID_ENV, str(os.getpid()))
    try:
        with last.handling_signals(run_dir, trainer.strategy.launcher):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except BaseException as err:
        finish_wandb(trainer.loggers, getattr(err, "exit_code", 1))  # a stop (its exit code) or a failure
        if trainer.is_global_zero and not last.path.is_file():  # nothing to resume
            discard_unsaved(run_dir)
        raise
    else:
        finish_wandb(trainer.loggers, 0)
    finally:
        os.environ.pop(RUN_NAME_ENV, None)
        if launching:
            os.environ.pop(LAUNCHER_PID_ENV, None)


def _write_summary(
    run_dir: Path, epochs: int, timer: EpochTimer, monitor: KNNMonitor, module: ContrastiveModule, data: Data, knn: dict | None,
    cudagraph_skips: list[str],
) -> None:
    """``summary.json`` (epochs, times, image counts, final and best kNN, the parts run without CUDA graphs)
    and the joined ``metrics.csv``."""
    summary = {
        "epochs": epochs,
        "train_seconds": timer.total(),
        "epoch_seconds": timer.seconds,
        "train_images": len(data.train),
        "skipped_images": len(data.train.skipped) + (len(data.test.skipped) if data.test is not None else 0),
        "skipped_steps": module.skipped_steps,
        "knn": knn,
        "knn_skipped": data.no_knn or None,
        "knn_best": monitor.best,
        "cudagraph_skips": cudagraph_skips,
    }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    merge_metrics(run_dir)
