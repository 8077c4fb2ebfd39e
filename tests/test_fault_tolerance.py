"""Nothing trained is lost: atomic checkpoints, SIGINT/SIGTERM, exact resume, non-finite losses."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from crosslevel.checkpointing import AtomicCheckpointIO, LastCheckpoint
from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset
from crosslevel.errors import CrossLevelError, TrainingInterrupted
from crosslevel.methods import ContrastiveModule
from crosslevel.run_dir import read_checkpoint, read_run, resolve_resume
from crosslevel.training import train

TINY = [
    "width=8", "feature_dim=16", "batch_size=32", "num_groups=4", "epochs=3", "limit_train_batches=2",
    "workers=0", "progress=false", "knn_k=20", "warmup_epochs=1",
]  # fmt: skip


def tiny_config(tmp_path: Path, name: str, *extra: str):
    return apply_overrides(load_preset("digits-cld"), [*TINY, f"out={tmp_path}", f"name={name}", *extra])


def checkpoint_of(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def signal_at_step(monkeypatch: pytest.MonkeyPatch, step: int, signum: int = signal.SIGTERM, delay: float = 0.0) -> None:
    """Send ``signum`` to this process during global step ``step`` (its forward, ``delay`` seconds in): the
    run stops once that step is complete, as after a signal that comes at any moment of a step."""
    original = ContrastiveModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if self.trainer.global_step == step - 1:  # counts optimiser steps: step - 1 before step's update
            time.sleep(delay)
            os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(ContrastiveModule, "training_step", training_step)


def poison_from_step(monkeypatch: pytest.MonkeyPatch, step: int, only: bool = False) -> None:
    """Make the loss NaN at global step ``step`` (and after it, unless ``only``)."""
    original = ContrastiveModule.objective

    def objective(self, *args, **kwargs):
        loss, logs = original(self, *args, **kwargs)
        current = self.trainer.global_step
        return (loss * float("nan") if current == step or (current > step and not only) else loss), logs

    monkeypatch.setattr(ContrastiveModule, "objective", objective)


def resume(run_dir: Path, verbose: bool = False) -> tuple[Path, dict | None]:
    cfg, _ = resolve_resume(apply_overrides(load_preset("digits-cld"), [f"resume={run_dir}"]), [])
    return train(cfg, verbose)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_atomic_save_never_leaves_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, target)

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CrossLevelError, match=r"cannot write checkpoint .*last\.ckpt \(disk full\); the previous checkpoint there is intact"):
        io.save_checkpoint({"weights": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target)["weights"], torch.ones(3))  # the last good one survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_resume_after_stop_at_epoch_end_gives_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full_dir, full_knn = train(tiny_config(tmp_path, "full"))

    signal_at_step(monkeypatch, step=2)  # the last step of epoch 0 (2 batches per epoch)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny_config(tmp_path, "stopped"))
    assert stop.value.exit_code == 128 + signal.SIGTERM
    stopped = checkpoint_of(tmp_path / "stopped")
    assert stopped["global_step"] == 2 and stopped["crosslevel_resume"]["epoch"] == 1  # saved at epoch 0's end, before its kNN
    monkeypatch.undo()

    resumed_dir, resumed_knn = resume(tmp_path / "stopped")
    full, resumed = checkpoint_of(full_dir), checkpoint_of(resumed_dir)
    assert resumed["global_step"] == full["global_step"] == 6
    assert_same_state(full["state_dict"], resumed["state_dict"])  # weights, BN statistics and the bank
    assert_same_state(full["optimizer_states"][0]["state"][0], resumed["optimizer_states"][0]["state"][0])
    assert full["lr_schedulers"] == resumed["lr_schedulers"]
    assert full_knn == resumed_knn


@pytest.mark.parametrize(("every", "saved_at"), [(1, [1, 2, 3, 3]), (2, [2, 3])])
def test_checkpoint_every_n_epochs_and_always_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int, saved_at: list[int]) -> None:
    """checkpoint_every=N: last.ckpt after every N-th epoch and at the end (the epochs done when each was written)."""
    epochs_done = []
    original = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", lambda self, checkpoint, path, storage_options=None: (
        epochs_done.append(checkpoint["crosslevel_resume"]["epoch"]), original(self, checkpoint, path, storage_options))[1])
    run_dir, _ = train(tiny_config(tmp_path, f"every{every}", f"checkpoint_every={every}"))
    assert epochs_done == saved_at and checkpoint_of(run_dir)["global_step"] == 6


def test_sigint_mid_epoch_saves_a_checkpoint_that_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal_at_step(monkeypatch, step=1, signum=signal.SIGINT)  # mid epoch 0, before any periodic checkpoint
    code = main(["train", "--config", "digits-cld", *TINY, f"out={tmp_path}", "name=run"])
    assert code == 128 + signal.SIGINT
    message = capsys.readouterr().err
    assert "stopped by SIGINT" in message and f"crosslevel train resume={tmp_path / 'run'}" in message
    saved = checkpoint_of(tmp_path / "run")
    assert saved["global_step"] == 1
    assert saved["crosslevel_resume"]["epoch"] == 0 and saved["crosslevel_resume"]["consumed"] == 32
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # handlers restored
    monkeypatch.undo()

    assert main(["train", f"resume={tmp_path / 'run'}"]) == 0
    assert checkpoint_of(tmp_path / "run")["global_step"] == 6  # the epoch was finished, not repeated
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]


def test_nonfinite_loss_stops_naming_step_and_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_from_step(monkeypatch, 3)
    with pytest.raises(CrossLevelError, match=r"non-finite \(nan on this device\) at step 3 \(epoch 2\).*Last good checkpoint: .*last\.ckpt"):
        train(tiny_config(tmp_path, "nan"))
    saved = checkpoint_of(tmp_path / "nan")  # the epoch-0 checkpoint is intact
    assert saved["global_step"] == 2
    assert torch.isfinite(saved["state_dict"]["branch.bank.memory"]).all()


def test_skip_nonfinite_skips_the_step_and_keeps_the_bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_from_step(monkeypatch, 3, only=True)
    with pytest.warns(UserWarning, match="non-finite loss"):
        run_dir, _ = train(tiny_config(tmp_path, "skip", "skip_nonfinite=true"))
    saved = checkpoint_of(run_dir)
    assert saved["global_step"] == 6
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert '"skipped_steps": 1' in (run_dir / "summary.json").read_text()
    epoch_losses = [float(row["loss_epoch"]) for row in csv.DictReader(open(run_dir / "metrics.csv")) if row.get("loss_epoch")]
    assert len(epoch_losses) == 3 and all(math.isfinite(loss) for loss in epoch_losses)  # the skipped step is out of the means


def test_nonfinite_loss_from_the_cli_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    poison_from_step(monkeypatch, 0)
    assert main(["train", *TINY, f"out={tmp_path}", "name=nan"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crosslevel: error:")]
    assert len(errors) == 1 and "at step 0 (epoch 1)" in errors[0] and "none yet (first epoch)" in errors[0]


def test_a_resume_from_an_older_checkpoint_leaves_one_row_per_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_every=2, a failure in epoch 4 of 4: the resume trains epochs 3 and 4 again from the epoch-2
    checkpoint, and the merged metrics.csv has each epoch once (the retried epoch 3 replaces the first one's)."""
    poison_from_step(monkeypatch, 6)  # the first step of epoch 4 (2 steps an epoch)
    with pytest.raises(CrossLevelError, match="non-finite"):
        train(tiny_config(tmp_path, "older", "epochs=4", "checkpoint_every=2", "eval_every=1"))
    assert checkpoint_of(tmp_path / "older")["global_step"] == 4
    first = list(csv.DictReader(open(tmp_path / "older" / "logs" / "version_0" / "metrics.csv")))
    assert sorted(int(r["epoch"]) for r in first if r.get("loss_epoch")) == [0, 1, 2]  # epoch 3 (of 1-based 3) was logged
    monkeypatch.undo()
    run_dir, _ = resume(tmp_path / "older")
    merged = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for column in ("loss_epoch", "knn_top1", "images_per_s"):
        assert sorted(int(r["epoch"]) for r in merged if r.get(column)) == [1, 2, 3, 4], column
    steps = [int(r["step"]) for r in merged if r.get("loss_step")]
    assert steps == sorted(set(steps))


def test_resume_of_a_finished_run_keeps_its_results(tmp_path: Path) -> None:
    run_dir, knn = train(tiny_config(tmp_path, "done", "epochs=1"))
    before = (run_dir / "summary.json").read_text()
    with pytest.warns(UserWarning, match="nothing left to train"):
        _, again = resume(run_dir)
    assert again == knn and (run_dir / "summary.json").read_text() == before


def test_a_run_stopped_after_its_last_epoch_before_its_knn_is_finished_by_a_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the last epoch's checkpoint, before the summary (SIGKILL, a second Ctrl-C; or a run
    resumed with fewer epochs= than planned): the run counts its epochs right, and a resume evaluates
    and writes the summary an uninterrupted run has."""
    _, whole = train(tiny_config(tmp_path, "whole", "epochs=2", "eval_every=0"))

    class Killed(Exception):
        pass

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(LastCheckpoint, "on_train_end", killed)
    with pytest.raises(Killed):
        train(tiny_config(tmp_path, "killed", "epochs=2", "eval_every=0"))
    monkeypatch.undo()
    assert checkpoint_of(tmp_path / "killed")["epoch"] == 1  # Lightning's counter: not advanced at an epoch's end
    info = read_run(tmp_path / "killed")
    assert (info.status, info.epochs_done) == ("interrupted", 2)
    config = (tmp_path / "killed" / "config.json").read_text()
    fewer, _ = resolve_resume(apply_overrides(load_preset("digits-cld"), [f"resume={tmp_path / 'killed'}"]), ["epochs=1"])
    with pytest.raises(CrossLevelError, match="has trained 2 epochs, more than epochs=1: resume it with epochs=2 or more"):
        train(fewer)
    assert (tmp_path / "killed" / "config.json").read_text() == config  # the run as it was
    run_dir, knn = resume(tmp_path / "killed")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert knn == whole and summary["knn"] == whole and summary["epochs"] == 2
    assert summary["knn_best"] == {"epoch": 2, "top1": whole["top1"], "top5": whole["top5"]}
    assert read_run(run_dir).status == "finished"
    rows = {row["epoch"]: row for row in csv.DictReader(open(run_dir / "metrics.csv", newline="")) if not row.get("loss_step")}
    assert float(rows["2"]["knn_top1"]) == pytest.approx(whole["top1"]) and rows["2"]["loss_epoch"]  # in the epoch's row


def test_times_add_up_over_a_mid_epoch_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signal_at_step(monkeypatch, step=1, delay=3)  # 3 s into epoch 0, then SIGTERM: a stop after its first step
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path, "timed"))
    monkeypatch.undo()
    run_dir, _ = resume(tmp_path / "timed")
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = summary["epoch_seconds"]
    assert len(seconds) == 3 and 3 <= seconds[0] < 60  # the resumed epoch counts both attempts' parts
    assert summary["train_seconds"] >= sum(seconds) - 0.05  # the first attempt's time is kept (rounded to 0.1 s)


def test_mid_epoch_resume_has_a_resumable_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signal_at_step(monkeypatch, step=1)
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path, "mid"))
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume(tmp_path / "mid", verbose=True)  # Lightning's own warnings shown, as they would be to a user
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert checkpoint_of(tmp_path / "mid")["global_step"] == 6


def test_nonfinite_loss_in_the_first_epoch_leaves_nothing_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "notes.txt").write_text("mine")  # a file of the user's in the run folder stays
    poison_from_step(monkeypatch, 0)
    assert main(["train", *TINY, f"out={tmp_path}", "name=nan"]) == 2
    assert "rerunning starts afresh" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "nan").iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    assert main(["train", *TINY, "epochs=1", f"out={tmp_path}", "name=nan"]) == 0


def _loader_worker(ready: object) -> None:
    from crosslevel.data.sampling import leave_stops_to_the_trainer

    leave_stops_to_the_trainer(0)
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_a_loader_worker_ends_on_its_parents_sigterm_and_leaves_anyone_elses_to_the_trainer(start_method: str) -> None:
    """SIGTERM from the process that started the worker (the loader ending it, multiprocessing at exit)
    ends it, also when that process's own SIGTERM handler was inherited by the fork and when a forkserver
    is the worker's parent; a SIGTERM from another process (a scheduler signalling the whole group) and
    SIGINT leave a forked worker running. (A forkserver child imports modules before ``worker_init_fn``
    runs; a thread they start there keeps SIGTERM's default action, so that part is checked for fork.)"""
    import multiprocessing
    import subprocess

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # the training process's handler, passed on by the fork
    try:
        context = multiprocessing.get_context(start_method)
        ready = context.Event()
        worker = context.Process(target=_loader_worker, args=(ready,), daemon=True)
        worker.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ready.wait(30)
    if start_method == "fork":
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
        os.kill(worker.pid, signal.SIGINT)
        worker.join(1.0)
        assert worker.is_alive()
    worker.terminate()  # SIGTERM from the parent
    worker.join(10)
    assert worker.exitcode == -signal.SIGTERM


class _BlockedSignals(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))


def test_loader_workers_are_born_with_the_stop_signals_blocked_and_a_signal_meanwhile_waits() -> None:
    """ResumableLoader starts its workers with SIGINT/SIGTERM blocked (``worker_init_fn`` takes over in
    each: a signal that reaches a worker first waits for it instead of killing it); a signal to the
    starting thread meanwhile reaches its handler afterwards, not lost."""
    from crosslevel.data.sampling import ResumableLoader, stops_blocked

    loader = ResumableLoader(_BlockedSignals(), batch_size=None, num_workers=1, multiprocessing_context="fork")
    assert [set(mask.tolist()) for mask in loader] == [{signal.SIGINT, signal.SIGTERM}] * 2
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # restored here
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
    try:
        with stops_blocked():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # to this thread (a signal to the
            time.sleep(0.1)  # process may reach another thread, which does not block it, and its handler here)
            assert received == []
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_in_an_epochs_last_step_stops_before_its_knn_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop comes ahead of the epoch-end work a scheduler's grace period may not cover (the kNN
    evaluation); the checkpoint then holds the whole epoch, and the log its row (losses, speed)."""
    from crosslevel.training import KNNMonitor

    evaluated: list[int] = []
    original = KNNMonitor.on_train_epoch_end
    monkeypatch.setattr(KNNMonitor, "on_train_epoch_end", lambda self, trainer, module: (evaluated.append(trainer.current_epoch), original(self, trainer, module))[1])
    signal_at_step(monkeypatch, step=2)  # the last step of epoch 0
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(tmp_path, "stopped", "eval_every=1"))
    saved = checkpoint_of(tmp_path / "stopped")
    assert evaluated == [] and saved["global_step"] == 2 and saved["crosslevel_resume"]["epoch"] == 1
    logged = list(csv.DictReader(open(next((tmp_path / "stopped").glob("logs/version_0/metrics.csv")), newline="")))
    epoch_rows = [row for row in logged if row.get("loss_epoch")]  # the epoch's row, which a resume cannot redo
    assert len(epoch_rows) == 1 and epoch_rows[0]["epoch"] == "0" and epoch_rows[0]["images_per_s"] and not epoch_rows[0].get("knn_top1")
