"""DDP on two CPU processes (gloo) gives what one process computes on the same global batches."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from ddp_helpers import assert_ranks_match, run_on_ranks
from torch.nn.parallel import DistributedDataParallel

import crosslevel.data.sampling as sampling
from crosslevel.config import apply_overrides, load_preset
from crosslevel.data.sampling import ResumableSampler
from crosslevel.distributed import any_rank
from crosslevel.methods import ContrastiveModule, MemoryBank

BANK_ROWS, DIM, LOCAL_BATCH, STEPS = 40, 8, 5, 3
MODULE_OVERRIDES = ["width=8", "feature_dim=16", "num_groups=3", "batch_size=6"]


def global_batches(steps: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of (indices, unit features): distinct indices within a step."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        indices = torch.randperm(BANK_ROWS, generator=generator)[: LOCAL_BATCH * world_size]
        features = torch.nn.functional.normalize(torch.randn(len(indices), DIM, generator=generator), dim=1)
        batches.append((indices, features))
    return batches


def bank_worker(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    bank = MemoryBank(BANK_ROWS, DIM, momentum=0.5)
    share = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    for indices, features in global_batches(STEPS, world_size):
        bank.update(indices[share], features[share])  # each rank passes only its own share
    return {"bank": bank.memory}


def test_bank_update_under_ddp_equals_single_process() -> None:
    torch.manual_seed(0)
    reference = MemoryBank(BANK_ROWS, DIM, momentum=0.5)
    for indices, features in global_batches(STEPS, world_size=2):
        reference.update(indices, features)
    assert_ranks_match(run_on_ranks(bank_worker), {"bank": reference.memory})


def tiny_module() -> ContrastiveModule:
    torch.manual_seed(0)
    cfg = apply_overrides(load_preset("digits-cld"), MODULE_OVERRIDES)
    return ContrastiveModule(cfg, num_train=BANK_ROWS, in_channels=1)


def global_views(world_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    size = 6 * world_size
    views = [torch.randn(size, 1, 8, 8, generator=generator) for _ in range(2)]
    return views, torch.randperm(BANK_ROWS, generator=generator)[:size]


def step_worker(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """One DDP training step of the real module: gradients after the all-reduce and the updated bank."""
    module = tiny_module()
    model = DistributedDataParallel(module)  # honours the module's list of buffers DDP must not broadcast
    assert not any(buffer is module.branch.bank.memory for buffer in model.modules_buffers)
    views, indices = global_views(world_size)
    share = slice(rank * 6, (rank + 1) * 6)
    outputs = [model(v[share]) for v in views]  # one pass per view, as in training_step
    instance_views = [instance for _, instance, _ in outputs]
    loss, _ = module.objective(instance_views, [group for _, _, group in outputs], indices[share])
    loss.backward()
    for features in instance_views:
        module.branch.bank.update(indices[share], features.detach())
    result = {f"grad.{name}": p.grad for name, p in module.named_parameters()}
    result["bank"] = module.branch.bank.memory
    result["nonfinite_anywhere"] = torch.tensor(any_rank(torch.tensor(rank == 1)))
    return result


def test_gradients_and_bank_under_ddp_equal_single_process() -> None:
    """Reference: the same global batch in one process, BN statistics per view and device share and
    k-means per device share (as DDP without SyncBN computes them), loss averaged over the shares as DDP averages gradients."""
    module = tiny_module()
    views, indices = global_views(world_size=2)
    losses, features = [], []
    for share in (slice(0, 6), slice(6, 12)):
        outputs = [module(v[share]) for v in views]
        instance_views = [instance for _, instance, _ in outputs]
        losses.append(module.objective(instance_views, [group for _, _, group in outputs], indices[share])[0])
        features.append(instance_views)
    torch.stack(losses).mean().backward()
    for view in range(2):  # the bank sees the whole global batch, view by view, in rank order
        module.branch.bank.update(indices, torch.cat([f[view] for f in features]).detach())
    reference = {f"grad.{name}": p.grad for name, p in module.named_parameters()}
    reference["bank"] = module.branch.bank.memory
    reference["nonfinite_anywhere"] = torch.tensor(True)  # rank 1 alone raised the flag
    assert_ranks_match(run_on_ranks(step_worker), reference, atol=1e-6, rtol=1e-5)


def test_sampler_deals_disjoint_equal_shares_in_a_seeded_order(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = ResumableSampler(count=11, seed=3)
    monkeypatch.setattr(sampling, "world_size", lambda: 2)
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(sampling, "rank", lambda r=r: r)
        shares.append(list(sampler))
    assert len(shares[0]) == len(shares[1]) == len(sampler) == 5  # 11 // 2; the 11th image sits out
    assert not set(shares[0]) & set(shares[1])
    permutation = sampler.permutation(0).tolist()
    assert shares[0] == permutation[0:10:2] and shares[1] == permutation[1:10:2]
    assert shares[1] == list(sampler)  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != shares[1]  # a new epoch, a new order
    assert ResumableSampler(11, seed=3).permutation(1).tolist() == sampler.permutation(1).tolist()


def test_sampler_fast_forward_continues_the_epoch_and_resets_at_the_next() -> None:
    sampler = ResumableSampler(count=12, seed=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.fast_forward(2, consumed=5)
    assert list(sampler) == whole[5:] and len(sampler) == 12  # the length the trainer plans with is the epoch's
    sampler.set_epoch(2)  # the trainer announcing the same epoch keeps the position
    assert list(sampler) == whole[5:]
    sampler.set_epoch(3)
    assert len(list(sampler)) == 12


@pytest.mark.parametrize("preset", ["digits-cld", "digits-npid"])
def test_training_with_lightning_ddp_on_two_cpu_processes(tmp_path: Path, preset: str) -> None:
    """The whole path: Lightning DDP (forked ranks), sharded sampler, gathered bank, kNN on rank 0."""
    from crosslevel.training import train

    cfg = apply_overrides(
        load_preset(preset),
        [
            "accelerator=cpu", "devices=2", "strategy=ddp_fork", "epochs=1", "limit_train_batches=2",
            "width=8", "feature_dim=16", "batch_size=16", "num_groups=4", "workers=0", "progress=false",
            "knn_k=10", f"out={tmp_path}", "name=ddp",
        ],
    )  # fmt: skip
    run_dir, knn = train(cfg)
    assert knn is not None and 0 <= knn["top1"] <= 100
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    pl.seed_everything(cfg.seed, verbose=False)  # as train() does before building the module
    initial = ContrastiveModule(cfg, len(saved["state_dict"]["branch.bank.memory"]), in_channels=1).branch.bank.memory
    updated = (saved["state_dict"]["branch.bank.memory"] != initial).any(dim=1)
    assert int(updated.sum()) == 2 * 2 * 16  # 2 steps × 2 ranks × 16 images, each image once
