"""The benchmark scripts run end to end at a tiny budget (their figures are measured elsewhere)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_throughput_table_for_npid_and_cld(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.json"
    argv = ["--device", "cpu", "--backbone", "smallcnn", "--width", "4", "--batch", "32", "--steps", "2", "--warmup", "1",
            "--train-size", "128", "--precision", "32-true", "--workers", "0", "--pipeline-batches", "2",
            "--methods", "npid,cld", "--json", str(out)]  # fmt: skip
    assert load("throughput").main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["method"] for row in result["rows"]] == ["npid", "cld"]
    cld = result["rows"][1]
    assert cld["images_per_s"] > 0 and 0 < cld["cld_share"] < 1 and cld["device_views_ms"] > 0
    assert result["pipeline"]["cpu_views_ms_per_batch"] > 0
    assert "vs NPID" in capsys.readouterr().out


def test_accuracy_runs_digits_and_names_what_it_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "accuracy.json"
    argv = ["--protocols", "digits,paper-cifar10", "--methods", "cld", "--epochs", "1", "--out", str(tmp_path / "runs"),
            "--set", "progress=false", "--json", str(out)]  # fmt: skip
    assert load("accuracy").main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["protocol"] == "digits" and row["method"] == "cld" and 0 <= row["top1"] <= 100
    assert "--gpu-scale" in result["skipped"]["paper-cifar10"]
    assert "kNN top-1" in capsys.readouterr().out
