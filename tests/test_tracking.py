"""logger=wandb / logger=mlflow: local files by default, beside the CSV log the run directory joins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from lightning_utilities.core.imports import RequirementCache

from crosslevel.config import apply_overrides, load_preset
from crosslevel.errors import CrossLevelError

TINY = ["epochs=1", "limit_train_batches=2", "width=8", "feature_dim=16", "workers=0", "progress=false", "warmup_epochs=0", "knn_k=10"]


def tiny_run(tmp_path: Path, logger: str) -> Path:
    from crosslevel.training import train

    run_dir, knn = train(apply_overrides(load_preset("digits-cld"), [*TINY, f"logger={logger}", f"out={tmp_path}", f"name={logger}"]))
    assert knn is not None and (run_dir / "metrics.csv").is_file()  # the CSV log is still joined
    return run_dir


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install 'crosslevel[wandb]')")
def test_wandb_writes_an_offline_run_in_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default: offline, no network
    run_dir = tiny_run(tmp_path, "wandb")
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    captured = capfd.readouterr()
    assert "WARNING" not in captured.err  # e.g. W&B's on the anonymous= Lightning passes
    import wandb

    assert wandb.run is None  # finished with the training: its closing lines on stderr, not at exit on stdout
    assert "You can sync this run" in captured.err and "wandb" not in captured.out


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install 'crosslevel[mlflow]')")
def test_mlflow_writes_a_local_file_store_in_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run_dir = tiny_run(tmp_path, "mlflow")
    losses = list((run_dir / "mlruns").glob("*/*/metrics/loss*"))
    assert losses and all(path.read_text().strip() for path in losses)
    assert [path.read_text() for path in (run_dir / "mlruns").glob("*/*/params/cfg/instance")] == ["npid"]


@pytest.mark.parametrize("logger,module", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_is_one_error_naming_the_extra(logger: str, module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crosslevel.tracking import mlflow_logger, wandb_logger

    monkeypatch.setattr(f"lightning.pytorch.loggers.{module}._{module.upper()}_AVAILABLE", RequirementCache(f"{module}>=999"))
    make = wandb_logger if logger == "wandb" else mlflow_logger
    with pytest.raises(CrossLevelError, match=rf"logger={logger} needs: pip install 'crosslevel\[{logger}\]'"):
        make(tmp_path)
