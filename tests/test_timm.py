"""``backbone=timm:<name>``: two timm backbones train a step, a ViT exports and loads back, clear errors;
``optimizer=adamw``: no decay on biases and norms, the same warm-up + cosine schedule."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import write_cifar10
from crosslevel import load_backbone
from crosslevel.checkpointing import check_compatible
from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset, peak_lr
from crosslevel.data.datamodule import load_data
from crosslevel.errors import CrossLevelError
from crosslevel.methods import ContrastiveModule
from crosslevel.methods.module import MIN_LR, build_optimizer, warmup_cosine
from crosslevel.models import build_backbone
from crosslevel.run_dir import open_run
from crosslevel.training import build_module

TINY = ["epochs=1", "warmup_epochs=0", "limit_train_batches=1", "batch_size=8", "num_groups=2", "feature_dim=16", "workers=0", "progress=false"]
VIT = ["backbone=timm:vit_tiny_patch16_224", "backbone_args=patch_size=2,depth=1", "width=64"]  # digits: 8 px → 4×4 patches


@pytest.fixture
def timm() -> object:
    return pytest.importorskip("timm", reason="timm backbones need the optional extra: pip install 'crosslevel[timm]'")


@pytest.mark.parametrize(
    "preset,overrides,out_dim",
    [("digits-cld", ["backbone=timm:resnet18", "width=64"], 512), ("cifar10-cld-vit", [], 192)],
    ids=["timm-resnet18-digits", "cifar10-cld-vit"],
)
def test_timm_backbones_train_one_step(timm: object, tmp_path: Path, preset: str, overrides: list[str], out_dim: int) -> None:
    data_path = [f"data={write_cifar10(tmp_path)}"] if preset.startswith("cifar10") else []
    cfg = apply_overrides(load_preset(preset), [*TINY, *overrides, *data_path])
    data = load_data(cfg)
    module = build_module(cfg, data)
    assert module.backbone.out_dim == out_dim == module.heads.instance.proj.in_features
    images = next(iter(data.train_loader(cfg)))[0][0]
    assert module.backbone(images).shape == (len(images), out_dim)  # out_dim is what the model pools to
    before = [p.detach().clone() for p in module.backbone.parameters()]
    bank = module.branch.bank.memory.clone()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, data.train_loader(cfg))
    assert torch.isfinite(trainer.logged_metrics["loss_epoch"]) and "loss_cld" in trainer.logged_metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, module.backbone.parameters()))
    assert (module.branch.bank.memory != bank).any(dim=1).sum() == cfg.batch_size
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.SGD)


def test_timm_models_take_the_data_channels_and_size(timm: object) -> None:
    vit = build_backbone("timm:vit_tiny_patch16_224", in_channels=1, image_size=32, args={"patch_size": 4})
    assert vit.model.patch_embed.grid_size == (8, 8) and vit.model.patch_embed.proj.in_channels == 1
    assert vit.model.pos_embed.shape[1] == 8 * 8 + 1  # the patches and the class token
    assert build_backbone("timm:vit_tiny_patch16_224", image_size=32).model.patch_embed.grid_size == (2, 2)
    convnext = build_backbone("timm:convnext_atto", in_channels=1, image_size=32)  # takes no img_size: any size
    assert convnext(torch.randn(2, 1, 32, 32)).shape == (2, convnext.out_dim) and convnext.out_dim == 320
    mobilenet = build_backbone("timm:mobilenetv3_small_100")  # pooled through a hidden head layer: 1024, not 576
    assert mobilenet.eval()(torch.randn(2, 3, 32, 32)).shape == (2, mobilenet.out_dim) == (2, 1024)


def test_a_timm_vit_exports_and_loads_back_with_the_same_features(timm: object, tmp_path: Path) -> None:
    assert main(["train", *TINY, *VIT, "optimizer=adamw", f"out={tmp_path}", "name=vit"]) == 0
    assert main(["export", str(tmp_path / "vit"), "--out", str(tmp_path / "vit.pth")]) == 0
    saved = torch.load(tmp_path / "vit.pth")
    assert saved["backbone"] == {"name": "timm:vit_tiny_patch16_224", "width": 64, "in_channels": 1, "pool_window": 0,
                                 "image_size": 8, "args": {"patch_size": 2, "depth": 1}}  # fmt: skip
    model = load_backbone(tmp_path / "vit.pth")
    _, module, _ = open_run(tmp_path / "vit")
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(images), module.backbone(images))
    assert model(images).shape == (4, saved["feature_dim"]) == (4, 192)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backbone=timm:vit_tinny_patch16_224"], r"timm has no model 'vit_tinny_patch16_224' \(did you mean timm:vit_tiny_patch16_224"),
        (["backbone=timm:resnet18", "width=32"], r"width=32 shapes the built-in backbones only.*set width=64"),
        (["backbone=timm:resnet18", "width=64", "pool_window=7"], r"pool_window=7 shapes the built-in backbones only"),
        (["backbone=timm:resnet18", "width=64", "backbone_args=pretrained=true"], r"backbone_args may not set pretrained"),
        (["backbone=timm:resnet18", "width=64", "backbone_args=patch_size"], r"backbone_args must be comma-separated name=value"),
    ],
)  # fmt: skip
def test_timm_config_errors(timm: object, overrides: list[str], message: str) -> None:
    with pytest.raises(CrossLevelError, match=message):
        apply_overrides(load_preset("digits-cld"), overrides)


def test_a_model_timm_cannot_build_is_a_clear_error(timm: object) -> None:
    with pytest.raises(CrossLevelError, match=r"timm cannot build 'resnet18' with patch_size=4.*unexpected keyword argument 'patch_size'"):
        build_backbone("timm:resnet18", args={"patch_size": 4})


@pytest.mark.parametrize(
    "override,message",
    [("backbone_args=patch_size=4", "backbone_args is for timm backbones"), ("backbone=vgg", "one of resnet18_cifar, .*smallcnn, timm:<name>; got 'vgg'")],
)  # fmt: skip
def test_builtin_backbone_errors(override: str, message: str) -> None:
    with pytest.raises(CrossLevelError, match=message):
        apply_overrides(load_preset("digits-cld"), [override])


def test_without_timm_a_timm_backbone_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert main(["train", "backbone=timm:resnet18", "width=64", f"out={tmp_path}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crosslevel: error: ")]
    assert errors == ["crosslevel: error: timm backbones need the timm package: pip install 'crosslevel[timm]'"]
    with pytest.raises(CrossLevelError, match=r"pip install 'crosslevel\[timm\]'"):
        build_backbone("timm:resnet18")
    assert not any(tmp_path.iterdir())


def test_help_keys_lists_timm_backbones_and_the_optimizers(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--help-keys"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "(resnet18_cifar|resnet18|resnet50|smallcnn|timm:<name>)" in lines["backbone"]
    assert "(sgd|adamw)" in lines["optimizer"] and "backbone_args" in lines


def test_adamw_decays_weights_but_not_biases_and_norms() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["backbone=resnet18_cifar", "width=8", "optimizer=adamw", "weight_decay=0.05"])
    module = ContrastiveModule(cfg, 100, 1)
    optimizer = build_optimizer(module, cfg, lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(module.named_parameters())
    assert len(decay) == len(names)  # every trainable parameter, once
    norms = [name for name, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(decay[id(names[f"{norm}.{part}"])] == 0.0 for norm in norms for part in ("weight", "bias"))
    assert decay[id(names["heads.instance.proj.weight"])] == decay[id(names["backbone.net.conv1.weight"])] == 0.05
    assert all(decay[id(p)] == (0.05 if p.ndim > 1 else 0.0) for p in names.values())
    sgd = build_optimizer(module, apply_overrides(cfg, ["optimizer=sgd"]), lr=1e-3)
    assert isinstance(sgd, torch.optim.SGD) and [g["weight_decay"] for g in sgd.param_groups] == [0.05]


def test_adamw_follows_the_warmup_cosine_schedule_at_the_scaled_lr() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["optimizer=adamw", "base_lr=1e-4", "batch_size=256", "epochs=10",
                                                       "warmup_epochs=2", "schedule_interval=epoch"])  # fmt: skip
    module = ContrastiveModule(cfg, 100, 1)
    scheduled = module.configure_optimizers()
    optimizer, schedule = scheduled["optimizer"], scheduled["lr_scheduler"]["scheduler"]
    peak = peak_lr(cfg, 1)
    assert peak == pytest.approx(2e-4) and len(optimizer.param_groups) == 2
    for epoch in range(cfg.epochs):
        expected = peak * warmup_cosine(epoch, cfg.epochs, 2, MIN_LR / peak)
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected, expected])
        optimizer.step()  # no gradients: changes nothing
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(MIN_LR) and not math.isclose(peak, MIN_LR)


def test_checkpoints_from_before_the_optimizer_and_backbone_args_keys_still_fit() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), [])
    module = ContrastiveModule(cfg, 100, 1)
    old_cfg = {key: value for key, value in dataclasses.asdict(cfg).items() if key not in ("optimizer", "backbone_args")}
    old = {"state_dict": module.state_dict(), "hyper_parameters": {"cfg": old_cfg, "num_train": 100, "in_channels": 1}}
    check_compatible(old, Path("old.ckpt"), cfg, 100, 1)  # the defaults stand in for the missing keys
    with pytest.raises(CrossLevelError, match=r"optimizer='sgd' \(this run: 'adamw'\)"):
        check_compatible(old, Path("old.ckpt"), apply_overrides(cfg, ["optimizer=adamw"]), 100, 1)


def test_the_vit_preset_is_adamw_with_warmup(timm: object) -> None:
    cfg = apply_overrides(load_preset("cifar10-cld-vit"), ["data=/somewhere"])
    assert (cfg.backbone, cfg.backbone_args, cfg.optimizer) == ("timm:vit_tiny_patch16_224", "patch_size=4", "adamw")
    assert (cfg.base_lr, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_start) == (7.5e-5, 0.1, 40, 0.0)
    assert cfg.num_groups < cfg.batch_size and cfg.cld_weight > 0 and cfg.dataset == "cifar10"
