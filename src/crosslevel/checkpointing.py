"""Nothing a user trained is lost: atomic checkpoint files, a graceful stop on SIGINT/SIGTERM,
the RNG and sampler state that let a resumed run continue where it stopped, and a check that a
checkpoint fits the model it is loaded into."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from lightning.pytorch.strategies.launchers.launcher import _Launcher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.multiprocessing import ProcessExitedException

from .config import FIELDS, Config
from .data.sampling import STOP_SIGNALS, ResumableSampler
from .distributed import largest_over_ranks
from .errors import CrossLevelError, TrainingInterrupted

RESUME_KEY = "crosslevel_resume"
LAUNCHER_PID_ENV = "CROSSLEVEL_LAUNCHER_PID"  # the process that called fit: local rank 0 of Lightning's ddp launcher
# Config keys that decide the shapes of the saved tensors: a checkpoint only fits a model built with the same values.
# What a checkpoint's weights and optimiser state fit (the optimiser: SGD's one parameter group, AdamW's two).
MODEL_KEYS = ("backbone", "backbone_args", "width", "feature_dim", "normlinear", "mlp", "mlp_bn", "mlp_shared", "instance", "optimizer")
# keys that shape a branch's checkpointed state: MoCo's queue buffer, BYOL's predictor (and, below, whether
# NPID keeps an NCE normaliser and the model a jigsaw head: on or off, whatever their values)
BRANCH_STATE_KEYS = {"moco": ("queue_size",), "byol": ("predictor_hidden",)}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.tmp-<pid>`` next to the target, syncs it to disk, then renames it over the target.

    A crash, a signal or a full disk while saving leaves the previous checkpoint intact: the target is
    only ever replaced by a complete file (``os.replace`` is atomic on POSIX and Windows). A failed
    write is a :class:`CrossLevelError` that says so.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as err:  # a full disk, a quota, a file system gone read-only
            kept = "; the previous checkpoint there is intact" if target.is_file() else ""
            raise CrossLevelError(f"cannot write checkpoint {target} ({err.strerror or err}){kept}") from None
        finally:
            temporary.unlink(missing_ok=True)


def rng_states() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA, when present) global RNG states, as types that
    ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    states: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA only when the device count matches)."""
    random.setstate(states["python"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(Callback):
    """Saves with every checkpoint what Lightning does not: the global RNG states and how far the
    sampler got through the current epoch; restores both on resume.

    With a checkpoint taken at the end of an epoch (the periodic ``last.ckpt``) and ``workers=0``
    the resumed run is identical to an uninterrupted one (data order, augmentations, weights);
    with worker processes the order is the same but the new workers draw other augmentations.
    After a stop in the middle of an epoch it continues with the images not yet seen in that
    epoch, with the same schedule, optimiser and bank; its random augmentations then differ from
    the uninterrupted run's (the loader had already drawn those of the next batch when the stop
    came). Under DDP the saved RNG state is rank 0's and every rank restores it.
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        epoch_over = done >= trainer.num_training_batches or trainer.current_epoch > self.sampler.epoch
        checkpoint[RESUME_KEY] = {
            "rng": rng_states(),
            "epoch": self.sampler.epoch + 1 if epoch_over else self.sampler.epoch,
            "consumed": 0 if epoch_over else done * self.batch_size,
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(RESUME_KEY)
        if state is None:  # a checkpoint written without this callback: resume at the epoch start
            return
        self.sampler.fast_forward(state["epoch"], state["consumed"])
        set_rng_states(state["rng"])


class LastCheckpoint(Checkpoint):
    """Owns ``checkpoints/last.ckpt``: replaced after every ``every``-th epoch and at the end of training,
    and written when SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's time limit) stops training.

    A signal only records itself (and is passed on to the rank processes this process started); at each
    step boundary the ranks decide together (one all-reduce under DDP) and all save and stop there, in
    the callback :attr:`at_step_boundaries` (list it before callbacks with epoch-end work, the kNN
    evaluation, which a stop skips; this class, a ``Checkpoint``, runs after all others). Lightning's own
    SIGTERM handler is replaced while training: it calls a collective inside the handler, which, when a
    signal reaches every rank (a process group, torchrun, a scheduler), pairs with another rank's
    training collectives and hangs the run. A second Ctrl-C aborts without saving. Use
    :meth:`handling_signals` around ``trainer.fit``; it raises :class:`TrainingInterrupted`.
    """

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path, self.every = Path(path), every
        self.received: int | None = None  # the first stop signal of this process
        self._launcher: _Launcher | None = None  # what started the rank processes, if this process did
        self._passed_on = False
        self._children_before: set[multiprocessing.process.BaseProcess] = set()  # this process's, before fit
        self._parent_watches = False  # a rank process of Lightning's ``ddp`` launcher, watched by local rank 0
        self.at_step_boundaries: Callback = _StopAtStepBoundaries(self)

    @property
    def last_model_path(self) -> str:
        """The checkpoint a failure can go back to ('' while none exists)."""
        return str(self.path) if self.path.is_file() else ""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:  # the same decision on every rank: saving is collective
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the finished state (epoch counter advanced), to extend the run later

    def _take_over_signals(self, trainer: pl.Trainer) -> None:
        """In every rank process, before Lightning installs its SIGTERM handler: have it call ours instead
        (so Lightning never sets its own stop flag)."""
        trainer._signal_connector._sigterm_notifier_fn = self._on_sigterm  # type: ignore[method-assign]
        launcher = trainer.strategy.launcher  # a ddp_fork / ddp_spawn rank holds a copy of its parent's: it starts nothing
        self._launcher = None if isinstance(launcher, _MultiProcessingLauncher) else launcher
        launched_by = os.environ.get(LAUNCHER_PID_ENV)  # set by the process that called fit, inherited by the ranks it starts
        self._parent_watches = isinstance(self._launcher, _SubprocessScriptLauncher) and launched_by == str(os.getppid())
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
            signal.signal(signal.SIGINT, self._on_sigint)

    def _stop_if_signalled(self, trainer: pl.Trainer, pl_module: pl.LightningModule, before_batch: bool) -> None:
        """At a step boundary: when a signal reached any rank, every rank saves and stops here (checkpoint
        written, then ``SIGTERMException`` with exit code 128 + signal, which a ddp_fork / ddp_spawn rank
        process exits with)."""
        received = largest_over_ranks(self.received or 0, pl_module.device)  # the same answer on every rank
        if not received:
            return
        self.received = self.received or received
        if before_batch:  # the next batch is fetched, not started: save the loop as it was after the last step
            progress = trainer.fit_loop.epoch_loop.batch_progress
            progress.current.ready, progress.total.ready = progress.current.completed, progress.total.completed
        else:  # the epoch is over (the checkpoint holds it whole): its row of metrics.csv, which a resume cannot redo
            _log_the_epoch(trainer, pl_module)
        trainer.save_checkpoint(self.path, weights_only=False)
        raise SIGTERMException(128 + self.received)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.received = self.received or signum
        if self._launcher is None or self._passed_on:  # the rank processes this one started (none elsewhere)
            return
        self._passed_on = True
        if isinstance(self._launcher, _MultiProcessingLauncher) and not self._launcher.procs:
            for rank_process in set(multiprocessing.active_children()) - self._children_before:
                rank_process.kill()  # a ddp_fork / ddp_spawn parent still starting the ranks (seconds each for spawn):
                rank_process.join()  # they wait in the rendezvous, nothing trained; one killed unread would leave
            raise SIGTERMException(128 + signum)  # a spawn parent waiting forever
        self._launcher.kill(signal.SIGTERM)

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self.received is not None:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._on_sigterm(signum, frame)

    @contextmanager
    def handling_signals(self, run_dir: Path, launcher: _Launcher | None = None) -> Iterator[None]:
        """Install the handlers for the duration of ``trainer.fit`` (main thread only); ``launcher`` is the
        trainer's, which starts the rank processes of ``ddp_fork`` / ``ddp_spawn`` / ``ddp``."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        self._launcher, self._children_before = launcher, set(multiprocessing.active_children())
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        except SIGTERMException:
            received = self.received or signal.SIGTERM
            if self._parent_watches:
                _let_the_parent_end_first()
            raise TrainingInterrupted(signal.Signals(received).name, 128 + received, self.last_model_path or None, run_dir) from None
        except ProcessExitedException as exited:  # ddp_fork / ddp_spawn: this process waited for ranks that stopped
            by = -exited.exit_code if exited.exit_code < 0 else exited.exit_code - 128  # killed still starting, or stopped
            if by not in STOP_SIGNALS:
                raise
            received = self.received or by  # Ctrl-C here reaches the ranks as SIGTERM
            raise TrainingInterrupted(signal.Signals(received).name, 128 + received, self.last_model_path or None, run_dir) from None
        except SystemExit:  # Lightning's answer to the KeyboardInterrupt of a second Ctrl-C is exit(1)
            if self.received is None:
                raise
            raise KeyboardInterrupt from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.received, self._launcher, self._passed_on, self._parent_watches = None, None, False, False
            self._children_before = set()


class _StopAtStepBoundaries(Callback):
    """:meth:`LastCheckpoint._stop_if_signalled` before each step and at each epoch's end, ahead of the
    epoch-end callbacks listed after it."""

    def __init__(self, owner: LastCheckpoint) -> None:
        self.owner = owner

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.owner._take_over_signals(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.owner._stop_if_signalled(trainer, pl_module, before_batch=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.owner._stop_if_signalled(trainer, pl_module, before_batch=False)


def _log_the_epoch(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """What Lightning does after the epoch-end hooks, here for an epoch that stops at its end: the module's
    epoch means logged (reduced over the ranks: every rank stops here) and the epoch's metrics written."""
    pl_module.on_train_epoch_end()
    trainer._logger_connector.on_epoch_end()
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop._batches_that_stepped -= 1  # as Lightning logs an epoch's metrics: at the epoch's last step
    trainer._logger_connector.update_train_epoch_metrics()
    epoch_loop._batches_that_stepped += 1
    for logger in trainer.loggers:
        logger.save()


def _let_the_parent_end_first(limit_s: float = 30.0) -> None:
    """Wait (at most ``limit_s``) until this process's parent has ended. Local rank 0 of Lightning's ``ddp``
    launcher watches the ranks it started and SIGKILLs itself when one of them ends with a nonzero exit
    code: a rank that stopped on a signal (exit 130 / 143) ends after it, so that it prints its stop line
    and exits with the signal's code."""
    parent, deadline = os.getppid(), time.monotonic() + limit_s
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)


def check_compatible(checkpoint: dict[str, Any], path: Path, cfg: Config, num_train: int, in_channels: int) -> None:
    """Raise a :class:`CrossLevelError` naming every difference between the model the checkpoint
    holds and the one ``cfg`` builds (method, backbone, widths, optimiser, bank size, input channels)."""
    saved = checkpoint["hyper_parameters"]  # a crosslevel checkpoint: checked by run_dir.read_checkpoint
    keys = MODEL_KEYS + BRANCH_STATE_KEYS.get(cfg.instance, ())
    ours = {key: getattr(cfg, key) for key in keys}
    theirs = {key: saved["cfg"].get(key, FIELDS[key].default) for key in keys}  # keys newer than the checkpoint: their defaults
    ours.update(num_train=num_train, in_channels=in_channels, jigsaw_head=cfg.jigsaw_weight > 0, nce=cfg.nce_negatives > 0)
    theirs.update(
        num_train=saved.get("num_train"),
        in_channels=saved.get("in_channels"),
        jigsaw_head=saved["cfg"].get("jigsaw_weight", 0) > 0,
        nce=saved["cfg"].get("nce_negatives", 0) > 0,
    )
    differences = [f"{key}={theirs[key]!r} (this run: {ours[key]!r})" for key in ours if theirs[key] != ours[key]]
    if differences:
        raise CrossLevelError(
            f"checkpoint {path} is from another model: {', '.join(differences)}. Resume with the settings it was "
            "trained with, or start a new run without resume="
        )
