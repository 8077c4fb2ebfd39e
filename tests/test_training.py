"""Every method runs a couple of steps on tiny data; the bank changes; the schedule is right."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from crosslevel.config import apply_overrides, load_preset
from crosslevel.methods import ContrastiveModule
from crosslevel.methods.module import warmup_cosine, warmup_step_decay
from crosslevel.models import build_backbone
from crosslevel.data.datamodule import load_data

TINY = ["batch_size=32", "num_groups=4", "epochs=1", "limit_train_batches=2", "progress=false", "width=8", "feature_dim=16"]


@pytest.mark.parametrize("preset", ["digits-npid", "digits-cld"])
def test_two_steps_change_weights_and_bank(preset: str) -> None:
    cfg = apply_overrides(load_preset(preset), TINY)
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    bank_before = module.branch.bank.memory.clone()
    weights_before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(module, data.train_loader(cfg))
    losses = trainer.logged_metrics
    assert torch.isfinite(losses["loss_epoch"]) and losses["loss_epoch"] > 0
    assert ("loss_cld" in losses) == (cfg.cld_weight > 0)
    changed_rows = (module.branch.bank.memory != bank_before).any(dim=1)
    assert changed_rows.sum() == 2 * 32  # two batches of 32 distinct images
    torch.testing.assert_close(module.branch.bank.memory[changed_rows].norm(dim=1), torch.ones(64))
    assert any(not torch.equal(a, b) for a, b in zip(weights_before, module.parameters()))


def test_warmup_then_cosine() -> None:
    total, warmup = 100, 10
    factors = [warmup_cosine(s, total, warmup) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    # the reference's warm-up (warmup_start=0.01): linear from peak/100 (GradualWarmupScheduler, multiplier 100)
    reference = [warmup_cosine(s, total, warmup, start=0.01) for s in range(total)]
    assert reference[0] == pytest.approx(0.01) and reference[5] == pytest.approx(0.01 + 0.99 * 0.5)
    assert reference[10:] == factors[10:]
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    # the reference's cosine floor: eta_min = 1e-6 (here as a fraction of a peak of 0.06)
    floor = 1e-6 / 0.06
    assert warmup_cosine(total, total, warmup, floor) == pytest.approx(floor)
    assert warmup_cosine(55, total, warmup, floor) == pytest.approx(floor + (1 - floor) * factors[55])


def test_step_decay_is_the_original_npid_schedule() -> None:
    """lemniscate.pytorch cifar.py: lr = 0.03 · 0.1^((epoch − 80) // 40) from epoch 80 on, so ×0.1 from 120 and
    again from 160 of 200: milestones 0.6 and 0.8 of the run, no warm-up."""
    cfg = apply_overrides(load_preset("cifar10-npid-1view"), ["data=/tmp"])
    from crosslevel.config import lr_milestones

    milestones = lr_milestones(cfg)
    assert milestones == [120, 160]
    for epoch in range(200):
        reference = 0.1 ** ((epoch - 80) // 40) if epoch >= 80 else 1.0
        assert warmup_step_decay(epoch, 0, milestones, 0.1) == pytest.approx(reference)
    assert [warmup_step_decay(s, 4, [10], 0.5, start=0.01) for s in (0, 2, 4, 9, 10, 11)] == pytest.approx(
        [0.01, 0.01 + 0.99 * 0.5, 1.0, 1.0, 0.5, 0.5]
    )


def test_the_step_schedule_steps_at_epoch_boundaries_per_step_or_per_epoch() -> None:
    """5 epochs of 4 steps, milestones 0.4 and 0.8 (epochs 2 and 4): the lr of every step of an epoch is
    the lemniscate-style epoch lr, whether the schedule is updated every step or every epoch."""
    for interval, steps_per_update in (("step", 1), ("epoch", 4)):
        cfg = apply_overrides(load_preset("digits-npid"), ["epochs=5", "warmup_epochs=0", "lr_schedule=step", "lr_milestones=0.4,0.8",
                                                           "lr_gamma=0.5", f"schedule_interval={interval}"])  # fmt: skip
        module = ContrastiveModule(cfg, 100, 1)
        module.trainer = type("Stub", (), {"estimated_stepping_batches": 20, "world_size": 1})()  # type: ignore[assignment]
        scheduled = module.configure_optimizers()
        optimizer, schedule = scheduled["optimizer"], scheduled["lr_scheduler"]["scheduler"]
        peak = optimizer.param_groups[0]["lr"]
        lrs = []
        for step in range(20):
            lrs.append(optimizer.param_groups[0]["lr"] / peak)
            optimizer.step()
            if (step + 1) % steps_per_update == 0:
                schedule.step()
        assert lrs == pytest.approx([1.0] * 8 + [0.5] * 8 + [0.25] * 4), interval


@pytest.mark.parametrize(
    "name,channels,width,dim", [("resnet18_cifar", 3, 8, 64), ("resnet18", 3, 64, 512), ("smallcnn", 1, 4, 16)]
)
def test_backbones(name: str, channels: int, width: int, dim: int) -> None:
    net = build_backbone(name, channels, width)
    assert net.out_dim == dim
    out = net(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, dim)


def test_resnet18_cifar_stem_is_torchvision() -> None:
    import torchvision

    net = build_backbone("resnet18_cifar", 3, 64).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    reference = torchvision.models.resnet18()
    reference.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = torch.nn.Identity()
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(net.state_dict())


def test_resnet50_width() -> None:
    assert build_backbone("resnet50", 3, 64).out_dim == 2048


def test_heads_are_unit_norm_and_normlinear() -> None:
    from crosslevel.models import TwoHeads

    for normlinear, mlp in [(False, False), (True, True)]:
        heads = TwoHeads(32, 8, normlinear=normlinear, mlp=mlp)
        instance, group = heads(torch.randn(5, 32))
        torch.testing.assert_close(instance.norm(dim=1), torch.ones(5))
        torch.testing.assert_close(group.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("extra", [[], ["instance=moco", "queue_size=64"]])
def test_checkpoints_with_the_old_branch_names_still_load(extra: list[str]) -> None:
    """Before the branches were objects the bank, queue and key encoder sat at the top level."""
    cfg = apply_overrides(load_preset("digits-cld"), TINY + extra)
    trained = ContrastiveModule(cfg, 100, 1)
    for buffer in trained.branch.buffers():
        buffer.add_(1)
    old = {key.removeprefix("branch."): value for key, value in trained.state_dict().items()}
    assert any(key.startswith(("bank.", "queue.")) for key in old)
    loaded = ContrastiveModule(cfg, 100, 1)
    loaded.load_state_dict(old)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_epoch_losses_are_the_batch_means_and_step_values_are_logged_only_where_written(tmp_path, monkeypatch) -> None:
    """loss_epoch / loss_inst / loss_cld: the means of the epoch's steps (summed on the device, one self.log a
    value per epoch); loss_step and lr: self.log only at the steps Lightning writes (every log_every_n_steps)."""
    import csv

    from crosslevel.training import train

    steps: list[dict[str, float]] = []
    logged: list[str] = []
    original_step_loss, original_log = ContrastiveModule.step_loss, ContrastiveModule.log

    def step_loss(self, views, indices):
        loss, logs = original_step_loss(self, views, indices)
        steps.append({"loss_epoch": float(loss.detach()), **{name: float(value.detach()) for name, value in logs.items()}})
        return loss, logs

    def log(self, name, *args, **kwargs):
        logged.append(name)
        return original_log(self, name, *args, **kwargs)

    monkeypatch.setattr(ContrastiveModule, "step_loss", step_loss)
    monkeypatch.setattr(ContrastiveModule, "log", log)
    cfg = apply_overrides(load_preset("digits-cld"), [*TINY, "epochs=2", "limit_train_batches=1.0", f"out={tmp_path}", "name=r"])
    run_dir, _ = train(cfg)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    per_epoch = len(steps) // 2
    assert len(steps) == 2 * per_epoch and per_epoch > 10
    for epoch in (1, 2):
        (row,) = [r for r in rows if r["epoch"] == str(epoch) and r["loss_epoch"]]
        for name in ("loss_epoch", "loss_inst", "loss_cld"):
            expected = sum(step[name] for step in steps[(epoch - 1) * per_epoch : epoch * per_epoch]) / per_epoch
            assert float(row[name]) == pytest.approx(expected, rel=1e-5)
    written = [int(r["step"]) for r in rows if r["loss_step"]]
    every = min(50, per_epoch)  # the trainer's log_every_n_steps; a row's step counts the steps before it
    assert written == [n - 1 for n in range(1, len(steps) + 1) if n % every == 0] and all(r["lr"] for r in rows if r["loss_step"])
    assert logged.count("loss_step") == logged.count("lr") == len(written)
