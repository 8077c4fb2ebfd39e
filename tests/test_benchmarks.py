"""The benchmark scripts run end to end at a tiny budget (their figures are measured elsewhere)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import tarfile
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


def run_gpu_check(tmp_path: Path, script: Path = SCRIPT, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), **env}
    return subprocess.run(["bash", str(script)], cwd=BENCHMARKS.parent, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_stops_at_once_without_cuda(tmp_path: Path) -> None:
    result = run_gpu_check(tmp_path, PYTHON=sys.executable)
    assert result.returncode == 1 and "no usable CUDA GPU" in result.stderr and "DEVICE=cpu" in result.stderr
    assert "=== throughput" not in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_decode_check_stops_at_once_without_cuda(tmp_path: Path) -> None:
    result = run_gpu_check(tmp_path, BENCHMARKS / "gpu_decode_check.sh", PYTHON=sys.executable)
    assert result.returncode == 1 and "no usable CUDA GPU" in result.stderr and "DEVICE=cpu" in result.stderr
    assert "=== make" not in result.stdout and "decode speed: no result" in result.stdout


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


REPRODUCE = BENCHMARKS / "reproduce_cifar10.sh"


def run_reproduce(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPRODUCE)], cwd=BENCHMARKS.parent, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_reproduce_stops_at_once_without_cuda(tmp_path: Path) -> None:
    result = run_reproduce(tmp_path)
    assert result.returncode == 1 and "no usable CUDA GPU" in result.stderr and "DEVICE=cpu" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_reproduce_dry_run_prints_the_paper_table_and_leaves_finished_runs_alone(tmp_path: Path) -> None:
    from conftest import write_cifar10

    tiny = "backbone=smallcnn width=4 feature_dim=16 batch_size=32 num_groups=4 knn_k=5"
    env = {"DEVICE": "cpu", "METHODS": "cld npid-1view", "EPOCHS": "1", "EVAL_EVERY": "1", "SPEED": "", "EXTRA": tiny,
           "DATA_DIR": str(write_cifar10(tmp_path / "data", per_batch=40))}  # fmt: skip
    first = run_reproduce(tmp_path, **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "paper vs crosslevel" in first.stdout
    assert "| CLD | `cifar10-cld` | 1/1 |" in first.stdout and "| NPID | `cifar10-npid-1view` | 1/1 |" in first.stdout
    out = tmp_path / "out"
    with tarfile.open(out / "runs.tar.gz") as bundle:  # one archive: a lent GPU machine returns at most 8 files
        members = set(bundle.getnames())
    assert {"cld/curves.png", "cld/train.log", "npid-1view/summary.json", "npid-1view/metrics.csv"} <= members
    assert sorted(path.name for path in out.iterdir()) == ["reproduce.log", "runs.tar.gz", "table.md"]
    assert "| 86.7 |" in (out / "table.md").read_text() and "| 80.8 |" in (out / "table.md").read_text()
    second = run_reproduce(tmp_path, **env)
    assert "cld: finished earlier" in second.stdout and "crosslevel train" not in second.stdout


@pytest.mark.slow
def test_reproduce_tries_a_failed_run_once_more_with_the_fallback_keys(tmp_path: Path) -> None:
    """A run that fails under SPEED (here: a learning rate that makes the loss non-finite in the first epoch,
    as a CUDA-graph failure would end it) trains again with FALLBACK on top, and the table says so."""
    from conftest import write_cifar10

    tiny = "backbone=smallcnn width=4 feature_dim=16 batch_size=32 num_groups=4 knn_k=5"
    env = {"DEVICE": "cpu", "METHODS": "cld", "EPOCHS": "1", "EVAL_EVERY": "1", "SPEED": "base_lr=1e30", "FALLBACK": "base_lr=0.03",
           "EXTRA": tiny, "TOTAL_S": "240", "POLL_S": "1", "DATA_DIR": str(write_cifar10(tmp_path / "data", per_batch=40))}  # fmt: skip
    result = run_reproduce(tmp_path, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cld: failed (exit 2; last line of its log: crosslevel: error: the loss became non-finite" in result.stdout
    assert "train cld: exit 0, done (with base_lr=0.03 after a failure under SPEED)" in result.stdout
    assert "| CLD | `cifar10-cld` | 1/1 |" in result.stdout
    assert "tried again with base_lr=0.03 after failing under these settings: cld" in (tmp_path / "out" / "table.md").read_text()


FAKE_TRAIN = """#!/usr/bin/env bash
# python, except that `-m crosslevel train` makes a run folder, says which attempt it is, and fails after FAIL_AFTER s
if [ "$1 $2 $3" = "-m crosslevel train" ]; then
  for arg in "$@"; do case $arg in out=*) out=${arg#out=} ;; name=*) name=${arg#name=} ;; esac; done
  mkdir -p "$out/$name" && echo '{"preset": "cifar10-cld", "epochs": 200}' > "$out/$name/config.json"
  echo "attempt with: $*"
  sleep "$FAIL_AFTER"
  echo "crosslevel: error: made to fail"
  exit 2
fi
exec PYTHON "$@"
"""


def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "python"
    path.write_text(FAKE_TRAIN.replace("PYTHON", sys.executable))
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("fail_after,tries", [("0", 2), ("17", 1)])
def test_reproduce_tries_again_once_and_only_while_time_is_left(tmp_path: Path, fail_after: str, tries: int) -> None:
    """A run failing at once is tried again once (the second failure ends it); one failing within 10 s of
    the deadline is not, and its folder stays where it is."""
    from conftest import write_cifar10

    env = {"DEVICE": "cpu", "METHODS": "cld", "TOTAL_S": "30", "RESERVE_S": "5", "POLL_S": "1", "FAIL_AFTER": fail_after,
           "SPEED": "cuda_graphs=true", "PYTHON": fake_python(tmp_path), "DATA_DIR": str(write_cifar10(tmp_path / "data"))}  # fmt: skip
    result = run_reproduce(tmp_path, **env)
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as bundle:
        train_log = bundle.extractfile("cld/train.log").read().decode()  # type: ignore[union-attr]
    assert train_log.count("attempt with:") == tries, result.stdout
    if tries == 2:
        assert "cuda_graphs=true" in train_log and train_log.rstrip().splitlines()[-2].endswith("cuda_graphs=false compile=true")
        assert "train cld: exit 2, failed" in result.stdout and "(with cuda_graphs=false compile=true after a failure under SPEED)" in result.stdout
        assert (tmp_path / "runs" / "cld.failed" / "config.json").is_file()  # the first attempt's folder, set aside
    else:
        assert "cld: failed (exit 2), no time left to try again" in result.stdout
        assert (tmp_path / "runs" / "cld" / "config.json").is_file() and not (tmp_path / "runs" / "cld.failed").exists()
        assert "tried again" not in (tmp_path / "out" / "table.md").read_text()


def test_pace_measures_a_run_started_again_afresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new attempt (a second log folder: resumed, or retried) compiles again: its old records go."""
    run = tmp_path / "cld"
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_0" / "metrics.csv").write_text("epoch,images_per_s\n" + "".join(f"{e},100\n" for e in range(6)))
    state = tmp_path / "pace.json"
    state.write_text(json.dumps({"records": {str(run): [[0.0, 0], [50.0, 3], [56.0, 6]]}, "attempts": {str(run): 1}}))
    assert load("pace").main([str(state), str(time.time() + 60.0), "200", str(run)]) == 0
    assert [done for _, done in json.loads(state.read_text())["records"][str(run)]] == [0, 3, 6]  # same attempt: kept
    (run / "logs" / "version_1").mkdir()
    assert load("pace").main([str(state), str(time.time() + 60.0), "200", str(run)]) == 0
    saved = json.loads(state.read_text())
    assert [done for _, done in saved["records"][str(run)]] == [6] and saved["attempts"][str(run)] == 2
    assert "pace not measured yet" in capsys.readouterr().out


def test_pace_counts_an_epoch_trained_again_after_a_resume_once(tmp_path: Path) -> None:
    run = tmp_path / "cld"
    for version, epochs in ((0, range(0, 25)), (1, range(20, 30))):  # resumed from the checkpoint of epoch 20
        (run / "logs" / f"version_{version}").mkdir(parents=True)
        rows = "".join(f"{epoch},100\n" for epoch in epochs)
        (run / "logs" / f"version_{version}" / "metrics.csv").write_text("epoch,images_per_s\n" + rows)
    assert load("pace").epochs_logged(run) == 30


def test_paper_table_reads_an_unfinished_run_from_its_logs(tmp_path: Path) -> None:
    run = tmp_path / "cld"
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": "cifar10-cld", "epochs": 200}))
    (run / "data.json").write_text(json.dumps({"num_train": 50000}))
    rows = "epoch,images_per_s,knn_top1\n0,25000,,\n9,,80.5\n19,,86.25\n29,,86.0\n"  # Lightning counts epochs from 0
    (run / "logs" / "version_0" / "metrics.csv").write_text(rows.replace(",,\n", ",\n"))
    (row,) = [load("paper_table").row(run)]
    assert row["epochs"] == "30/200" and row["final"] == 86.0 and (row["best"], row["best_epoch"]) == (86.25, 20)
    assert row["method"] == "CLD" and row["paper"] == 86.7 and row["median_epoch_s"] == pytest.approx(2.0)
    assert "| CLD | `cifar10-cld` | 30/200 | 86.00 | 86.25 (20) | 86.7 | -0.70 | -0.45 | 2.00 |" in load("paper_table").table([row])
    (run / "metrics.csv").write_text("epoch,knn_top1\n10,80.5\n")  # joined when it finished 10 epochs, then trained on
    os.utime(run / "metrics.csv", (0, 0))
    assert load("paper_table").row(run)["epochs"] == "30/200" and "30,,86.0" in (run / "metrics.csv").read_text()


def test_pace_is_measured_past_the_compiling_epoch_and_projects_the_end() -> None:
    project = load("pace").project
    assert project([(0.0, 0), (50.0, 1), (52.0, 2), (54.0, 3)], 10, 5.0) == (None, None)  # 2 measured epochs: too few
    pace, ends = project([(0.0, 0), (50.0, 1), (52.0, 2), (54.0, 3), (56.0, 4)], 10, 5.0)  # the first epoch compiled
    assert pace == pytest.approx(2.0) and ends == pytest.approx(56.0 + 6 * 2.0 + 5.0)
    resumed = [(0.0, 50), (40.0, 51), (43.0, 52), (46.0, 53), (49.0, 54)]  # a resumed run compiles again
    assert project(resumed, 60, 0.0) == (pytest.approx(3.0), pytest.approx(49.0 + 6 * 3.0))
    assert project([(0.0, 0), (50.0, 1), (54.0, 5), (60.0, 6)], 10, 0.0) == (None, None)  # 2 intervals: too few to judge


def test_pace_leaves_out_the_stall_of_the_first_knn_compiling() -> None:
    """Records every 15 s of a 1.5 s/epoch run whose epoch-10 kNN compiles for 30 s: the pace stays 1.5 s, not the 2.25 s
    of the whole span; and polls about as long as an epoch (12 s epochs, a poll every 15 s) give the pace, not the poll."""
    records = [(0.0, 0), (40.0, 1), (55.0, 11), (100.0, 21), (115.0, 31), (130.0, 41)]
    pace, ends = load("pace").project(records, 200, 0.0)
    assert pace == pytest.approx(1.5) and ends == pytest.approx(130.0 + 159 * 1.5)
    polls = [(30.0 + 15 * k, (15 * k) // 12 + 1) for k in range(41)]  # epoch 1 ends at 30 s (compiling), then one every 12 s
    changes = [polls[0]] + [record for before, record in zip(polls, polls[1:]) if record[1] != before[1]]
    assert load("pace").project([(0.0, 0), *changes], 200, 0.0)[0] == pytest.approx(12.0, rel=0.05)


def test_pace_stops_the_least_important_run_when_one_would_be_late() -> None:
    triage = load("pace").triage
    steady = lambda pace: [[0.0, 0], [30.0, 1], [30.0 + pace, 2], [30.0 + 2 * pace, 3], [30.0 + 3 * pace, 4]]  # noqa: E731
    state = {"records": {"cld": steady(2.0), "npid": steady(2.0), "moco": steady(1.0)}}
    runs = ["cld", "npid", "moco"]
    fits, stop = triage(state, runs, 100, deadline=300.0, now=40.0, final_s=10.0, settle_s=60.0)
    assert stop is None and [p.ends_at for p in fits] == pytest.approx([36 + 96 * 2 + 10, 36 + 96 * 2 + 10, 33 + 96 + 10])
    late, stop = triage(state, runs, 100, deadline=200.0, now=40.0, final_s=10.0, settle_s=60.0)
    assert stop == "moco"  # CLD would be late: the last in the order makes room, though it would itself end in time
    assert triage({**state, "stopped_at": 0.0}, runs, 100, 200.0, 40.0, 10.0, 60.0)[1] is None  # settling after a stop
    assert triage(state, ["cld"], 100, 200.0, 40.0, 10.0, 60.0)[1] is None  # never the last run
    unmeasured = {"records": {"cld": [[0.0, 0]], "npid": [[0.0, 0]]}}
    assert triage(unmeasured, ["cld", "npid"], 100, 1.0, 40.0, 10.0, 60.0)[1] is None  # no pace, no verdict


def test_pace_never_counts_fewer_epochs_than_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A metrics.csv read while Lightning rewrites it (a new column) can look shorter: the count stays."""
    run = tmp_path / "cld"
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_0" / "metrics.csv").write_text("epoch,images_per_s\n0,100\n")  # 1 epoch, read mid-rewrite
    state = tmp_path / "pace.json"
    state.write_text(json.dumps({"records": {str(run): [[0.0, 0], [50.0, 5]]}}))
    assert load("pace").main([str(state), str(time.time() + 60.0), "200", str(run)]) == 0
    assert json.loads(state.read_text())["records"][str(run)] == [[0.0, 0], [50.0, 5]]  # no record of 1 after 5


def test_throughput_median_row_keeps_the_cudagraph_skips_of_every_round() -> None:
    rounds = [{"ms_per_step": 30.0, "cudagraph_skips": ["skipping cudagraphs due to cpu device"]},  # round 1 compiled
              {"ms_per_step": 10.0, "cudagraph_skips": []}, {"ms_per_step": 11.0, "cudagraph_skips": []}]  # fmt: skip
    row = load("throughput").median_row(rounds)
    assert row["ms_per_step"] == 11.0 and row["cudagraph_skips"] == ["skipping cudagraphs due to cpu device"]


def test_pace_command_records_the_logs_and_measures_anew_after_a_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pace = load("pace")
    runs = [tmp_path / name for name in ("cld", "moco")]
    for run in runs:
        (run / "logs" / "version_0").mkdir(parents=True)
        rows = "".join(f"{epoch},,2.0\n{epoch},100,\n" for epoch in range(4))  # a step row, then the epoch-end row
        (run / "logs" / "version_0" / "metrics.csv").write_text("epoch,images_per_s,loss\n" + rows)
    assert pace.epochs_logged(runs[0]) == 4
    now = time.time()
    state = tmp_path / "pace.json"
    history = [[now - 30.0, 0], [now - 9.0, 1], [now - 6.0, 2], [now - 3.0, 3]]  # 3 s/epoch after compiling; now 4
    state.write_text(json.dumps({"records": {str(run): history for run in runs}}))
    assert pace.main([str(state), str(now + 60.0), "200", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "cld: 4/200 epochs, 3.00 s/epoch" in out and "late" in out and out.splitlines()[-1] == f"stop: {runs[1]}"
    saved = json.loads(state.read_text())
    assert saved["stopped_at"] >= now and saved["records"] == {str(runs[0]): [[pytest.approx(time.time(), abs=5), 4]]}


def test_decode_speed_makes_a_jpeg_folder_and_dry_runs_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The decode=gpu measurement at a tiny budget: the GPU-decode rows run with the decode on the CPU and say so."""
    import io

    import numpy as np
    from PIL import Image

    blobs = []
    for seed in range(30):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    packed = tmp_path / "packed.npz"  # cifar_pack.py's format
    np.savez(packed, blob=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]),
             labels=np.zeros(30, np.int16), splits=np.zeros(30, np.int8), classes=np.array(["a"]))  # fmt: skip
    speed, folder, out = load("decode_speed"), tmp_path / "in100", tmp_path / "decode_speed.json"
    assert speed.main(["make", str(packed), str(folder), "--per-class", "1", "--width", "48", "--height", "40"]) == 0
    assert len(list(folder.glob("train/*/*.jpg"))) == 100 and Image.open(next(folder.glob("train/*/*.jpg"))).size == (48, 40)
    argv = ["measure", str(folder), "--workers", "0", "--seconds", "1", "--warmup", "1", "--steps", "1", "--precision", "32-true",
            "--json", str(out), "--set", "backbone=smallcnn", "width=4", "image_size=32", "batch_size=8"]  # fmt: skip
    assert speed.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    agreement = rows.pop("agreement_torchvision")  # the CPU decode against itself: the same pixels
    assert agreement["images"] == 32 and agreement["mismatched_decode_ahead"] == agreement["mismatched_current_stream"] == 0
    assert agreement["worst_mean_abs_decode_ahead"] == agreement["worst_mean_abs_current_stream"] == 0.0
    assert list(rows) == ["a_pil_data_path", "b_gpu_decode_data_path", "c_step_fed_by_pil", "d_step_fed_by_gpu_decode", "e_step_from_gpu_memory"]
    assert all(row["images_per_s"] > 0 for row in rows.values())
    assert rows["b_gpu_decode_data_path"]["note"].startswith("not measured (CUDA only)") and "note" not in rows["c_step_fed_by_pil"]
    printed = capsys.readouterr().out
    assert "100 JPEGs, 100 classes, 48x40" in printed and "target (b) >= 1.5 x (e): not measured (CUDA only)" in printed
    assert speed.main(["table", str(out)]) == 0


def test_decode_speed_table_judges_the_target_from_measured_rows() -> None:
    rows = {"a_pil_data_path": {"images_per_s": 400.0}, "b_gpu_decode_data_path": {"images_per_s": 3000.0},
            "c_step_fed_by_pil": {"images_per_s": 380.0}, "d_step_fed_by_gpu_decode": {"note": "FAILED: RuntimeError: x"},
            "e_step_from_gpu_memory": {"images_per_s": 1500.0}}  # fmt: skip
    result = {"settings": {"preset": "imagenet100-cldm", "set": [], "workers": 8, "precision": "bf16-mixed"},
              "machine": {"device": "H200", "cpu": "x", "torch": "2", "date": "now"}, "rows": rows}  # fmt: skip
    printed = load("decode_speed").table(result)
    assert "target (b) >= 1.5 x (e): 2.00 x, met\nas multiples of (e): (a) 0.27, (c) 0.25" in printed
    assert "not measured  (FAILED: RuntimeError: x)" in printed and "(b2) gpu_decoder=nvimgcodec: not measured" in printed
    rows["b_gpu_decode_data_path"]["images_per_s"] = 2000.0
    assert "1.33 x, MISSED" in load("decode_speed").table(result)
    rows["b2_nvimgcodec_data_path"] = {"images_per_s": 6000.0, "decode_ms_per_batch": 9.5, "decode_and_views_ms_per_batch": 20.0}
    rows["d2_step_fed_by_nvimgcodec"] = {"images_per_s": 1350.0}
    printed = load("decode_speed").table(result)
    assert "target (b2) >= 1.5 x (e): 4.00 x, met" in printed and "(d2) 0.90" in printed and "decode 9.5 ms" in printed
    rows["agreement_nvimgcodec"] = {"images": 256, "worst_mean_abs_current_stream": 41.0, "worst_mean_abs_decode_ahead": 0.8,
                                    "mismatched_current_stream": 3, "mismatched_decode_ahead": 0}  # fmt: skip
    assert ("GPU decode (nvimgcodec) against the CPU decode, worst image of 256: decoded ahead as in training 0.80 levels, ok; "
            "on a busy stream 41.00 levels, MISMATCH: 3 image(s) > 8 off") in load("decode_speed").table(result)


def test_shards_packs_reads_and_streams_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("webdataset", reason="webdataset is not installed (pip install 'crosslevel[shards]')")
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "images", per_class=8)
    argv = [str(folder), "--out", str(tmp_path / "packed"), "--shard-size", "5", "--world", "2", "--workers", "0", "--batch", "4"]
    assert load("shards").main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stream_images"] == 12  # rank 0 of 2: 24 // 2 images, whole batches of 4
    assert result["shard_bytes_per_image"] > result["image_bytes_per_image"] > 0 and result["read_images_per_s"] > 0


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


def test_host_overhead_measures_logging_test_batches_and_a_checkpoint_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "host.json"
    assert load("host_overhead").main(["--calls", "20", "--images", "300", "--checkpoint-mb", "2", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["log_us_per_call"] > 0 and result["result_metric_to_us"] > 0 and len(result["checkpoint_write_s"]) == 2  # no timing compared
    assert result["image_by_image_s"] > 0 and result["whole_batches_s"] > 0
    assert "self.log:" in capsys.readouterr().out
