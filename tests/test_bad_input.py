"""Bad input ends with one clear message, a non-zero exit and nothing written over."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crosslevel.cli import main
from crosslevel.data.folders import to_rgb
from crosslevel.data.sources import load_split

SMALL = ["width=8", "feature_dim=16", "epochs=1", "limit_train_batches=1", "workers=0", "progress=false", "knn_k=5"]
FOLDER = ["--config", "digits-cld", "dataset=folder", "augment=none", "batch_size=8", "num_groups=2", *SMALL]


def write_folder(root: Path, per_class: int = 6, size: int = 8) -> Path:
    """``train/`` and ``test/`` with two classes of random RGB PNGs."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    return root


def fails(capsys: pytest.CaptureFixture, out: Path, args: list[str], message: str) -> str:
    """Run the CLI; it must exit 2 with ``message`` (a regex) in its one error line, no run directory."""
    code = main([*args, f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("crosslevel: error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), err
    assert not out.exists() or not any(out.iterdir()), "a failed start must not create a run directory"
    return err


def test_missing_data_path(tmp_path: Path, capsys) -> None:
    fails(capsys, tmp_path / "runs", ["train", *FOLDER, f"data={tmp_path / 'nowhere'}"], "data path does not exist: .*nowhere")


def test_data_path_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    fails(capsys, tmp_path / "runs", ["train", *FOLDER, f"data={tmp_path / 'file.txt'}"], "data path is not a folder")


def test_unreadable_data_folder(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "data")
    if os.geteuid() == 0:  # root reads every folder whatever its mode: deny it the way a user would be denied
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != root / "train" and real_access(path, mode))
    (root / "train").chmod(0)
    try:
        fails(capsys, tmp_path / "runs", ["train", *FOLDER, f"data={root}"], "not readable.*permission denied")
    finally:
        (root / "train").chmod(0o755)


def test_folder_without_images(tmp_path: Path, capsys) -> None:
    (tmp_path / "data" / "train" / "c0").mkdir(parents=True)
    (tmp_path / "data" / "train" / "c0" / "notes.txt").write_text("no images here")
    fails(capsys, tmp_path / "runs", ["train", *FOLDER, f"data={tmp_path / 'data'}"], "no images found in .*train")


def test_images_of_mixed_sizes(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "data")
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(root / "train" / "c1" / "3.png")
    fails(
        capsys, tmp_path / "runs", ["train", *FOLDER, f"data={root}"],
        r"differ in size: .*c0/0\.png is 8×8, .*c1/3\.png is 12×8; set image_size=N",
    )  # fmt: skip


def corrupt(root: Path) -> tuple[Path, Path]:
    truncated = root / "train" / "c0" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    fake = root / "train" / "c1" / "fake.jpg"
    fake.write_bytes(b"this is not a JPEG")
    return truncated, fake


def test_corrupt_images_stop_by_default(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "data")
    truncated, _ = corrupt(root)
    fails(
        capsys, tmp_path / "runs", ["train", *FOLDER, f"data={root}"],
        f"cannot decode 2 image\\(s\\) .*first: {re.escape(str(truncated))}.*bad_images=skip",
    )  # fmt: skip


def test_a_corrupt_image_decoded_in_a_loader_worker_is_one_line_without_the_workers_traceback(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "data")
    corrupt(root)
    args = ["train", *FOLDER, f"data={root}", "in_memory=false", "image_size=8", "workers=1"]
    err = fails(capsys, tmp_path / "runs", args, r"cannot decode image .*/train/c[01]/")
    assert "Traceback" not in err and "DataLoader worker" not in err, err


def test_corrupt_images_skipped_on_request_and_counted(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "data")
    corrupt(root)
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        code = main(["train", *FOLDER, f"data={root}", "bad_images=skip", f"out={tmp_path / 'runs'}", "name=run"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["skipped_images"] == 2 and summary["train_images"] == 11  # 12 files + 1 fake - 2 bad


def test_image_modes_are_converted_to_rgb() -> None:
    grey = Image.fromarray(np.array([[0, 128], [255, 7]], dtype=np.uint8), mode="L")
    assert (np.asarray(to_rgb(grey)) == np.asarray(grey)[..., None]).all()

    sixteen = Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16))  # mode I;16
    assert sixteen.mode.startswith("I;16")
    assert np.asarray(to_rgb(sixteen))[..., 0].tolist() == [[0, 255], [128, 1]]  # scaled, not clipped to white

    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0]]], dtype=np.uint8), mode="RGBA")
    assert np.asarray(to_rgb(rgba)).tolist() == [[[200, 100, 50], [0, 0, 0]]]  # transparent → black

    grey_alpha = Image.fromarray(np.array([[[100, 255], [100, 51]]], dtype=np.uint8), mode="LA")
    assert np.asarray(to_rgb(grey_alpha))[..., 0].tolist() == [[100, 20]]

    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    assert np.asarray(to_rgb(palette)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    palette.info["transparency"] = 1
    assert np.asarray(to_rgb(palette)).tolist() == [[[10, 20, 30], [0, 0, 0]]]


def test_folder_of_mixed_modes_loads_as_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "c0"
    folder.mkdir(parents=True)
    Image.new("L", (4, 4), 90).save(folder / "grey.png")
    Image.new("RGBA", (4, 4), (10, 20, 30, 255)).save(folder / "rgba.png")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(folder / "deep.png")
    Image.new("P", (4, 4), 0).save(folder / "palette.gif")
    images = load_split("folder", str(tmp_path / "data"), "train")
    assert images.images.shape == (4, 4, 4, 3)
    assert images.images[:, 0, 0].tolist() == [[255, 255, 255], [90, 90, 90], [0, 0, 0], [10, 20, 30]]


def test_cifar_folder_with_a_missing_batch(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, handle)
    fails(
        capsys, tmp_path / "runs", ["train", "--config", "cifar10-cld", f"data={tmp_path}", *SMALL],
        "CIFAR file missing: .*data_batch_3",
    )  # fmt: skip


def test_k_not_smaller_than_the_local_batch(tmp_path: Path, capsys) -> None:
    fails(capsys, tmp_path / "runs", ["train", "num_groups=32", "batch_size=32"], r"num_groups \(k=32\) must be smaller")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "cifar10-cdl"], "unknown preset 'cifar10-cdl' \\(did you mean 'cifar10-cld'\\?\\)"),
        (["epoch=3"], "unknown config key 'epoch' \\(did you mean 'epochs'\\?\\)"),
        (["epochs=three"], "config key 'epochs' expects a int, got 'three'"),
        (["base_lr=fast"], "config key 'base_lr' expects a finite float, got 'fast'"),
        (["sync_bn=maybe"], "config key 'sync_bn' expects a bool"),
        (["bad_images=ignore"], "'bad_images' must be one of error, skip"),
        (["epochs"], "not of the form key=value"),
    ],
)
def test_unknown_names_and_wrong_types(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    fails(capsys, tmp_path / "runs", ["train", *args], message)


def test_sync_bn_on_the_cpu(tmp_path: Path, capsys) -> None:
    fails(capsys, tmp_path / "runs", ["train", "accelerator=cpu", "sync_bn=true", *SMALL], "sync_bn=true needs GPUs")


@pytest.mark.parametrize(
    "key, message",
    [
        ("devices=abc", "devices must be a count"),
        ("workers=-1", "'workers' must be >= 0, got -1"),
        ("precision=fp17", "'precision' must be one of 32-true, .*; got 'fp17'"),
        ("strategy=foo", "'strategy' must be one of auto, ddp, .*; got 'foo'"),
        ("accelerator=gpu", "accelerator=gpu, but PyTorch sees no CUDA GPU here: use accelerator=cpu or auto"),
    ],
)
def test_lightning_keys_before_any_data_is_read(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, key: str, message: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, wherever the test runs
    fails(capsys, tmp_path / "runs", ["train", *FOLDER, f"data={tmp_path / 'not read'}", key], message)


TRAIN_ONE_STEP = ["train", *SMALL, "batch_size=32", "num_groups=4"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main([*TRAIN_ONE_STEP, f"out={out}", "name=run"]) == 0
    return out / "run"


def trained_run(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of a finished one-step run: ``tmp_path/runs/run``."""
    return Path(shutil.copytree(finished_run, tmp_path / "runs" / "run"))


def test_resume_with_another_model_and_existing_run_directory(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = trained_run(finished_run, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code = main(["train", f"resume={run}", "backbone=resnet18_cifar", "width=16", "optimizer=adamw"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"from another model: backbone='smallcnn' \(this run: 'resnet18_cifar'\), width=8", err)
    assert "optimizer='sgd' (this run: 'adamw')" in err  # its optimiser state is SGD's
    assert main([*TRAIN_ONE_STEP, f"out={tmp_path / 'runs'}", "name=run"]) == 2
    assert f"run directory {run} already exists" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written over


def test_damaged_or_foreign_checkpoint(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = trained_run(finished_run, tmp_path)
    checkpoint = run / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(["eval", "knn", str(run)]) == 2
    assert re.search(r"cannot read checkpoint .*last\.ckpt .*damaged", capsys.readouterr().err)
    torch.save({"state_dict": {}}, checkpoint)  # e.g. some other project's checkpoint
    assert main(["train", f"resume={run}"]) == 2
    assert "is not a crosslevel training checkpoint" in capsys.readouterr().err


def test_relative_data_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *FOLDER, "data=data", "out=runs", "name=rel"]) == 0
    assert json.loads((tmp_path / "runs" / "rel" / "config.json").read_text())["data"] == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", f"resume={tmp_path / 'runs' / 'rel'}", "epochs=2"]) == 0


def test_skipped_knn_is_said_with_its_reason(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data")
    corrupt(root)
    shutil.rmtree(root / "test")
    with pytest.warns(UserWarning, match="kNN evaluation skipped: no 'test' folder"):
        code = main(["train", *FOLDER, f"data={root}", "bad_images=skip", f"out={tmp_path / 'runs'}", "name=run"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["knn"] is None and "no 'test' folder" in summary["knn_skipped"]


def test_warmup_that_never_reaches_the_peak_lr_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="warmup_epochs=5 >= epochs=1"):
        assert main(["train", *SMALL, "batch_size=64", "warmup_epochs=5", f"out={tmp_path}", "name=warm"]) == 0
