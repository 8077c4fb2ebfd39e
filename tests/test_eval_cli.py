"""Every evaluation / use command end to end on a tiny digits run (one epoch of two batches)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from crosslevel.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    tiny = ["epochs=1", "limit_train_batches=2", "batch_size=64", "width=8", "feature_dim=16", "progress=false"]
    assert main(["train", *tiny, f"out={out}", "name=tiny"]) == 0
    return out / "tiny"


def test_eval_all_prints_a_table_and_writes_json(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "all", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["metric", "feature"]
    result = json.loads((run_dir / "eval_all.json").read_text())
    assert set(result) == {"knn", "linear", "nmi", "retrieval"}
    assert result["linear"]["feature"] == "f" and result["knn"]["feature"] == "f_I"
    assert 0 <= result["nmi"]["nmi"] <= 1 and 0 <= result["retrieval"]["retrieval"] <= 100
    assert result["knn"]["top1"] <= result["knn"]["top5"] and result["linear"]["top1"] > 10  # better than chance
    assert sorted(p.name for p in (run_dir / "features").iterdir()) == [f"{s}-{f}.pt" for s in ("support", "test") for f in ("f", "f_I")]


def test_eval_single_metrics_reuse_the_feature_cache(run_dir: Path) -> None:
    assert main(["eval", "knn", str(run_dir), "--feature", "f_G"]) == 0
    first = json.loads((run_dir / "knn_f_G.json").read_text())
    cache = run_dir / "features" / "support-f_G.pt"
    stamp = cache.stat().st_mtime_ns
    assert main(["eval", "retrieval", str(run_dir), "--feature", "f_G"]) == 0
    assert main(["eval", "knn", str(run_dir), "--feature", "f_G"]) == 0
    assert cache.stat().st_mtime_ns == stamp and json.loads((run_dir / "knn_f_G.json").read_text()) == first
    assert main(["eval", "linear", str(run_dir), "--augmented", "--epochs", "1"]) == 0
    assert json.loads((run_dir / "linear_augmented_f.json").read_text())["protocol"] == "augmented"


def test_eval_semi(run_dir: Path) -> None:
    assert main(["eval", "semi", str(run_dir), "--fraction", "0.05", "--epochs", "1"]) == 0
    result = json.loads((run_dir / "semi_0.05.json").read_text())
    assert result["labelled_images"] == 70  # ceil(0.05 * ~135) for each of the 10 digit classes
    assert 0 <= result["top1"] <= result["top5"] <= 100


def test_score_ranks_runs_with_spearman(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ranking = tmp_path / "ranking.csv"
    args = ["score", str(run_dir), str(run_dir), "--max-images", "150", "--out", str(ranking)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Spearman's rho (score vs kNN top-1, 2 runs): undefined" in printed  # the same run twice ties
    rows = list(csv.DictReader(ranking.open()))
    assert [row["score_rank"] for row in rows] == ["1", "2"]
    score = json.loads((run_dir / "score_f_I.json").read_text())
    assert score["images"] == 150 and score["score"] == pytest.approx(score["nmi"] * score["retrieval"] / 100)


def test_plot_writes_the_three_pngs(run_dir: Path) -> None:
    assert main(["plot", str(run_dir), "--max-points", "150", "--pairs", "60"]) == 0
    for name in ("tsne_f_I.png", "similarity_f_I.png", "training_curves.png"):
        with Image.open(run_dir / "plots" / name) as image:
            assert image.size[0] > 300


def test_plot_curves_only_reads_the_log_alone(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--curves-only needs config.json and metrics.csv only: no checkpoint, no data set."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "metrics.csv"):
        (bare / name).write_bytes((run_dir / name).read_bytes())
    assert main(["plot", str(bare), "--curves-only"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {bare / 'plots' / 'training_curves.png'}"
    assert [p.name for p in (bare / "plots").iterdir()] == ["training_curves.png"]
    stopped = tmp_path / "stopped"  # a run stopped before it joined its logs: the curves from them
    shutil.copytree(run_dir / "logs", stopped / "logs")
    (stopped / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    assert main(["plot", str(stopped), "--curves-only"]) == 0 and (stopped / "plots" / "training_curves.png").is_file()
    assert main(["plot", str(tmp_path / "absent"), "--curves-only"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_embed_and_cluster_a_folder(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    digits = load_digits()
    for i in range(30):
        grey = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / ("sub" if i % 2 else ".") / f"{i:03d}.png")
    assert main(["embed", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "feats.npy")]) == 0
    features = np.load(tmp_path / "feats.npy")
    files = (tmp_path / "feats.txt").read_text().splitlines()
    assert features.shape[0] == len(files) == 30 and np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    capsys.readouterr()
    assert main(["embed", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "feats.v2")]) == 0  # np.save adds .npy
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == f"wrote {tmp_path / 'feats.v2.npy'} (row i = line i of {tmp_path / 'feats.v2.txt'})"
    assert (tmp_path / "feats.v2.npy").is_file() and (tmp_path / "feats.v2.txt").is_file()
    assert main(["cluster", str(run_dir), "--data", str(folder), "--k", "3", "--out", str(tmp_path / "groups.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "groups.csv").open()))
    assert len(rows) == 30 and {row["group"] for row in rows} == {"0", "1", "2"}
    assert sorted(p.name for p in tmp_path.glob("groups_group*.png")) == [f"groups_group{g}.png" for g in range(3)]


def test_embed_cluster_and_export_never_read_the_training_data(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What using the model needs about its input is in the run (data.json), not re-read from the data set."""
    import crosslevel.data.datamodule as datamodule

    info = json.loads((run_dir / "data.json").read_text())
    assert (info["size"], info["channels"], len(info["mean"]), len(info["classes"])) == (8, 1, 1, 10)

    def no_data(*args: object, **keys: object) -> None:
        raise AssertionError("the run's data was loaded")

    monkeypatch.setattr(datamodule, "load_split", no_data)  # every split of a run's data set is read through it
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["embed", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "f.npy")]) == 0
    assert main(["cluster", str(run_dir), "--data", str(folder), "--k", "2", "--out", str(tmp_path / "g.csv")]) == 0
    assert main(["export", str(run_dir), "--out", str(tmp_path / "b.pth")]) == 0


def test_user_errors_exit_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "knn", str(tmp_path)]) == 2
    assert main(["export", str(run_dir), "--out", str(tmp_path / "b.pkl"), "--format", "detectron2"]) == 2
    assert main(["cluster", str(run_dir), "--data", str(tmp_path / "missing"), "--k", "2", "--out", str(tmp_path / "g.csv")]) == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not an image")
    assert main(["embed", str(run_dir), "--data", str(broken), "--out", str(tmp_path / "f.npy")]) == 2
    errors = capsys.readouterr().err
    assert "not a run directory" in errors and "detectron2 needs a standard ImageNet-stem ResNet" in errors and "not a folder" in errors
    assert "cannot decode 1 image(s) in " in errors and "bad.png" in errors
