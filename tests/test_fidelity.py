"""The reference implementation's behaviour, pinned: what the paper's presets must train.

Each test names the reference behaviour it checks (frank-xwang/CLD-UnsupervisedLearning); the
table of differences and their reasons is in docs/methods-and-data.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from crosslevel.config import apply_overrides, load_preset, num_views
from crosslevel.errors import CrossLevelError
from crosslevel.losses import cld_loss
from crosslevel.methods import ContrastiveModule
from crosslevel.models import TwoHeads, build_backbone
from crosslevel.models.heads import NormLinear
from crosslevel.data.datamodule import load_data
from crosslevel.run_dir import SUMMARY_FILE
from crosslevel.training import train

TINY = ["batch_size=32", "num_groups=4", "epochs=1", "limit_train_batches=2", "progress=false", "width=8", "feature_dim=16"]


def fit_two_steps(module: ContrastiveModule, loader: torch.utils.data.DataLoader) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, loader)
    return trainer


# --- heads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_dim", [512, 2048])
def test_normlinear_columns_start_at_unit_norm(in_dim: int) -> None:
    """Reference NormedLinear: uniform(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5): every column of the
    in×out weight has norm 1 (uniform alone: ≈ √(in/3), a ~in/3 times slower cosine layer)."""
    layer = NormLinear(in_dim, 128)
    torch.testing.assert_close(layer.weight.norm(dim=0), torch.ones(128))
    assert layer.weight.abs().max() <= 1.0
    reference = torch.empty(in_dim, 128).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    torch.testing.assert_close(reference.norm(dim=0), layer.weight.norm(dim=0))


def test_normlinear_heads_are_cosine_layers() -> None:
    heads = TwoHeads(32, 8, normlinear=True)
    x = torch.randn(5, 32)
    instance, _ = heads(x)
    want = F.normalize(F.normalize(x, dim=1) @ F.normalize(heads.instance.proj.weight, dim=0), dim=1)
    torch.testing.assert_close(instance, want)


# --- one forward pass per view -------------------------------------------------------------------


@pytest.mark.parametrize("preset,extra", [("digits-cld", []), ("digits-npid", []), ("digits-cld", ["instance=moco", "queue_size=64"])])
def test_batchnorm_sees_one_view_at_a_time(preset: str, extra: list[str]) -> None:
    """Reference: ``model(x1)``, ``model(x2)`` -- BN statistics never mix views."""
    cfg = apply_overrides(load_preset(preset), TINY + extra)
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    seen: list[int] = []
    first_bn = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_bn.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[0]) if _m.training else None)
    fit_two_steps(module, data.train_loader(cfg))
    query_views = num_views(cfg) - (1 if cfg.instance == "moco" else 0)
    assert seen == [cfg.batch_size] * (2 * query_views)


def test_key_encoder_follows_channels_last() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["instance=moco", "queue_size=64", "channels_last=true"])
    module = ContrastiveModule(cfg, 100, 1)
    conv = next(m for m in module.branch.key_encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# --- backbone ------------------------------------------------------------------------------------


def test_reference_pool_window_pools_the_top_left_corner() -> None:
    """Reference STL-10: ``F.avg_pool2d(out, 7)`` on the 12×12 map of a 96-px CIFAR-stem ResNet."""
    torch.manual_seed(0)
    net = build_backbone("resnet18_cifar", 3, 8, pool_window=7).eval()
    images = torch.randn(2, 3, 96, 96)
    trunk = net.net
    stem = trunk.relu(trunk.bn1(trunk.conv1(images)))
    feature_map = trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(stem))))
    assert feature_map.shape[-2:] == (12, 12)
    torch.testing.assert_close(net(images), F.avg_pool2d(feature_map, 7).flatten(1))
    global_net = build_backbone("resnet18_cifar", 3, 8).eval()
    global_net.load_state_dict(net.state_dict())
    torch.testing.assert_close(global_net(images), feature_map.mean(dim=(2, 3)))
    with pytest.raises(CrossLevelError, match="pool_window=7"):
        net(torch.randn(1, 3, 32, 32))  # a 4×4 map has no 7×7 corner


def test_conv_init_pytorch_is_the_layer_default() -> None:
    """Reference CIFAR ResNet: PyTorch's Conv2d default (kaiming-uniform a=√5: std 1/√(3·fan_in));
    torchvision's ResNet: kaiming-normal fan_out (std √(2/fan_out))."""
    torch.manual_seed(0)
    default = build_backbone("resnet18_cifar", 3, 64, conv_init="pytorch").net.layer3[0].conv2.weight
    kaiming = build_backbone("resnet18_cifar", 3, 64).net.layer3[0].conv2.weight
    fan = 256 * 9
    assert default.std().item() == pytest.approx(1 / math.sqrt(3 * fan), rel=0.03)
    assert default.abs().max().item() <= 1 / math.sqrt(fan)
    assert kaiming.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.03)


# --- k > batch, the reference's ImageNet arithmetic ------------------------------------------------


def test_groups_above_batch_is_an_error_naming_the_key_unless_capped() -> None:
    with pytest.raises(CrossLevelError, match="groups_above_batch=cap"):
        apply_overrides(load_preset("digits-cld"), ["num_groups=200", "batch_size=64"])
    cfg = apply_overrides(load_preset("digits-cld"), ["num_groups=200", "batch_size=64", "groups_above_batch=cap"])
    assert cfg.num_groups > cfg.batch_size


def test_cld_with_k_above_batch_is_the_reference_cross_view_instance_loss() -> None:
    """k = 7 > B = 4: each image is its own group, k − B zero centroids give zero logits."""
    torch.manual_seed(0)
    a, b = (F.normalize(torch.randn(4, 6), dim=1) for _ in range(2))
    padded = lambda x: torch.cat([x, torch.zeros(3, 6)])  # noqa: E731
    target = torch.arange(4)
    want = 0.5 * (F.cross_entropy(a @ padded(b).t() / 0.4, target) + F.cross_entropy(b @ padded(a).t() / 0.4, target))
    torch.testing.assert_close(cld_loss(a, b, 7, temperature=0.4), want)


def test_a_capped_run_trains() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["num_groups=48", "groups_above_batch=cap"])
    data = load_data(cfg)
    trainer = fit_two_steps(ContrastiveModule(cfg, len(data.train), data.train.channels), data.train_loader(cfg))
    assert torch.isfinite(trainer.logged_metrics["loss_cld"])


# --- original NPID: one view -----------------------------------------------------------------------


def test_one_view_npid_updates_each_bank_row_once() -> None:
    cfg = apply_overrides(load_preset("digits-npid"), TINY + ["npid_views=1"])
    assert num_views(cfg) == 1
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    loader = data.train_loader(cfg)
    views, indices = next(iter(loader))
    assert len(views) == 1
    bank_before = module.branch.bank.memory.clone()
    fit_two_steps(module, loader)
    assert (module.branch.bank.memory != bank_before).any(dim=1).sum() == 2 * cfg.batch_size


@pytest.mark.parametrize("extra", [["cld_weight=1"], ["instance=moco", "cld_weight=0"]])
def test_one_view_needs_plain_npid(extra: list[str]) -> None:
    with pytest.raises(CrossLevelError, match="npid_views=1"):
        apply_overrides(load_preset("digits-npid"), ["npid_views=1", *extra])


# --- presets ---------------------------------------------------------------------------------------

REFERENCE_PRESETS = {
    # preset: {key: the reference's value}
    "cifar10-cld": {"conv_init": "pytorch", "normlinear": False, "batch_size": 256, "num_groups": 128, "npid_views": 2, "warmup_start": 0.01},
    # NPID's own CIFAR script (lemniscate.pytorch cifar.py, run as its README says: --nce-k 0 --lr 0.03)
    "cifar10-npid-1view": {"npid_views": 1, "cld_weight": 0.0, "nce_negatives": 0, "batch_size": 128, "base_lr": 0.03, "weight_decay": 5e-4,
                           "warmup_epochs": 0, "lr_schedule": "step", "lr_milestones": "0.6,0.8", "lr_gamma": 0.1, "flip": 0.0,
                           "instance_temperature": 0.1, "bank_momentum": 0.5, "conv_init": "pytorch", "augment": "cifar"},
    "cifar100-npid-1view": {"npid_views": 1, "cld_weight": 0.0, "nce_negatives": 0, "dataset": "cifar100", "batch_size": 128, "lr_schedule": "step", "flip": 0.0},
    "cifar10-cldm": {"random_erasing": 1.0, "augment": "v2", "blur": 0.5, "normlinear": True, "conv_init": "pytorch"},
    "cifar10-moco": {"random_erasing": 1.0, "normlinear": True, "mlp": False, "cld_weight": 0.0},
    "cifar10-mocov2": {"mlp": True, "normlinear": False, "cld_weight": 0.0},
    "cifar100-cldm": {"augment": "cifar", "random_erasing": 0.0, "batch_size": 128, "num_groups": 100},
    "stl10-cld": {"backbone": "resnet18_cifar", "augment": "cifar", "random_erasing": 0.0, "pool_window": 0},
    "stl10-cldm": {"backbone": "resnet18_cifar", "augment": "cifar", "random_erasing": 0.0, "pool_window": 0},
    "kitchen-cld": {"image_size": 32, "backbone": "resnet18_cifar", "num_groups": 10},
    "imagenet-cldm": {
        "batch_size": 64, "base_lr": 0.05, "warmup_epochs": 0, "schedule_interval": "epoch", "num_groups": 120,
        "groups_above_batch": "cap", "cld_temperature": 0.4, "conv_init": "torchvision", "mlp": True, "normlinear": True,
        "eval_resize": 256, "image_size": 224,
    },  # fmt: skip
    "imagenet100-cldm": {"batch_size": 64, "warmup_epochs": 0, "groups_above_batch": "cap", "num_groups": 100},
}


@pytest.mark.parametrize("preset", sorted(REFERENCE_PRESETS))
def test_presets_carry_the_reference_settings(preset: str) -> None:
    cfg = load_preset(preset)
    assert {key: getattr(cfg, key) for key in REFERENCE_PRESETS[preset]} == REFERENCE_PRESETS[preset]


def test_eval_resize_is_the_imagenet_protocol() -> None:
    """Reference test transform for ImageNet: Resize(256) then CenterCrop(224)."""
    from torchvision.transforms import v2

    from crosslevel.data import eval_transform

    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    ours = eval_transform(224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize=256)(image)
    want = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True)])(image)
    torch.testing.assert_close(ours, want)


def test_imagenet_peak_lr_is_the_references_at_512() -> None:
    from crosslevel.config import peak_lr

    assert peak_lr(load_preset("imagenet-cldm"), world_size=8) == pytest.approx(0.2)


# --- reporting: final epoch and best epoch -------------------------------------------------------


def test_summary_has_the_final_and_the_best_knn(tmp_path: Path) -> None:
    cfg = apply_overrides(
        load_preset("digits-cld"),
        ["epochs=3", "eval_every=1", "batch_size=64", "limit_train_batches=2", "width=8", "progress=false", f"out={tmp_path}", "name=r"],
    )
    run_dir, knn = train(cfg)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    best = summary["knn_best"]
    assert summary["knn"] == knn and 1 <= best["epoch"] <= 3
    assert best["top1"] >= knn["top1"]
    import csv

    logged = [float(row["knn_top1"]) for row in csv.DictReader(open(run_dir / "metrics.csv")) if row.get("knn_top1")]
    assert len(logged) == 3 and best["top1"] == pytest.approx(max(logged))
