"""Shared fixtures: tiny data written in the standard formats, small configs, the shared data path."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"

torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def decode_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test decodes into its own cache folder (never the user's ``~/.cache``)."""
    folder = tmp_path_factory.mktemp("decoded")
    monkeypatch.setenv("CROSSLEVEL_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def shared_cifar10() -> Path:
    """The shared CIFAR-10 image folder, or a skip that says why."""
    if not (SHARED_CIFAR10 / "train").is_dir():
        pytest.skip(f"shared CIFAR-10 folder not found at {SHARED_CIFAR10} (only present in the project workspace)")
    return SHARED_CIFAR10


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> Path:
    """Tiny ``cifar-10-batches-py`` folder in the standard pickle format; returns its parent."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=per_batch).tolist(),
            "batch_label": name,
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return root


def write_cifar100(root: Path, size: int = 8, seed: int = 0) -> Path:
    """Tiny ``cifar-100-python`` folder in the standard pickle format; returns its parent."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        split = {
            "data": rng.integers(0, 256, size=(size, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, 100, size=size).tolist(),
            "coarse_labels": rng.integers(0, 20, size=size).tolist(),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(split, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)]}, handle)
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 16, seed: int = 0) -> Path:
    """Tiny ``train/`` + ``test/`` image folder of random PNGs; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def free_port() -> int:
    """A free TCP port on localhost, for a two-process gloo test."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fit_two_steps(cfg, module, data):
    """Train ``module`` for two steps of ``data``'s training loader on the CPU, quietly; the trainer."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(module, data.train_loader(cfg))
    return trainer


def signal_a_training_run(
    command: list[str], run_dir: Path, send: Callable[[subprocess.Popen], None], ready: Callable[[subprocess.Popen], bool] | None = None,
    **popen: Any,
) -> tuple[int, str]:
    """Start ``command`` (a training run writing ``run_dir``) in a session of its own, wait until it trains
    (its first log flush; or until ``ready(process)``), call ``send(process)`` (a signal to it or to its
    group) and return (exit code, stderr) once it has ended; its whole process group (loader workers too)
    must end within 5 s of it. Whatever happens, nothing of the group outlives the test."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)  # fmt: skip
    ready = ready or (lambda _: bool(list(run_dir.glob("logs/version_0/metrics.csv"))))  # the stop handlers are in place
    try:
        deadline = time.monotonic() + 300
        while not ready(process) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1]
        send(process)
        _, err = process.communicate(timeout=120)
        deadline = time.monotonic() + 5
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(process.pid), f"processes of the run outlived it: {err}"
        return process.returncode, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def children_of(pid: int) -> list[str]:
    """The command lines of the processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
