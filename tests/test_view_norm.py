"""``fused_views``: one forward pass over the stacked views with per-view BatchNorm statistics gives
the model of one pass per view -- loss, gradients and running statistics -- to rounding."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from crosslevel.config import apply_overrides, load_preset
from crosslevel.errors import CrossLevelError
from crosslevel.methods.module import ContrastiveModule
from crosslevel.models.view_norm import PerViewBatchNorm2d, per_view_batchnorm, stacked_views
from crosslevel.training import train

SMALL = ["width=8", "feature_dim=16", "batch_size=16", "num_groups=4", "queue_size=64", "predictor_hidden=32", "data=unused"]


@pytest.mark.parametrize("preset", ["cifar10-cld", "cifar10-cldm", "cifar10-simclr-cld", "cifar10-byol-cld"])
def test_fused_views_train_the_model_of_one_pass_per_view(preset: str) -> None:
    cfg = apply_overrides(load_preset(preset), SMALL)
    torch.manual_seed(0)
    separate = ContrastiveModule(cfg, 64)
    fused = ContrastiveModule(dataclasses.replace(cfg, fused_views=True), 64)
    fused.load_state_dict(separate.state_dict())  # the same names: checkpoints are interchangeable
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(16, 3, 32, 32, generator=generator) for _ in range(3 if preset == "cifar10-cldm" else 2)]
    indices = torch.arange(16)
    losses = []
    for module in (separate, fused):
        torch.manual_seed(2)  # the same random state for anything the branch draws
        loss, _ = module.step_loss(views, indices)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    grads = [(a.grad, b.grad) for a, b in zip(separate.parameters(), fused.parameters()) if a.grad is not None]
    assert grads and all(b is not None for _, b in grads)
    for a, b in grads:  # float32 rounding only: a mixed-up statistic would differ by a large fraction
        assert (b - a).norm() <= 1e-4 * a.norm() + 1e-8
    # running statistics: each view updated them in turn, as two passes do
    for (name, a), (_, b) in zip(separate.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert any(isinstance(m, PerViewBatchNorm2d) for m in fused.backbone.modules())
    assert not any(isinstance(m, PerViewBatchNorm2d) for m in fused.branch.modules())  # key / target nets: one view at a time


def test_a_per_view_layer_is_the_plain_one_outside_stacked_views_and_in_eval() -> None:
    plain, per_view = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    layers = per_view_batchnorm(nn.Sequential(per_view))
    x = torch.randn(8, 4, 3, 3)
    torch.testing.assert_close(per_view(x), plain(x))  # views = 1: one batch
    with stacked_views(layers, 2):
        stacked = per_view(x)
        plain.load_state_dict(per_view.state_dict())
        per_view.eval()
        plain.eval()
        torch.testing.assert_close(per_view(x), plain(x))  # eval: running statistics, nothing per view
    per_view.train()
    halves = torch.cat([nn.functional.batch_norm(h, None, None, training=True) for h in x.chunk(2)])
    torch.testing.assert_close(stacked, halves)
    assert layers[0].views == 1  # reset after the block


def test_other_batch_norms_are_refused_by_name() -> None:
    with pytest.raises(CrossLevelError, match=r"fused_views=true needs plain BatchNorm layers.*1 is a SyncBatchNorm"):
        per_view_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4)))
    with pytest.raises(CrossLevelError, match="SyncBatchNorm .sync_bn=true. does not"):
        apply_overrides(load_preset("cifar10-cld"), ["data=x", "fused_views=true", "sync_bn=true"])


def test_the_cli_path_trains_with_fused_views(tmp_path: Path) -> None:
    cfg = apply_overrides(load_preset("digits-cld"), [
        "backbone=smallcnn", "width=4", "feature_dim=16", "batch_size=32", "num_groups=4", "epochs=1", "limit_train_batches=2",
        "progress=false", "workers=0", "knn_k=5", "accelerator=cpu", f"out={tmp_path}", "name=run", "fused_views=true",
    ])  # fmt: skip
    _, knn = train(cfg)
    assert knn is not None and json.loads((tmp_path / "run" / "config.json").read_text())["fused_views"] is True
