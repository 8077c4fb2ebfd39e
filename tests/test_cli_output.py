"""The CLI answers bad input before importing the model stack, and a run prints crosslevel's lines only:
results on stdout, progress and warnings on stderr, Lightning's own messages under ``--verbose``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import signal_a_training_run

from crosslevel.config import Config, save_config

HEAVY = ("torch", "lightning")
LIGHTNING_LINES = (
    "GPU available",
    "TPU available",
    "litlogger",
    "limit_train_batches",
    "Loading `train_dataloader`",
    "LeafSpec",
    "`Trainer.fit` stopped",
)
TINY = ["batch_size=64", "width=8", "feature_dim=16", "limit_train_batches=3", "warmup_epochs=0"]


def python(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``) from ``tmp_path``."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_commands_answer_without_importing_torch_or_lightning(tmp_path: Path) -> None:
    finished = tmp_path / "runs" / "done"
    finished.mkdir(parents=True)
    save_config(Config(epochs=1), finished / "config.json")
    (finished / "summary.json").write_text(json.dumps({"epochs": 1, "knn": {"top1": 50.0, "top5": 90.0}}))
    (tmp_path / "afile").write_text("")
    commands = [
        ["train", "foo=1"],  # unknown key
        ["train", "epochs=x"],  # bad value
        ["train", f"out={tmp_path / 'afile'}"],  # out is a file
        ["train", f"out={tmp_path / 'runs'}", "name=done"],  # an existing run
        ["train", f"resume={tmp_path / 'nowhere'}"],  # nothing to resume
        ["train", "out=/proc/crosslevel-nope"],  # out cannot be created
        ["train", "name=../escape"],  # a name that is a path
        ["presets"],
        ["runs", str(tmp_path / "runs")],
        ["show", str(finished)],
        ["train", "--help-keys"],
    ]
    code = (
        "import json, sys\n"
        "from crosslevel.cli import main\n"
        "codes = [main(command) for command in json.loads(sys.argv[1])]\n"
        f"print(json.dumps({{'codes': codes, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = python(tmp_path, code, json.dumps(commands))
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["codes"] == [2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0], result.stderr
    assert report["heavy"] == []
    assert "unknown config key 'foo'" in result.stderr and "already exists" in result.stderr
    assert "done" in result.stdout and "status: finished" in result.stdout


STOP_AT_STEP = """
import os, signal, sys
from crosslevel.cli import main
from crosslevel.methods import ContrastiveModule

step = int(sys.argv[1])
original = ContrastiveModule.training_step

def training_step(self, batch, batch_idx):
    loss = original(self, batch, batch_idx)
    if self.trainer.global_step == step - 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return loss

ContrastiveModule.training_step = training_step
sys.exit(main(sys.argv[2:]))
"""


def train(tmp_path: Path, stop_at_step: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``crosslevel train`` in a subprocess, sent SIGTERM during global step ``stop_at_step`` (-1: never)."""
    return python(tmp_path, STOP_AT_STEP, str(stop_at_step), "train", *TINY, f"out={tmp_path}", *args)


def lightning_lines(text: str) -> list[str]:
    return [line for line in LIGHTNING_LINES if line in text]


def test_a_run_prints_results_on_stdout_and_lightning_only_when_verbose(tmp_path: Path) -> None:
    stopped = train(tmp_path, 1, "epochs=2", "name=quiet")
    assert stopped.returncode == 143, stopped.stderr
    assert "continue with:" in stopped.stderr
    assert lightning_lines(stopped.stdout + stopped.stderr) == []

    resumed = train(tmp_path, -1, f"resume={tmp_path / 'quiet'}")
    assert resumed.returncode == 0, resumed.stderr
    assert lightning_lines(resumed.stdout + resumed.stderr) == []
    assert resumed.stdout.splitlines()[0] == f"run directory: {tmp_path / 'quiet'}"
    assert "kNN top-1:" in resumed.stdout and "best kNN over evaluated epochs" in resumed.stdout
    assert "Epoch" not in resumed.stdout  # the progress bar is on stderr, the resumed epoch's with its number and steps
    assert "Epoch 1/2:  33%" in resumed.stderr and "Epoch 2/2" in resumed.stderr

    verbose = train(tmp_path, 1, "epochs=2", "name=verbose", "--verbose")
    assert verbose.returncode == 143
    assert {"GPU available", "litlogger"} <= set(lightning_lines(verbose.stdout + verbose.stderr))


def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    """`crosslevel presets | head -1`: stdout a pipe whose reader has gone; exit 0, nothing on stderr."""
    code = "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); from crosslevel.cli import main; sys.exit(main(sys.argv[1:]))"
    result = python(tmp_path, code, "presets")
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(("signal_name", "exit_code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_the_process_group_with_loader_workers_saves_a_checkpoint(tmp_path: Path, signal_name: str, exit_code: int) -> None:
    """Ctrl-C, or a scheduler signalling every process of a job, reaches the loader workers too: the
    run still stops at a step boundary with its resumable checkpoint (a worker stopped first used to
    fail the loader and the save), and the workers end with it."""
    import os
    import signal

    run = tmp_path / "runs" / "group"
    command = [sys.executable, "-m", "crosslevel", "train", "epochs=50", "workers=1", "progress=false", f"out={tmp_path / 'runs'}", "name=group"]
    code, err = signal_a_training_run(command, run, lambda process: os.killpg(process.pid, getattr(signal, signal_name)), cwd=tmp_path)
    assert code == exit_code, err  # and the workers ended with the run (checked by signal_a_training_run)
    assert f"stopped by {signal_name}; resumable checkpoint" in err and (run / "checkpoints" / "last.ckpt").is_file()
