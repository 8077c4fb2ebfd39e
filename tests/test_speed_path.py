"""The speed path: on-device views in training, mixed precision with fp32 losses, channels_last,
compile, the epoch timer, and chunked kNN."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import write_cifar10

from crosslevel import losses as losses_file
from crosslevel import training
from crosslevel.data.datamodule import ContrastiveDataModule, load_data
from crosslevel.cli import main
from crosslevel.config import apply_overrides, load_preset
from crosslevel.errors import CrossLevelError
from crosslevel.evaluation.knn import knn_scores
from crosslevel.losses import cld_loss
from crosslevel.methods import module as module_file
from crosslevel.methods import npid as npid_file


TINY = ["backbone=smallcnn", "width=4", "feature_dim=16", "batch_size=32", "num_groups=4", "epochs=1",
        "limit_train_batches=2", "progress=false", "workers=0", "knn_k=5", "accelerator=cpu"]  # fmt: skip


def test_cli_trains_cifar_with_device_views_bf16_and_channels_last(tmp_path: Path) -> None:
    data = write_cifar10(tmp_path / "data", per_batch=20)
    overrides = TINY + [f"out={tmp_path}", "name=run", "augment_device=device", "precision=bf16-mixed", "channels_last=true"]
    assert main(["train", "--config", "cifar10-cld", "--data", str(data), *overrides]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["epoch_seconds"]) == 1 and summary["knn"] is not None
    # the checkpoint holds the model, never the uint8 images of the on-device data set
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(key.startswith("views.") for key in state)
    assert main(["eval", "knn", str(tmp_path / "run")]) == 0


def test_device_loader_yields_indices_and_the_data_module_makes_views(tmp_path: Path) -> None:
    cfg = apply_overrides(load_preset("cifar10-cld"), TINY + [f"data={write_cifar10(tmp_path, per_batch=20)}", "augment_device=device"])
    datamodule = ContrastiveDataModule(cfg, load_data(cfg))
    indices = next(iter(datamodule.train_dataloader()))
    assert indices.dtype == torch.long and indices.shape == (32,)
    views, returned = datamodule.on_after_batch_transfer(indices, 0)
    assert len(views) == 2 and views[0].shape == (32, 3, 32, 32) and torch.equal(returned, indices)
    assert not torch.equal(views[0], views[1])  # two independent random views
    plain = (views, indices)
    assert datamodule.on_after_batch_transfer(plain, 0) is plain  # CPU-made views pass through


def test_grey_digits_have_no_device_recipe() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["augment_device=device"])
    with pytest.raises(CrossLevelError, match="augment=digits has no on-device version"):
        ContrastiveDataModule(cfg, load_data(cfg))


def test_losses_run_in_float32_under_bf16_autocast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool, torch.dtype, torch.dtype]] = []

    def recording(name: str, loss):  # noqa: ANN001
        def wrapped(features: torch.Tensor, other: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003
            seen.append((name, torch.is_autocast_enabled("cpu"), features.dtype, other.dtype))
            return loss(features, other, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(losses_file, "cld_loss", recording("cld", losses_file.cld_loss))
    monkeypatch.setattr(npid_file, "bank_softmax_loss", recording("bank", npid_file.bank_softmax_loss))
    forward = module_file.ContrastiveModule.forward
    backbone_dtypes: list[torch.dtype] = []

    def recording_forward(self, images):  # noqa: ANN001, ANN202
        outputs = forward(self, images)
        backbone_dtypes.append(outputs[0].dtype)
        return outputs

    monkeypatch.setattr(module_file.ContrastiveModule, "forward", recording_forward)
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["batch_size=64", f"out={tmp_path}", "precision=bf16-mixed"])
    training.train(cfg)
    assert {name for name, *_ in seen} == {"cld", "bank"}
    assert all(not autocast and a == b == torch.float32 for _, autocast, a, b in seen)
    assert torch.bfloat16 in backbone_dtypes  # the network itself did run in bf16


def test_compile_and_channels_last_keep_checkpoint_names() -> None:
    plain = training.ContrastiveModule(load_preset("cifar10-cld"), 10)
    fast = training.ContrastiveModule(dataclasses.replace(load_preset("cifar10-cld"), compile=True, channels_last=True), 10)
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert fast.backbone.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    fast.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 10_000])
def test_knn_scores_do_not_depend_on_chunking(chunk_size: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 16, generator=generator), torch.randn(50, 16, generator=generator)
    labels = torch.randint(0, 5, (300,), generator=generator)
    scores = knn_scores(train, labels, test, k=20, temperature=0.1, num_classes=5, chunk_size=chunk_size)
    sims = torch.nn.functional.normalize(test.double(), dim=1) @ torch.nn.functional.normalize(train.double(), dim=1).t()
    top, neighbours = sims.topk(20, dim=1)
    reference = torch.zeros(50, 5, dtype=torch.float64).scatter_add_(1, labels[neighbours], (top / 0.1).exp())
    torch.testing.assert_close(scores.double(), reference, rtol=1e-4, atol=1e-4)


def test_compiled_cld_term_equals_the_eager_one() -> None:
    """``compile=true`` also compiles the grouping + CLD loss: same value and gradients as eager."""
    module = training.ContrastiveModule(dataclasses.replace(load_preset("digits-cld"), compile=True, num_groups=4), 10, 1)
    generator = torch.Generator().manual_seed(0)
    groups = [torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=1) for _ in range(2)]
    eager = [g.clone().requires_grad_() for g in groups]
    compiled = [g.clone().requires_grad_() for g in groups]
    want = cld_loss(*eager, 4, 0.2, 5)
    got = module.cld(*compiled)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a.grad, b.grad)
