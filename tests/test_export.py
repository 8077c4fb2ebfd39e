"""``crosslevel export``: every run exports; ``load_backbone``, torchvision and detectron2 read the files with the same weights."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from crosslevel import load_backbone, plots
from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset, save_config
from crosslevel.errors import CrossLevelError
from crosslevel.evaluation.features import Run
from crosslevel.export import cluster_folder, export_backbone
from crosslevel.methods import ContrastiveModule
from crosslevel.models.exported import detectron2_key
from crosslevel.run_dir import DataInfo, open_run, save_data_info


def make_run(run_dir: Path, preset: str, overrides: list[str], num_train: int = 16, in_channels: int = 3, side: int = 32) -> ContrastiveModule:
    """A run directory holding an untrained module's checkpoint and a data.json (export needs no training)."""
    base = load_preset(preset)
    cfg = apply_overrides(base, [*([] if base.dataset == "digits" else ["data=unused"]), *overrides])  # digits reads no path
    module = ContrastiveModule(cfg, num_train=num_train, in_channels=in_channels).eval()
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, run_dir / "checkpoints" / "last.ckpt")
    save_config(cfg, run_dir / "config.json")
    save_data_info(run_dir, DataInfo(side, in_channels, (0.5,) * in_channels, (0.25,) * in_channels, (), num_train))
    return module


def train_digits(out: Path, name: str, overrides: list[str]) -> Path:
    """A tiny trained digits run (one epoch of two batches)."""
    tiny = ["epochs=1", "limit_train_batches=2", "batch_size=64", "feature_dim=16", "progress=false"]
    assert main(["train", *tiny, *overrides, f"out={out}", f"name={name}"]) == 0
    return out / name


def export(run_dir: Path, out: Path, *options: str) -> None:
    assert main(["export", str(run_dir), "--out", str(out), *options]) == 0


@pytest.mark.parametrize("overrides", [["width=8"], ["backbone=resnet18_cifar", "width=8"]], ids=["smallcnn", "resnet18_cifar-width8"])
def test_every_run_exports_and_load_backbone_reproduces_its_pooled_features(tmp_path: Path, overrides: list[str]) -> None:
    run_dir = train_digits(tmp_path, "tiny", overrides)
    export(run_dir, tmp_path / "backbone.pth")
    assert sorted(path.name for path in tmp_path.glob("backbone*")) == ["backbone.pth"]  # no torchvision file: not a standard ResNet
    model = load_backbone(tmp_path / "backbone.pth")
    assert not model.training
    assert model.preprocessing["channels"] == 1 and model.preprocessing["image_size"] == 8 and len(model.preprocessing["std"]) == 1
    _, module, _ = open_run(run_dir)
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(images), module.backbone(images), atol=1e-6)
    assert model(images).shape == (4, torch.load(tmp_path / "backbone.pth")["feature_dim"])


def cifar_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem and no classifier, as the README builds it."""
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def test_a_width64_run_also_writes_the_torchvision_state_dict(tmp_path: Path) -> None:
    module = make_run(tmp_path / "run", "cifar10-cld", [])
    export(tmp_path / "run", tmp_path / "backbone.pth")
    model = cifar_resnet18()
    model.load_state_dict(torch.load(tmp_path / "backbone_torchvision.pth"))  # strict: every key matches
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = load_backbone(tmp_path / "backbone.pth")(images)
        assert torch.allclose(model.eval()(images), features, atol=1e-5)
        assert torch.allclose(module.backbone(images), features, atol=1e-5)
    assert features.shape == (2, 512)


def test_resnet50_exports_for_torchvision_and_detectron2(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "cifar10-cld", ["backbone=resnet50"])
    export(tmp_path / "run", tmp_path / "backbone.pth")
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "backbone_torchvision.pth"))
    export(tmp_path / "run", tmp_path / "backbone.pkl", "--format", "detectron2")
    with open(tmp_path / "backbone.pkl", "rb") as handle:
        saved = pickle.load(handle)
    assert saved["__author__"] == "crosslevel" and saved["matching_heuristics"] is True
    renamed = {detectron2_key(key): value for key, value in model.state_dict().items()}
    assert len(renamed) == len(saved["model"]) == len(model.state_dict())
    assert {key: value.shape for key, value in saved["model"].items()} == {key: tuple(value.shape) for key, value in renamed.items()}
    assert all(key.startswith(("stem.conv1.", "res2.", "res3.", "res4.", "res5.")) for key in saved["model"])
    assert not [key for key in saved["model"] if "layer" in key or "bn" in key or "downsample" in key]
    assert {"stem.conv1.weight", "stem.conv1.norm.running_mean", "res2.0.shortcut.weight", "res2.0.shortcut.norm.bias", "res5.2.conv3.norm.weight"} <= set(saved["model"])


def test_exports_other_tools_cannot_read_are_refused_clearly(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "cifar10-cld", [])
    with pytest.raises(CrossLevelError, match="detectron2 needs a standard ImageNet-stem ResNet"):
        export_backbone(tmp_path / "run", tmp_path / "backbone.pkl", "detectron2")
    export(tmp_path / "run", tmp_path / "backbone.pth")
    (tmp_path / "notes.txt").write_text("not weights")
    for path in (tmp_path / "backbone_torchvision.pth", tmp_path / "notes.txt", tmp_path / "missing.pth"):
        with pytest.raises(CrossLevelError, match="not a backbone written by|no such file"):
            load_backbone(path)
    saved = torch.load(tmp_path / "backbone.pth")
    torch.save({**saved, "state_dict": {}}, tmp_path / "damaged.pth")
    with pytest.raises(CrossLevelError, match="damaged backbone export: Missing key"):
        load_backbone(tmp_path / "damaged.pth")


def photos(folder: Path, size: int, colour: bool) -> Path:
    """Six random PNGs under ``folder`` (two in a sub-folder)."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 256, (size, size, 3 if colour else 1), dtype=np.uint8).repeat(1 if colour else 3, axis=2)
        Image.fromarray(pixels).save(folder / ("sub" if i < 2 else ".") / f"{i}.png")
    return folder


def test_cluster_names_thumbnails_and_warns_when_images_do_not_fit_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path / "run", "digits-cld", ["width=8", "feature_dim=16"], num_train=1347, in_channels=1, side=8)
    run = Run.open(tmp_path / "run")  # a grey 8×8 model
    sheets: list[list[str]] = []
    monkeypatch.setattr(plots, "contact_sheet", lambda images, title, path, names: sheets.append(names))
    with pytest.warns(UserWarning, match="they are colour, the model's images grey .*; 2.png is 32×32, the model's input 8×8"):
        cluster_folder(run, photos(tmp_path / "colour", 32, colour=True), 2, tmp_path / "colour.csv")
    assert sorted(name for names in sheets for name in names) == ["2.png", "3.png", "4.png", "5.png", "sub/0.png", "sub/1.png"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*do not look like")
        cluster_folder(run, photos(tmp_path / "grey", 8, colour=False), 2, tmp_path / "grey.csv")
