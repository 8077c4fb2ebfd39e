"""A run's data set seen from elsewhere: a relative --data path, a data folder that moved (--data
NEW for eval, plot, score and resume), and score on runs of different data sets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from crosslevel.cli import main
from crosslevel.errors import CrossLevelWarning

from conftest import write_image_folder

TINY = ["epochs=1", "batch_size=8", "num_groups=4", "width=8", "feature_dim=16", "progress=false"]


def trained_with_a_relative_path(root: Path) -> Path:
    """``root/work/runs/r``, trained from ``root/work`` with ``--data imgs`` (a 3-class image folder)."""
    write_image_folder(root / "work" / "imgs", per_class=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root / "work")
        assert main(["train", "dataset=folder", "--data", "imgs", *TINY, "out=runs", "name=r"]) == 0
    return root / "work" / "runs" / "r"


def test_a_relative_data_path_is_saved_absolute_and_the_run_evaluates_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = trained_with_a_relative_path(tmp_path)
    assert json.loads((run / "config.json").read_text())["data"] == str(tmp_path / "work" / "imgs")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "knn", "work/runs/r"]) == 0
    assert 0 <= json.loads((run / "knn_f_I.json").read_text())["top1"] <= 100


def test_a_run_whose_data_moved_is_used_with_data_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = trained_with_a_relative_path(tmp_path).rename(tmp_path / "r")  # the run and its data both "on another machine"
    (tmp_path / "work" / "imgs").rename(tmp_path / "renamed")
    monkeypatch.chdir(tmp_path)

    assert main(["eval", "knn", str(run)]) == 2
    assert main(["train", f"resume={run}", "epochs=2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crosslevel: error:")]
    assert len(errors) == 2 and all(str(tmp_path / "work" / "imgs") in line and "--data PATH" in line for line in errors)

    assert main(["eval", "all", str(run), "--data", "renamed"]) == 0
    assert main(["eval", "semi", str(run), "--data", "renamed", "--fraction", "0.5", "--epochs", "1"]) == 0
    assert main(["plot", str(run), "--data", "renamed", "--max-points", "10", "--pairs", "10"]) == 0
    assert main(["score", str(run), "--data", "renamed", "--k", "3", "--max-images", "20"]) == 0
    assert main(["train", f"resume={run}", "--data", "renamed", "epochs=2"]) == 0
    assert {p.name for p in run.iterdir()} >= {"eval_all.json", "semi_0.5.json", "score_f_I.json", "plots"}
    assert json.loads((run / "config.json").read_text())["data"] == str(tmp_path / "renamed")  # the resumed run's new home
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_data_does_not_apply_to_a_digits_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "batch_size=64", "limit_train_batches=1", f"out={tmp_path}", "name=d"]) == 0
    assert main(["eval", "knn", str(tmp_path / "d"), "--data", str(tmp_path)]) == 2
    assert "trained on the built-in digits: --data does not apply" in capsys.readouterr().err


def test_score_warns_when_the_runs_have_different_data_sets(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", per_class=8)
    assert main(["train", "dataset=folder", f"--data={tmp_path / 'imgs'}", *TINY, f"out={tmp_path}", "name=folder"]) == 0
    assert main(["train", *TINY, "batch_size=64", "limit_train_batches=1", f"out={tmp_path}", "name=digits"]) == 0
    folder, digits = str(tmp_path / "folder"), str(tmp_path / "digits")
    score = ["--k", "3", "--max-images", "20"]
    with pytest.warns(CrossLevelWarning) as caught:
        assert main(["score", folder, digits, *score]) == 0
    message = str(caught[0].message)
    assert f"{folder} (folder {tmp_path / 'imgs'}, 16px, 3 classes)" in message and f"{digits} (digits, 8px, 10 classes)" in message
    assert "(dataset, data path, image size, class names differ)" in message and "not comparable" in message
    with warnings.catch_warnings():  # the same data set: no warning
        warnings.simplefilter("error", CrossLevelWarning)
        assert main(["score", digits, digits, *score]) == 0
