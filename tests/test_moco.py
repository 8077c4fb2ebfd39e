"""MoCo's queue, EMA and InfoNCE against hand-computed values; MoCo and CLDm steps on tiny data; presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import fit_two_steps, free_port
from crosslevel.config import apply_overrides, load_preset, num_views, preset_summary
from crosslevel.errors import CrossLevelError
from crosslevel.losses import moco_loss
from crosslevel.methods import ContrastiveModule, KeyQueue, MomentumEncoder
from crosslevel.methods.moco import momentum_update
from crosslevel.models import TwoHeads, build_backbone
from crosslevel.data.datamodule import load_data
from crosslevel.run_dir import open_run
from crosslevel.training import train

TINY = ["batch_size=32", "num_groups=4", "epochs=1", "limit_train_batches=2", "progress=false", "width=8", "feature_dim=16"]


def test_queue_wraps_around_for_batches_that_do_not_divide_it() -> None:
    queue = KeyQueue(size=5, dim=2)
    first = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    queue.enqueue(first)
    assert queue.pointer.item() == 3
    torch.testing.assert_close(queue.keys[:3], first)
    second = torch.tensor([[4.0, 0.0], [5.0, 0.0], [6.0, 0.0]])
    queue.enqueue(second)  # rows 3, 4, then wraps to row 0
    assert queue.pointer.item() == 1
    torch.testing.assert_close(queue.keys[:, 0], torch.tensor([6.0, 2.0, 3.0, 4.0, 5.0]))
    queue.enqueue(torch.tensor([[7.0, 0.0]]))  # a last partial batch
    assert queue.pointer.item() == 2
    torch.testing.assert_close(queue.keys[:, 0], torch.tensor([6.0, 7.0, 3.0, 4.0, 5.0]))
    queue.enqueue(torch.ones(5, 2))  # exactly the queue: pointer back where it was
    assert queue.pointer.item() == 2 and torch.equal(queue.keys, torch.ones(5, 2))


def test_queue_rejects_more_keys_than_it_holds() -> None:
    with pytest.raises(CrossLevelError, match="queue_size"):
        KeyQueue(size=4, dim=2).enqueue(torch.zeros(5, 2))


def test_queue_starts_with_unit_keys_and_is_checkpointed() -> None:
    queue = KeyQueue(size=8, dim=4)
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(8))
    assert set(queue.state_dict()) == {"keys", "pointer"}


def test_momentum_update_matches_hand_computed_values() -> None:
    key, query = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        key.weight.copy_(torch.tensor([[0.0, 1.0]]))
        key.bias.fill_(2.0)
        query.weight.copy_(torch.tensor([[1.0, -1.0]]))
        query.bias.fill_(0.0)
    momentum_update(key, query, 0.9)
    torch.testing.assert_close(key.weight, torch.tensor([[0.1, 0.8]]))  # 0.9·k + 0.1·q
    torch.testing.assert_close(key.bias, torch.tensor([1.8]))
    momentum_update(key, query, 0.9)
    torch.testing.assert_close(key.weight, torch.tensor([[0.19, 0.62]]))
    torch.testing.assert_close(key.bias, torch.tensor([1.62]))
    torch.testing.assert_close(query.weight, torch.tensor([[1.0, -1.0]]))  # the query is untouched


def test_moco_loss_matches_a_naive_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 3, generator=generator, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(4, 3, generator=generator, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(6, 3, generator=generator, dtype=torch.float64), dim=1)
    t = 0.07
    expected = 0.0
    for i in range(4):
        positive = math.exp(float(q[i] @ k[i]) / t)
        negatives = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(6))
        expected += -math.log(positive / (positive + negatives)) / 4
    assert moco_loss(q, k, queue, t).item() == pytest.approx(expected, rel=1e-12)


def test_moco_loss_sends_gradient_to_queries_only() -> None:
    q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    k = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    moco_loss(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_momentum_encoder_is_a_frozen_copy() -> None:
    backbone = build_backbone("smallcnn", 3, 4)
    heads = TwoHeads(backbone.out_dim, 8)
    encoder = MomentumEncoder(backbone, heads, 0.99)
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.randn(5, 3, 8, 8)
    keys = encoder(images)
    torch.testing.assert_close(keys, heads(backbone(images))[0])
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(5))


def test_views_per_method() -> None:
    assert num_views(load_preset("digits-cld")) == 2
    assert num_views(apply_overrides(load_preset("digits-cld"), ["instance=moco", "queue_size=256"])) == 3
    assert num_views(apply_overrides(load_preset("digits-npid"), ["instance=moco", "queue_size=256"])) == 2


def test_queue_smaller_than_batch_is_a_clear_error() -> None:
    with pytest.raises(CrossLevelError, match="queue_size=64 is smaller than batch_size=128"):
        apply_overrides(load_preset("digits-cld"), ["instance=moco", "queue_size=64"])
    with pytest.raises(CrossLevelError, match="ema_momentum"):
        apply_overrides(load_preset("digits-cld"), ["instance=moco", "moco_momentum=1.0"])



@pytest.mark.parametrize("cld_weight", [0.0, 0.5])
def test_moco_and_cldm_steps(cld_weight: float) -> None:
    """Two steps: MoCo (2 views) or CLDm (3 views); the queue fills, the key encoder follows by EMA."""
    cfg = apply_overrides(
        load_preset("digits-cld"), TINY + ["instance=moco", "queue_size=100", "moco_momentum=0.9", f"cld_weight={cld_weight}"]
    )
    data = load_data(cfg)
    views, _ = next(iter(data.train_loader(cfg)))
    assert len(views) == (3 if cld_weight else 2)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    assert not hasattr(module, "bank")
    keys_before = module.branch.queue.keys.clone()
    key_weights_before = [p.clone() for p in module.branch.key_encoder.parameters()]
    trainer = fit_two_steps(cfg, module, data)
    logged = trainer.logged_metrics
    assert torch.isfinite(logged["loss_epoch"]) and ("loss_cld" in logged) == (cld_weight > 0)
    assert module.branch.queue.pointer.item() == 64
    changed = (module.branch.queue.keys != keys_before).any(dim=1)
    assert changed[:64].all() and not changed[64:].any()
    torch.testing.assert_close(module.branch.queue.keys[:64].norm(dim=1), torch.ones(64))
    moved = [not torch.equal(a, b) for a, b in zip(key_weights_before, module.branch.key_encoder.parameters())]
    assert any(moved)
    query = list(module.backbone.parameters()) + list(module.heads.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(query, module.branch.key_encoder.parameters()))


def test_npid_and_cld_keep_the_bank_and_have_no_key_encoder() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY)
    module = ContrastiveModule(cfg, 100, 1)
    assert module.branch.bank.memory.shape == (100, 16)
    assert not hasattr(module.branch, "key_encoder") and not hasattr(module.branch, "queue")


def test_cldm_run_resumes_its_queue_from_the_checkpoint(tmp_path) -> None:
    cfg = apply_overrides(
        load_preset("digits-cld"),
        TINY + ["instance=moco", "queue_size=80", f"out={tmp_path}", "name=cldm", "logger=csv", "cld_weight=0.8"],
    )
    run_dir, knn = train(cfg)
    assert knn is not None and 0 <= knn["top1"] <= 100
    _, module, _ = open_run(run_dir)
    assert module.branch.queue.pointer.item() == 64 % 80
    assert module.branch.key_encoder.momentum == cfg.ema_momentum


ISSUE_PRESETS = (
    "cifar10-moco", "cifar10-cldm", "cifar100-moco", "cifar100-cldm", "stl10-cld", "stl10-cldm",
    "imagenet100-cldm", "imagenet-cldm", "cifar10lt-cld", "cifar10lt-cldm", "cifar100lt-cld", "kitchen-cld",
)


@pytest.mark.parametrize("name", ISSUE_PRESETS)
def test_paper_presets_are_valid_and_described(name: str) -> None:
    descriptions = dict(preset_summary())
    assert descriptions[name]
    cfg = apply_overrides(load_preset(name), ["data=/somewhere"])
    # k < batch, except where the reference's ImageNet arithmetic is reproduced on purpose
    assert cfg.num_groups < cfg.batch_size or (name.startswith("imagenet") and cfg.groups_above_batch == "cap")
    assert ("cldm" in name or "moco" in name) == (cfg.instance == "moco")
    assert num_views(cfg) == (3 if "cldm" in name else 2)


def test_imagenet_presets_follow_design() -> None:
    imagenet = load_preset("imagenet-cldm")
    assert (imagenet.num_groups, imagenet.cld_temperature, imagenet.instance_temperature, imagenet.cld_weight) == (120, 0.4, 0.2, 0.25)
    assert imagenet.mlp and imagenet.normlinear and imagenet.augment == "v2" and imagenet.queue_size == 65536
    assert load_preset("imagenet100-cldm").class_subset == "imagenet100"
    assert load_preset("cifar10lt-cld").lt_ratio == 100



def _two_rank_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from crosslevel.methods.moco import _shuffle_across_devices, _unshuffle_across_devices

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    images = torch.arange(4.0)[:, None].repeat(1, 3) + 10 * rank  # rank r holds rows 10r .. 10r+3
    shuffled, restore = _shuffle_across_devices(images)
    restored = _unshuffle_across_devices(shuffled * 2, restore)
    queue = KeyQueue(size=10, dim=3)
    queue.enqueue(images)
    torch.save({"shuffled": shuffled, "restored": restored, "queue": queue.keys, "pointer": queue.pointer}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_shuffle_bn_and_queue_across_two_processes(tmp_path) -> None:
    torch.multiprocessing.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    everything = torch.cat([torch.arange(4.0) + 10 * r for r in range(2)])
    seen = torch.cat([r["shuffled"][:, 0] for r in results])
    assert sorted(seen.tolist()) == sorted(everything.tolist())  # each image on exactly one rank
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["restored"][:, 0], 2 * (torch.arange(4.0) + 10 * rank))
        torch.testing.assert_close(result["queue"][:8, 0], everything)  # keys of both ranks, rank order
        assert result["pointer"].item() == 8


def test_moco_v2_views_blur_jitter_and_random_erasing() -> None:
    from torchvision.transforms import v2

    from crosslevel.data.device_views import blur_kernel_size
    from crosslevel.data.views import view_transform

    assert blur_kernel_size(2.0, 224) == blur_kernel_size(2.0, 32) == 13 and blur_kernel_size(2.0, 4) == 7  # ±3σ; pad < side
    transform = view_transform("v2", 32, 3, (0.5,) * 3, (0.25,) * 3, random_erasing=1.0)
    names = [type(step).__name__ for step in transform.transforms]
    assert names[-1] == "RandomErasing" and names.count("RandomApply") == 2
    jitter, blur = (step for step in transform.transforms if isinstance(step, v2.RandomApply))
    assert jitter.p == 0.8 and isinstance(jitter.transforms[0], v2.ColorJitter)
    assert blur.p == 0.5 and blur.transforms[0].sigma == [0.1, 2.0]
    view = transform(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8))
    assert view.shape == (3, 32, 32) and view.dtype == torch.float32
