"""``crosslevel export``: the backbone loads into a stock torchvision ResNet and computes the same features."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from crosslevel.cli import main
from crosslevel import plots
from crosslevel.config import apply_overrides, load_preset, save_config
from crosslevel.evaluation.features import Run
from crosslevel.export import cluster_folder
from crosslevel.methods import ContrastiveModule


def make_run(run_dir: Path, preset: str, overrides: list[str], num_train: int = 16, in_channels: int = 3) -> ContrastiveModule:
    """A run directory holding an untrained module's checkpoint (export needs no training)."""
    cfg = apply_overrides(load_preset(preset), ["data=unused", *overrides])
    module = ContrastiveModule(cfg, num_train=num_train, in_channels=in_channels).eval()
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, run_dir / "checkpoints" / "last.ckpt")
    save_config(cfg, run_dir / "config.json")
    return module


def test_export_loads_into_torchvision_resnet18_with_cifar_stem(tmp_path: Path) -> None:
    module = make_run(tmp_path / "run", "cifar10-cld", [])
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "backbone.pth")]) == 0
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "backbone.pth"))  # strict: every key matches
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval()(images), module.backbone(images), atol=1e-6)
    info = json.loads((tmp_path / "backbone.json").read_text())
    assert info["architecture"] == "resnet18" and info["cifar_stem"] and info["feature_dim"] == 512


def test_export_loads_into_torchvision_resnet50(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "cifar10-cld", ["backbone=resnet50"])
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "backbone.pth")]) == 0
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "backbone.pth"))
    assert json.loads((tmp_path / "backbone.json").read_text())["feature_dim"] == 2048


def photos(folder: Path, size: int, colour: bool) -> Path:
    """Six random PNGs under ``folder`` (two in a sub-folder)."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 256, (size, size, 3 if colour else 1), dtype=np.uint8).repeat(1 if colour else 3, axis=2)
        Image.fromarray(pixels).save(folder / ("sub" if i < 2 else ".") / f"{i}.png")
    return folder


def test_cluster_names_thumbnails_and_warns_when_images_do_not_fit_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path / "run", "digits-cld", ["width=8", "feature_dim=16"], num_train=1347, in_channels=1)
    run = Run.open(tmp_path / "run")  # a grey 8×8 model
    sheets: list[list[str]] = []
    monkeypatch.setattr(plots, "contact_sheet", lambda images, title, path, names: sheets.append(names))
    with pytest.warns(UserWarning, match="they are colour, the model's images grey .*; 2.png is 32×32, the model's input 8×8"):
        cluster_folder(run, photos(tmp_path / "colour", 32, colour=True), 2, tmp_path / "colour.csv")
    assert sorted(name for names in sheets for name in names) == ["2.png", "3.png", "4.png", "5.png", "sub/0.png", "sub/1.png"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*do not look like")
        cluster_folder(run, photos(tmp_path / "grey", 8, colour=False), 2, tmp_path / "grey.csv")
