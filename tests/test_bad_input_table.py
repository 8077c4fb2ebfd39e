"""Every bad input as one row of a table: exit code 2, one ``crosslevel: error:`` line naming the
problem, and nothing an earlier run wrote (its config, checkpoint, results) changed or added to.

Each row prepares a private workspace -- ``runs/run`` (a finished one-epoch digits run), a regular
file ``file`` and image folders -- damages what the row is about and names the command line."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crosslevel.cli import main
from crosslevel.run_dir import read_checkpoint

TINY = ["backbone=smallcnn", "width=4", "feature_dim=16", "batch_size=32", "num_groups=4", "epochs=1", "warmup_epochs=0",
        "limit_train_batches=2", "progress=false", "workers=0", "knn_k=5", "accelerator=cpu"]  # fmt: skip
FOLDER = ["dataset=folder", "augment=none", "batch_size=8", "num_groups=2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, f"out={out}", "name=run"]) == 0
    return out / "run"


@pytest.fixture
def workspace(finished_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished_run, tmp_path / "runs" / "run")
    (tmp_path / "file").write_text("a regular file")
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# what a row may damage in ``runs/run``
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def config(w: Path) -> Path:
    return w / "runs" / "run" / "config.json"


def checkpoint(w: Path) -> Path:
    return w / "runs" / "run" / "checkpoints" / "last.ckpt"


def newer_config(w: Path) -> None:
    config(w).write_text(config(w).read_text().replace("{", '{\n  "future_key": 1,', 1))


def newer_checkpoint(w: Path) -> None:
    saved = torch.load(checkpoint(w), weights_only=False)
    saved["hyper_parameters"]["cfg"]["future_key"] = 1
    torch.save(saved, checkpoint(w))


def interrupted(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """``damage`` done to a run stopped before it finished (no summary: its status is read from the checkpoint)."""

    def apply(w: Path) -> None:
        (w / "runs" / "run" / "summary.json").unlink()
        damage(w)

    return apply


def images(folder: Path, count: int = 4, corrupt: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if corrupt:
            (folder / f"{i}.png").write_bytes(b"\x89PNG not really")
        else:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i}.png")
    return folder


def folder_data(w: Path, corrupt: bool, count: int = 4) -> Path:
    """A ``dataset=folder`` tree whose training images are all corrupt (``corrupt``) or absent (``count=0``)."""
    images(w / "data" / "train" / "c0", count, corrupt)
    return w / "data"


def no_space(path: str | int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


Setup = Callable[[Path, pytest.MonkeyPatch], list[str]]
RUN = "W/runs/run"  # in a row's arguments ``W/`` stands for the workspace


def run_cmd(*args: str, damage: Callable[[Path], None] | None = None) -> Setup:
    """A command line (``W/`` in ``args``: the workspace) run after ``damage``."""

    def setup(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
        if damage is not None:
            damage(w)
        return [arg.replace("W/", f"{w}/") for arg in args]

    return setup


def train_out(out: str, *extra: str) -> Setup:
    return run_cmd("train", *TINY, f"out={out}", *extra)


def denied(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (w / "locked").mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes everywhere: deny it the way a user would be denied
        real_access = os.access
        mp.setattr(os, "access", lambda path, mode: Path(path) != w / "locked" and real_access(path, mode))
    return ["train", *TINY, f"out={w / 'locked' / 'runs'}"]


def read_only(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
    """``mnt`` is a file system mounted read-only (made so by refusing what the kernel would refuse)."""
    (w / "mnt").mkdir()
    real_mkdir = os.mkdir

    def mkdir(path: str, *args: object, **kwargs: object) -> None:
        if Path(path).is_relative_to(w / "mnt"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        real_mkdir(path, *args, **kwargs)

    mp.setattr(os, "mkdir", mkdir)
    return ["train", *TINY, f"out={w / 'mnt' / 'runs'}"]


def disk_full(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setattr(os, "mkdir", lambda path, *a, **k: no_space(path))
    return ["train", *TINY, f"out={w / 'runs'}", "name=new"]


def disk_full_at_first_checkpoint(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setattr(os, "fsync", no_space)
    return ["train", *TINY, f"out={w / 'runs'}", "name=new"]


def dangling_link(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (w / "link").symlink_to(w / "gone")
    return ["train", *TINY, f"out={w / 'link'}"]


def existing_export(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (w / "backbone.pth").write_bytes(b"an earlier export")
    return ["export", str(w / "runs" / "run"), "--out", str(w / "backbone.pth")]


def folder_cmd(command: str, corrupt: bool, count: int = 4, *extra: str) -> Setup:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> list[str]:
        return [command, str(w / "runs" / "run"), "--data", str(images(w / "photos", count, corrupt)), "--out", str(w / "out" / "x.npy"), *extra]

    return setup


def train_folder(corrupt: bool, count: int = 4, *extra: str) -> Setup:
    return lambda w, mp: ["train", *TINY, *FOLDER, f"data={folder_data(w, corrupt, count)}", f"out={w / 'new'}", *extra]


DAMAGES = {
    "config truncated": (lambda w: truncate(config(w)), r"config\.json is damaged \(truncated or not JSON"),
    "config missing": (lambda w: config(w).unlink(), r"is not (a|inside a) run directory \(no config\.json"),
    "config newer": (newer_config, r"config keys this crosslevel does not know \(future_key\).*newer version"),
    "config not an object": (lambda w: config(w).write_text("[1, 2]"), r"config\.json is damaged \(a JSON list, not an object\)"),
    "config wrong value": (lambda w: config(w).write_text('{"epochs": "ten"}'), r"config\.json is damaged: config key 'epochs' expects a int"),
    "checkpoint truncated": (interrupted(lambda w: truncate(checkpoint(w))), r"cannot read checkpoint .*last\.ckpt .*damaged"),
    "checkpoint missing": (lambda w: checkpoint(w).unlink(), r"no checkpoint (in|to resume from at) .*last\.ckpt"),
    "checkpoint newer": (interrupted(newer_checkpoint), r"last\.ckpt was written by a newer crosslevel \(config keys .*: future_key\)"),
    "checkpoint foreign": (interrupted(lambda w: torch.save({"state_dict": {}}, checkpoint(w))), r"last\.ckpt is not a crosslevel training checkpoint"),
}
COMMANDS = {
    "show": (["show", RUN], ["config truncated", "config missing", "config newer", "config not an object", "checkpoint truncated", "checkpoint newer"]),
    "runs": (["runs", "W/runs"], ["config truncated", "config newer", "config wrong value", "checkpoint truncated", "checkpoint foreign"]),
    "eval": (["eval", "knn", RUN], ["config truncated", "config missing", "config newer", "checkpoint truncated", "checkpoint missing", "checkpoint newer"]),
    "plot": (["plot", RUN], ["config truncated", "checkpoint truncated", "checkpoint missing"]),
    "export": (["export", RUN, "--out", "W/b.pth"], ["config newer", "checkpoint truncated", "checkpoint missing", "checkpoint newer"]),
    "resume": (["train", f"resume={RUN}", "epochs=2"], ["config truncated", "config missing", "config newer", "checkpoint truncated", "checkpoint missing", "checkpoint newer", "checkpoint foreign"]),
}


CASES: list[tuple[str, Setup, str]] = [
    # out=: a folder that cannot be made, for any reason
    ("out under /proc", train_out("/proc/crosslevel-nope"), r"out=/proc/crosslevel-nope cannot hold run directories: cannot create a folder in /proc"),
    ("out a regular file", train_out("W/file"), r"cannot hold run directories: .*file is a file"),
    ("out under a regular file", train_out("W/file/runs"), r"cannot hold run directories: .*file is a file"),
    ("out a device", train_out("/dev/null"), r"cannot hold run directories: /dev/null is not a folder"),
    ("out a dangling link", dangling_link, r"cannot hold run directories: .*link is not a folder"),
    ("out not writable", denied, r"cannot hold run directories: .*locked is not writable \(permission denied\)"),
    ("out read-only file system", read_only, r"cannot hold run directories: cannot create a folder in .*mnt \(Read-only file system\)"),
    ("out disk full", disk_full, r"cannot hold run directories: cannot create a folder in .*runs \(No space left on device\)"),
    ("out name too long", train_out("W/" + "y" * 300 + "/runs"), r"cannot hold run directories: the name y+… is 300 bytes long"),
    ("out with a NUL", train_out("W/a\0b"), r"cannot hold run directories: the path contains a NUL character"),
    ("disk full at the first checkpoint", disk_full_at_first_checkpoint, r"cannot write checkpoint .*new/checkpoints/last\.ckpt \(No space left on device\)$"),
    # name=: one folder, never a path
    *[(f"name={name!r}", train_out("W/runs", f"name={name}"), r"is not a run name: it names one folder under out=") for name in ("../escape", "a/b", "/abs", "..", ".", "a\0b")],
    ("name too long", train_out("W/runs", "name=" + "x" * 300), r"name= is too long: the name x+… is 300 bytes long"),
    ("name of an existing run", train_out("W/runs", "name=run"), r"run directory .*runs/run already exists"),
    # a run directory damaged, missing or newer, for every command that reads one
    *[(f"{command}: {damage}", run_cmd(*args, damage=DAMAGES[damage][0]), DAMAGES[damage][1])
      for command, (args, damages) in COMMANDS.items() for damage in damages],  # fmt: skip
    ("show: summary truncated", run_cmd("show", RUN, damage=lambda w: truncate(w / "runs" / "run" / "summary.json")), r"summary\.json is damaged"),
    ("export: data.json truncated", run_cmd("export", RUN, "--out", "W/b.pth", damage=lambda w: truncate(w / "runs" / "run" / "data.json")), r"data\.json is damaged"),
    ("show: no such run", run_cmd("show", "W/nowhere"), r"nowhere is not a run directory \(not a folder\)"),
    ("eval: a file for a run", run_cmd("eval", "knn", "W/file"), r"file is not a run directory \(not a folder\)"),
    ("show: a folder that is no run", run_cmd("show", "W/runs"), r"runs is not a run directory \(no config\.json\)"),
    ("runs: no such folder", run_cmd("runs", "W/nowhere"), r"no folder of runs at .*nowhere"),
    ("resume: no such path", run_cmd("train", "resume=W/nowhere"), r"no checkpoint to resume from at .*nowhere"),
    # outputs: never written over, their folder must be creatable
    ("export: target exists", existing_export, r"--out .*backbone\.pth exists: remove it or choose another --out"),
    ("export: out under a file", run_cmd("export", RUN, "--out", "W/file/b.pth"), r"--out .*file/b\.pth cannot be written: .*file is a file"),
    ("embed: out under a file", run_cmd("embed", RUN, "--data", "W/runs", "--out", "W/file/x.npy"), r"--out .*x\.npy cannot be written: .*file is a file"),
    # image folders that are empty or hold only unreadable files
    ("embed: empty folder", folder_cmd("embed", False, 0), r"no images found in .*photos"),
    ("embed: only unreadable files", folder_cmd("embed", True), r"cannot decode 4 image\(s\) in .*photos"),
    ("cluster: empty folder", folder_cmd("cluster", False, 0, "--k", "2"), r"no images found in .*photos"),
    ("cluster: only unreadable files", folder_cmd("cluster", True, 4, "--k", "2"), r"cannot decode 4 image\(s\) in .*photos"),
    ("train: empty image folder", train_folder(False, 0), r"no images found in .*train"),
    ("train: only unreadable images", train_folder(True), r"cannot decode 4 image\(s\) .*bad_images=skip"),
    ("train: only unreadable images, skipped", train_folder(True, 4, "bad_images=skip"), r"none of the images in .*train.* can be decoded"),
]


def shown(stderr: str) -> list[str]:
    """The lines a terminal shows of ``stderr``: a progress bar erased with ``\\r`` is gone."""
    return [line.rsplit("\r", 1)[-1] for line in stderr.split("\n") if line.rsplit("\r", 1)[-1].strip()]


@pytest.mark.parametrize("setup, message", [pytest.param(s, m, id=name) for name, s, m in CASES])
def test_bad_input(workspace: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, setup: Setup, message: str) -> None:
    argv = setup(workspace, monkeypatch)
    before = snapshot(workspace)
    code = main(argv)
    monkeypatch.undo()  # before looking at the files: a row may have patched os
    err = shown(capsys.readouterr().err)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("crosslevel: error: "), err
    assert re.search(message, err[0]), err
    assert snapshot(workspace) == before, "an earlier run or file was changed or added to"


def test_the_table_covers_forty_inputs() -> None:
    assert len(CASES) >= 40


def test_a_signal_during_the_checkpoint_write_keeps_a_whole_checkpoint(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def interrupted_write(fd: int) -> None:  # SIGTERM arrives while the checkpoint file is being written
        signal.raise_signal(signal.SIGTERM)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted_write)
    code = main(["train", *TINY, "epochs=3", f"out={tmp_path}", "name=run"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and err.startswith("crosslevel: stopped by SIGTERM; resumable checkpoint: "), err
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["epoch"] >= 1
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]  # no temporary file left


def test_disk_full_while_resuming_keeps_the_previous_checkpoint(workspace: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = snapshot(workspace / "runs" / "run" / "checkpoints")
    monkeypatch.setattr(os, "fsync", no_space)
    code = main(["train", f"resume={workspace / 'runs' / 'run'}", "epochs=2"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and re.fullmatch(r"crosslevel: error: cannot write checkpoint .*last\.ckpt \(No space left on device\); the previous checkpoint there is intact\n", err), err
    assert snapshot(workspace / "runs" / "run" / "checkpoints") == kept


def test_a_second_ctrl_c_during_the_checkpoint_write_keeps_the_previous_checkpoint(workspace: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = snapshot(workspace / "runs" / "run" / "checkpoints")
    real_fsync = os.fsync

    def interrupted_write(fd: int) -> None:  # Ctrl-C twice while the checkpoint file is being written
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted_write)
    code = main(["train", f"resume={workspace / 'runs' / 'run'}", "epochs=2"])
    monkeypatch.undo()
    assert (code, shown(capsys.readouterr().err)) == (130, ["crosslevel: interrupted"])
    assert snapshot(workspace / "runs" / "run" / "checkpoints") == kept
