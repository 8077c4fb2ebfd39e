"""``crosslevel plot`` end to end: a run whose images are decoded on the fly (in_memory=false); the split it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import write_image_folder
from crosslevel.cli import main
from crosslevel.data import folders

TINY = ["epochs=1", "limit_train_batches=1", "batch_size=4", "num_groups=2", "width=4", "feature_dim=8",
        "backbone=smallcnn", "progress=false", "workers=0", "knn_k=3"]  # fmt: skip


def test_plot_a_run_decoded_on_the_fly(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", classes=3, per_class=4, size=20)
    lazy = ["dataset=folder", f"data={data}", "in_memory=false", "image_size=16", f"out={tmp_path}", "name=lazy"]
    assert main(["train", *TINY, *lazy]) == 0
    assert main(["plot", str(tmp_path / "lazy"), "--max-points", "12", "--pairs", "8"]) == 0
    for name in ("tsne_f_I.png", "similarity_f_I.png", "training_curves.png"):
        with Image.open(tmp_path / "lazy" / "plots" / name) as image:
            assert image.format == "PNG"


def test_plot_decodes_the_test_split_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_image_folder(tmp_path / "data", classes=3, per_class=4, size=16)
    assert main(["train", *TINY, "dataset=folder", f"data={data}", f"out={tmp_path}", "name=run"]) == 0
    monkeypatch.setenv("CROSSLEVEL_CACHE_DIR", str(tmp_path / "empty-cache"))  # nothing decoded yet
    decoded: list[Path] = []
    original = folders._decode
    monkeypatch.setattr(folders, "_decode", lambda path, size: decoded.append(path) or original(path, size))
    assert main(["plot", str(tmp_path / "run"), "--max-points", "12", "--pairs", "8"]) == 0
    assert sorted(decoded) == sorted((data / "test").rglob("*.png"))
