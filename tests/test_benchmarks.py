"""The benchmark scripts run end to end at a tiny budget (their figures are measured elsewhere)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SCRIPT = BENCHMARKS / "gpu_check.sh"


def throughput_argv(out: Path, *extra: str) -> list[str]:
    return ["--device", "cpu", "--backbone", "smallcnn", "--width", "4", "--batch", "32", "--steps", "2", "--warmup", "1",
            "--train-size", "128", "--precision", "32-true", "--workers", "0", "--json", str(out), *extra]  # fmt: skip


def test_throughput_table_for_npid_and_cld(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.json"
    argv = throughput_argv(out, "--pipeline-batches", "2", "--methods", "npid,cld", "--repeats", "2")
    assert load("throughput").main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["method"] for row in result["rows"]] == ["npid", "cld"]
    cld = result["rows"][1]
    assert cld["images_per_s"] > 0 and 0 < cld["cld_share"] < 1 and cld["device_views_ms"] > 0
    assert len(cld["rounds_ms_per_step"]) == 2 and cld["measured_on"] == "cpu"
    ratio = result["ratios"]["CLD/NPID"]  # one ratio per round, each from the two methods of that round
    assert len(ratio["rounds"]) == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert result["pipeline"]["cpu_views_ms_per_batch"] > 0
    printed = capsys.readouterr().out
    assert "vs NPID" in printed and "CLD/NPID step time: median" in printed


def test_throughput_times_cld_and_views_on_the_training_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``fit`` Lightning's teardown moves the module off its training device (GPU → CPU); here it is
    moved to the meta device instead, so timing on ``module.device`` after ``fit`` would show."""
    teardown = SingleDeviceStrategy.teardown

    def teardown_elsewhere(self: SingleDeviceStrategy) -> None:
        teardown(self)
        self.lightning_module.to("meta")

    monkeypatch.setattr(SingleDeviceStrategy, "teardown", teardown_elsewhere)
    out = tmp_path / "throughput.json"
    assert load("throughput").main(throughput_argv(out, "--pipeline-batches", "0", "--methods", "cld", "--repeats", "1")) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["measured_on"] == "cpu" and row["cld_ms"] > 0 and row["device_views_ms"] > 0


def test_throughput_keeps_rows_written_before_a_method_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    throughput = load("throughput")
    out = tmp_path / "throughput.json"
    measure, on_disk = throughput.measure_method, []

    def failing_cld(method: str, *args: object) -> dict:
        on_disk.append([row["method"] for row in json.loads(out.read_text())["rows"]] if out.exists() else [])
        if method == "cld":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return measure(method, *args)

    throughput.measure_method = failing_cld
    argv = throughput_argv(out, "--pipeline-batches", "0", "--methods", "npid,cld", "--repeats", "2")
    assert throughput.main(argv) == 1
    assert on_disk == [[], ["npid"], ["npid"]]  # written after every measurement; cld not tried again
    result = json.loads(out.read_text())
    assert [row["method"] for row in result["rows"]] == ["npid"] and "illegal memory" in result["failed"]["cld"]
    assert "FAILED cld" in capsys.readouterr().out


def run_gpu_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=BENCHMARKS.parent, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_stops_at_once_without_cuda(tmp_path: Path) -> None:
    result = run_gpu_check(tmp_path, PYTHON=sys.executable)
    assert result.returncode == 1 and "no usable CUDA GPU" in result.stderr and "DEVICE=cpu" in result.stderr
    assert "=== throughput" not in result.stdout


def test_gpu_check_keeps_its_deadline_and_prints_the_summary(tmp_path: Path) -> None:
    """Every step hangs and ignores SIGTERM: the script still ends near TOTAL_S and prints its table."""
    hanging = tmp_path / "python"
    hanging.write_text(f"#!/bin/sh\nif [ \"$1\" = - ]; then exec {sys.executable} \"$@\"; fi\ntrap '' TERM\nexec sleep 300\n")
    hanging.chmod(hanging.stat().st_mode | stat.S_IEXEC)
    started = time.monotonic()
    result = run_gpu_check(tmp_path, PYTHON=str(hanging), DEVICE="cpu", TOTAL_S="24", RESERVE_S="12")
    assert time.monotonic() - started < 24 + 5
    assert "=== device (" in result.stdout and "skipped" in result.stdout  # capped, then no time left for the rest
    assert "GPU check: summary" in result.stdout and "throughput: no result" in result.stdout
    assert (tmp_path / "out" / "summary.txt").is_file()


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


def test_cld_grouping_times_both_groupings_and_the_gather(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grouping.json"
    argv = ["--sizes", "16x8x4,12x6x3", "--repeats", "2", "--gather-batch", "4", "--dim", "3", "--json", str(out)]
    assert load("cld_grouping").main(argv) == 0
    result = json.loads(out.read_text())
    assert [(row["B"], row["k"]) for row in result["grouping"]] == [(16, 4), (12, 3)]
    assert all(row["kmeans_ms"] > 0 and row["ncuts_ms"] > 0 for row in result["grouping"])
    gather = result["gather"]
    assert gather["world"] == 2 and gather["forward_ms"] > 0 and gather["forward_backward_ms"] > 0
    # 4 rows × 2 views × 3 dims × 4 bytes, sent once to the other rank; twice that in the ring all-reduce
    assert gather["bytes_sent_per_rank"] == {"forward_all_gather": 96, "backward_all_reduce": 192}
    assert "ncuts" in capsys.readouterr().out


def test_simclr_cld_study_reads_finished_runs_and_prints_the_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crosslevel.run_dir import SUMMARY_FILE

    study = load("simclr_cld_study")
    figures = {"cifar10-simclr": (40.0, 90.0), "cifar10-simclr-seed1": (38.0, 88.0),
               "cifar10-simclr-cld-cld_weight0.5": (41.5, 91.0), "cifar10-simclr-cld-cld_weight0.5-seed1": (38.5, 87.0)}  # fmt: skip
    for name, (top1, top5) in figures.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / SUMMARY_FILE).write_text(json.dumps({"knn": {"top1": top1, "top5": top5}}))
    argv = ["--data", str(tmp_path), "--out", str(tmp_path), "--cells", "simclr,lambda0.5", "--seeds", "0,1", "--reuse"]
    assert study.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| simclr | λ = 0 (cifar10-simclr) | 0,1 | 40.00 / 38.00 (39.00) | 89.00 | — |" in printed
    assert "| lambda0.5 | cld_weight=0.5 | 0,1 | 41.50 / 38.50 (40.00) | 89.00 | +1.00 |" in printed
    with pytest.raises(SystemExit):
        study.main(["--data", str(tmp_path), "--cells", "lambda7"])
