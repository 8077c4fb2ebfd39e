"""End to end through the CLI on the built-in digits: run dir, config, checkpoint, metrics, kNN, resume."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from crosslevel.cli import main

FAST = ["batch_size=64", "width=8", "feature_dim=16", "limit_train_batches=3", "progress=false"]


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "train", *FAST, "epochs=1", f"out={tmp_path}", "name=run")
    assert code == 0
    run = tmp_path / "run"
    assert "kNN top-1:" in out and "top-5:" in out
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "digits-cld" and config["epochs"] == 1 and config["width"] == 8
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert (run / "logs" / "version_0" / "metrics.csv").is_file()
    assert any(r.get("knn_top1") for r in rows) and any(r.get("loss_cld") for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["knn"]["top1"] <= 100 and summary["epochs"] == 1

    code, out, _ = run_cli(capsys, "eval", "knn", str(run))
    assert code == 0 and f"{summary['knn']['top1']:.2f}%" in out
    assert json.loads((run / "knn_f_I.json").read_text())["top1"] == pytest.approx(summary["knn"]["top1"])

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 3
    code, out, _ = run_cli(capsys, "train", f"resume={run}", "epochs=2")
    assert code == 0, out
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 6
    assert not torch.equal(resumed["state_dict"]["branch.bank.memory"], checkpoint["state_dict"]["branch.bank.memory"])
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    merged = list(csv.DictReader(open(run / "metrics.csv")))
    assert {r["epoch"] for r in merged if r.get("loss_epoch")} == {"1", "2"}  # the first attempt's log is kept


def test_train_with_normalised_cuts_grouping(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "train", *FAST, "epochs=1", "grouping=ncuts", "ncuts_eigenvectors=8", f"out={tmp_path}", "name=ncuts")
    assert code == 0 and "kNN top-1:" in out
    assert json.loads((tmp_path / "ncuts" / "config.json").read_text())["grouping"] == "ncuts"
    losses = [float(r["loss_cld"]) for r in csv.DictReader(open(tmp_path / "ncuts" / "metrics.csv")) if r.get("loss_cld")]
    assert losses and all(0 < loss < 20 for loss in losses)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--config", "nope"], "unknown preset 'nope'"),
        (["train", "colour=red"], "unknown config key 'colour'"),
        (["train", "epochs=ten"], "'epochs' expects a int"),
        (["train", "num_groups=128"], "must be smaller than the per-device batch"),
        (["train", "--config", "cifar10-cld", "--data", "/no/such/path"], "data path does not exist: /no/such/path"),
        (["train", "--config", "cifar10-cld"], "needs a path"),
        (["train", "--data", "/tmp/images"], "dataset=digits is built in and reads no path"),
        (["train", "resume=/no/run"], "no checkpoint to resume from"),
        (["eval", "knn", "/no/run"], "is not a run directory"),
        (["train", "augment=cifar"], "augment=cifar needs colour images"),
    ],
)
def test_bad_input_is_one_clear_message(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["score", "RUN", "--max-images", "1"], ["plot", "RUN", "--max-points", "0"], ["plot", "RUN", "--pairs", "1"],
        ["eval", "semi", "RUN", "--fraction", "0.1", "--epochs", "0"], ["eval", "linear", "RUN", "--weight-decay", "-1"],
        ["eval", "all", "RUN", "--weight-decay", "nan"],
    ],
)  # fmt: skip
def test_bad_counts_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture) -> None:
    from crosslevel.cli import parse

    with pytest.raises(SystemExit) as stop:
        parse(args)
    assert stop.value.code == 2 and "must be at least" in capsys.readouterr().err


def test_damaged_test_split_is_an_error_not_silently_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import write_cifar10

    root = write_cifar10(tmp_path / "data", per_batch=40)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    code, _, err = run_cli(capsys, "train", "--config", "cifar10-npid", "--data", str(root), *FAST, "batch_size=32", f"out={tmp_path}")
    assert code == 2 and "cannot read CIFAR file" in err and "test_batch" in err


def test_resume_into_another_queue_size_leaves_the_run_untouched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    moco = ["instance=moco", "queue_size=128", "epochs=1", f"out={tmp_path}", "name=moco"]
    code, _, _ = run_cli(capsys, "train", *FAST, *moco)
    assert code == 0
    config = (tmp_path / "moco" / "config.json").read_text()
    code, _, err = run_cli(capsys, "train", f"resume={tmp_path / 'moco'}", "queue_size=256", "epochs=2")
    assert code == 2 and "queue_size=128" in err
    assert (tmp_path / "moco" / "config.json").read_text() == config


def test_overrides_may_surround_options() -> None:
    from crosslevel.cli import parse

    args = parse(["train", "--config", "cifar10-cld", "epochs=3", "--data", "/d", "width=8", "seed=1"])
    assert args.config == "cifar10-cld" and args.data == "/d"
    assert args.overrides == ["epochs=3", "width=8", "seed=1"]
    with pytest.raises(SystemExit):
        parse(["train", "--colour", "red"])


def test_presets_and_help_keys(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0 and "cifar10-cld" in out and "digits-npid" in out
    code, out, _ = run_cli(capsys, "train", "--help-keys")
    assert code == 0 and "num_groups" in out and "cld_weight" in out


def test_version_from_the_installed_metadata_else_the_source(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import crosslevel

    def printed() -> str:
        with pytest.raises(SystemExit) as stop:
            main(["--version"])
        assert stop.value.code == 0
        return capsys.readouterr().out

    assert printed() == f"crosslevel {metadata.version('crosslevel')}\n"

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert printed() == f"crosslevel {crosslevel.__version__}\n"


def test_console_entry_point_exit_code() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crosslevel", "train", "epochs=x"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "crosslevel: error: config key 'epochs' expects a int, got 'x'" in result.stderr


def test_runs_table_and_show(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(capsys, "train", *FAST, "epochs=1", f"out={tmp_path}", "name=done")[0] == 0
    shutil.copytree(tmp_path / "done", tmp_path / "stopped")  # asked for 3 epochs, has 1: interrupted
    config = json.loads((tmp_path / "stopped" / "config.json").read_text())
    (tmp_path / "stopped" / "config.json").write_text(json.dumps({**config, "epochs": 3, "instance": "moco", "queue_size": 4096}))
    (tmp_path / "stopped" / "summary.json").unlink()
    shutil.copytree(tmp_path / "stopped", tmp_path / "broken")
    shutil.rmtree(tmp_path / "broken" / "checkpoints")  # no checkpoint: failed
    (tmp_path / "notes").mkdir()  # not a run: left out

    code, out, _ = run_cli(capsys, "runs", str(tmp_path), "--sort", "name")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["name", "preset", "method", "data", "epochs", "knn_top1", "best_top1", "train_s", "status"]
    assert [line.split()[0] for line in lines] == ["broken", "done", "stopped"]
    broken, done, stopped = (line.split() for line in lines)
    assert done[1:5] == ["digits-cld", "cld", "digits", "1/1"] and done[-1] == "finished" and done[5].endswith("%")
    assert stopped[2:5] == ["cldm", "digits", "1/3"] and stopped[-1] == "interrupted"
    assert stopped[5] == done[5] and stopped[6] == done[6]  # no summary: the kNN its logs hold
    assert broken[4] == "0/3" and broken[-1] == "failed"

    code, out, _ = run_cli(capsys, "show", str(tmp_path / "done"))
    assert code == 0 and "status: finished (1/1 epochs)" in out
    assert "width = 8" in out and "epochs = 1" in out and "knn:" in out and "batch_size = 64" in out
    code, out, _ = run_cli(capsys, "show", str(tmp_path / "stopped"))
    assert code == 0 and "results: none yet (no summary.json)" in out and "kNN logged at epoch 1: top-1 " in out
    assert run_cli(capsys, "runs", str(tmp_path / "nowhere"))[0] == 2


def test_a_digits_run_saved_with_the_data_path_it_ignored_still_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before a data path for dataset=digits was an error, such a run saved it (unused)."""
    assert run_cli(capsys, "train", *FAST, "epochs=1", f"out={tmp_path}", "name=old")[0] == 0
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**config, "data": "/some/ignored/path"}))
    assert run_cli(capsys, "train", f"resume={tmp_path / 'old'}", "epochs=2")[0] == 0


def test_resume_keeps_the_saved_config_and_refuses_another_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(capsys, "train", *FAST, "epochs=1", f"out={tmp_path}", "name=run")[0] == 0
    run = tmp_path / "run"
    for preset, differing in (("cifar10-cld", "dataset"), ("digits-npid", "cld_weight")):  # one failed, one was ignored
        code, _, err = run_cli(capsys, "train", "--config", preset, f"resume={run}", "epochs=2")
        assert code == 2 and err.count("\n") == 1
        assert f"continues a run of preset digits-cld with its saved config, so --config {preset} would be ignored" in err
        assert differing in err.split("differ from the run's: ")[1]
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert run_cli(capsys, "train", "--config", "digits-cld", f"resume={run}", "epochs=2")[0] == 0  # the run's own preset
    assert run_cli(capsys, "train", f"resume={run}", "epochs=3")[0] == 0
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["width"] == 8  # the override on top of the saved config, not the preset's 32
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_epochs_count_from_1_in_summary_metrics_and_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from crosslevel.plots import read_metrics

    code, out, _ = run_cli(capsys, "train", *FAST, "epochs=2", "eval_every=0", f"out={tmp_path}", "name=run")
    assert code == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["knn_best"]["epoch"] == 2  # kNN only after the last epoch
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {row["epoch"] for row in rows} == {"1", "2"} and [row["epoch"] for row in rows if row["knn_top1"]] == ["2"]
    assert "at epoch 2" in out.splitlines()[-1]
    assert "knn_best: epoch=2 " in run_cli(capsys, "show", str(run))[1]
    assert " 2/2 " in run_cli(capsys, "runs", str(tmp_path))[1]

    old = tmp_path / "old.csv"  # a run trained before: Lightning's count from 0, read the same
    with open(old, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "epoch": str(int(row["epoch"]) - 1)} for row in rows)
    assert read_metrics(old) == read_metrics(run / "metrics.csv") and read_metrics(old)["knn_top1"][0][0] == 2


def test_own_warnings_are_one_line_on_stderr(tmp_path: Path) -> None:
    args = [*FAST, "limit_train_batches=1", "epochs=1", "warmup_epochs=1", f"out={tmp_path}", "name=w"]
    result = subprocess.run([sys.executable, "-m", "crosslevel", "train", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "crosslevel: warning: warmup_epochs=1 >= epochs=1: the learning rate never reaches base_lr" in result.stderr.splitlines()
    assert "UserWarning" not in result.stderr and "warn(" not in result.stderr

    library = "from crosslevel.errors import warn; warn('x')"  # outside the command: a normal Python warning
    result = subprocess.run([sys.executable, "-c", library], capture_output=True, text=True, timeout=60)
    assert "CrossLevelWarning: x" in result.stderr and "crosslevel: warning" not in result.stderr


def test_a_broken_pipe_other_than_stdout_is_an_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Only stdout's reader leaving is a quiet exit 0 (tests/test_cli_output.py); a pipe the command itself used is one error."""
    from crosslevel import cli

    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_presets", broken)
    code, _, err = run_cli(capsys, "presets")
    assert code == 2 and err == "crosslevel: error: a pipe: Broken pipe\n"
