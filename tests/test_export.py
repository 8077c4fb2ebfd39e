"""``crosslevel export``: the backbone loads into a stock torchvision ResNet and computes the same features."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torchvision
from torch import nn

from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset, save_config
from crosslevel.methods import ContrastiveModule


def make_run(run_dir: Path, preset: str, overrides: list[str]) -> ContrastiveModule:
    """A run directory holding an untrained module's checkpoint (export needs no training)."""
    cfg = apply_overrides(load_preset(preset), ["data=unused", *overrides])
    module = ContrastiveModule(cfg, num_train=16, in_channels=3).eval()
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
