"""DDP on two CPU processes (gloo) gives what one process computes on the same global batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import children_of, signal_a_training_run
from ddp_helpers import assert_ranks_match, run_on_ranks
from torch.nn.parallel import DistributedDataParallel

import crosslevel.data.sampling as sampling
from crosslevel.config import apply_overrides, load_preset
from crosslevel.data.sampling import ResumableSampler
from crosslevel.cluster import group_batch
from crosslevel.distributed import any_rank
from crosslevel.losses import CrossLevelLoss, cld_loss
from crosslevel.methods import ContrastiveModule, MemoryBank
from crosslevel.run_dir import read_run

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


GROUP_ROWS, GROUP_DIM, GLOBAL_K = 6, 5, 8  # per rank; k = 8 > the 6 rows of a device, < the 12 of both


def global_group_views(world_size: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    a = torch.nn.functional.normalize(torch.randn(GROUP_ROWS * world_size, GROUP_DIM, generator=generator, dtype=dtype), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(a.shape, generator=generator, dtype=dtype), dim=1)
    return a, b


def global_cld_worker(rank: int, world_size: int, grouping: str) -> dict[str, torch.Tensor]:
    """This rank's CLD term under ``kmeans_scope=global`` and its gradient w.r.t. its own features."""
    share = slice(rank * GROUP_ROWS, (rank + 1) * GROUP_ROWS)
    views = [v[share].clone().requires_grad_(True) for v in global_group_views(world_size)]
    loss = CrossLevelLoss(GLOBAL_K, grouping=grouping, scope="global", eigenvectors=4)(*views)
    loss.backward()
    return {"loss": loss.detach(), "grad_a": views[0].grad, "grad_b": views[1].grad}


@pytest.mark.parametrize("grouping", ["kmeans", "ncuts"])
def test_global_scope_cld_equals_one_process_on_the_concatenated_batch(grouping: str) -> None:
    """Each rank: the global batch's groups, the cross-entropy of its own rows; the mean over ranks is
    one process's loss on the concatenated batch, and each rank's feature gradient is W times that
    loss's gradient on its rows (W·∂(mean)/∂x_r = Σ_s ∂L_s/∂x_r, which DDP then averages)."""
    world = 2
    views = [v.clone().requires_grad_(True) for v in global_group_views(world)]
    whole = cld_loss(*views, GLOBAL_K, grouping=grouping, eigenvectors=4)
    whole.backward()
    (labels_a, centroids_a), (labels_b, centroids_b) = (group_batch(v.detach(), GLOBAL_K, 5, grouping, 4) for v in views)
    results = run_on_ranks(global_cld_worker, grouping, world_size=world)
    for rank, result in enumerate(results):
        share = slice(rank * GROUP_ROWS, (rank + 1) * GROUP_ROWS)
        a, b = (v.detach()[share] for v in views)
        ce = torch.nn.functional.cross_entropy
        own = 0.5 * (ce(a @ centroids_b.t() / 0.2, labels_b[share]) + ce(b @ centroids_a.t() / 0.2, labels_a[share]))
        torch.testing.assert_close(result["loss"], own, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(result["grad_a"] / world, views[0].grad[share], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(result["grad_b"] / world, views[1].grad[share], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), whole.detach())
    assert len(labels_a.unique()) > GROUP_ROWS  # more groups than one device's rows: real global groups


LINEAR_IN = 7


def linear_inputs(world_size: int) -> torch.Tensor:
    """Two views' inputs, side by side: global batch × 2·LINEAR_IN."""
    return torch.randn(GROUP_ROWS * world_size, 2 * LINEAR_IN, generator=torch.Generator().manual_seed(6))


def linear_cld(layer: torch.nn.Module, inputs: torch.Tensor, grouping: str) -> torch.Tensor:
    """The global-scope CLD term of a linear group head on both views (one forward for both)."""
    rows = len(inputs)
    group = torch.nn.functional.normalize(layer(torch.cat([inputs[:, :LINEAR_IN], inputs[:, LINEAR_IN:]])), dim=1)
    return CrossLevelLoss(GLOBAL_K, grouping=grouping, scope="global", eigenvectors=4)(group[:rows], group[rows:])


def linear_ddp_worker(rank: int, world_size: int, grouping: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(LINEAR_IN, GROUP_DIM)
    model = DistributedDataParallel(layer)
    linear_cld(model, linear_inputs(world_size)[rank * GROUP_ROWS : (rank + 1) * GROUP_ROWS], grouping).backward()
    return {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("grouping", ["kmeans", "ncuts"])
def test_global_scope_weight_gradients_under_ddp_equal_one_process(grouping: str) -> None:
    """End to end: a linear group head wrapped in DDP (gradients averaged over ranks) gets the
    gradients one process computes for the concatenated batch."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(LINEAR_IN, GROUP_DIM)
    linear_cld(layer, linear_inputs(world_size=2), grouping).backward()
    reference = {name: p.grad for name, p in layer.named_parameters()}
    assert_ranks_match(run_on_ranks(linear_ddp_worker, grouping), reference, atol=1e-6, rtol=1e-5)


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


@pytest.mark.parametrize(
    "preset,groups",
    [("digits-cld", ["num_groups=4"]), ("digits-npid", ["num_groups=4"]), ("digits-cld", ["num_groups=20", "kmeans_scope=global"])],
)
def test_training_with_lightning_ddp_on_two_cpu_processes(tmp_path: Path, preset: str, groups: list[str]) -> None:
    """The whole path: Lightning DDP (forked ranks), sharded sampler, gathered bank, kNN on rank 0;
    with kmeans_scope=global, k = 20 groups over the 2 × 16 images of a step."""
    from crosslevel.training import train

    cfg = apply_overrides(
        load_preset(preset),
        [
            "accelerator=cpu", "devices=2", "strategy=ddp_fork", "epochs=1", "limit_train_batches=2",
            "width=8", "feature_dim=16", "batch_size=16", *groups, "workers=0", "progress=false",
            "knn_k=10", f"out={tmp_path}", "name=ddp",
        ],
    )  # fmt: skip
    run_dir, knn = train(cfg)
    assert knn is not None and 0 <= knn["top1"] <= 100
    summary = json.loads((run_dir / "summary.json").read_text())  # written by the parent, which trained nothing itself
    assert summary["epochs"] == 1 and summary["knn_best"]["epoch"] == 1 and read_run(run_dir).status == "finished"
    assert len(summary["epoch_seconds"]) == 1 and 0 < summary["epoch_seconds"][0] <= summary["train_seconds"] + 0.05  # the ranks' times
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    pl.seed_everything(cfg.seed, verbose=False)  # as train() does before building the module
    initial = ContrastiveModule(cfg, len(saved["state_dict"]["branch.bank.memory"]), in_channels=1).branch.bank.memory
    updated = (saved["state_dict"]["branch.bank.memory"] != initial).any(dim=1)
    assert int(updated.sum()) == 2 * 2 * 16  # 2 steps × 2 ranks × 16 images, each image once


@pytest.mark.parametrize(("strategy", "to_group", "signal_name"), [("ddp", True, "SIGTERM"), ("ddp_fork", False, "SIGTERM"), ("ddp_fork", True, "SIGINT")])
def test_two_process_runs_stop_with_one_checkpoint_on_a_signal(tmp_path: Path, strategy: str, to_group: bool, signal_name: str) -> None:
    """A signal to the launching process, or to every process at once (Ctrl-C, a scheduler): the ranks
    stop together at a step boundary, the checkpoint is written, one stop line, the signal's exit code.
    (Lightning's own handler hung such runs: it calls a collective inside the signal handler.)"""
    run = tmp_path / "runs" / "two"
    command = [sys.executable, "-m", "crosslevel", "train", "--config", "digits-cld", "width=8", "epochs=500", "devices=2",
               f"strategy={strategy}", "workers=1", "progress=false", f"out={tmp_path / 'runs'}", "name=two"]  # fmt: skip
    number = getattr(signal, signal_name)
    code, err = signal_a_training_run(command, run, lambda p: os.killpg(p.pid, number) if to_group else p.send_signal(number))
    assert code == 128 + number, err
    assert err.count(f"crosslevel: stopped by {signal_name}; resumable checkpoint") == 1, err
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] > 0 and read_run(run).status == "interrupted"


def test_a_two_process_run_with_its_progress_bar_ends(tmp_path: Path) -> None:
    """The progress bar (shown by rank 0 alone) reads the epoch's metrics, reduced over the ranks: read on
    one rank only, those collectives paired with another rank's checkpoint barrier and the run hung at
    its first epoch's end (tests elsewhere train with progress=false)."""
    command = [sys.executable, "-m", "crosslevel", "train", "--config", "digits-cld", "width=8", "epochs=2", "warmup_epochs=0",
               "devices=2", "workers=0", f"out={tmp_path}", "name=bar"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "Epoch 2/2: 100%" in done.stderr and "images_per_s=" in done.stderr
    assert json.loads((tmp_path / "bar" / "summary.json").read_text())["epochs"] == 2


def test_ddp_spawn_rank_processes_keep_lightnings_output_hidden(tmp_path: Path) -> None:
    """The ranks of ddp_spawn are fresh interpreters: Lightning's lines ("Initializing distributed ...") and
    warnings are hidden there too, as in the launching process (``--verbose`` shows them)."""
    command = [sys.executable, "-m", "crosslevel", "train", "--config", "digits-cld", "width=8", "epochs=1", "warmup_epochs=0",
               "devices=2", "strategy=ddp_spawn", "workers=0", "progress=false", f"out={tmp_path}", "name=quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("to_group", [True, False])
def test_a_ddp_spawn_run_signalled_while_it_starts_its_ranks_stops(tmp_path: Path, to_group: bool) -> None:
    """SIGTERM while the parent of a ddp_spawn launch is still starting the rank processes (it writes the
    pickled trainer to each, and one killed unread would leave it waiting forever): the run ends, exit 143,
    one stop line; no rank trained, so there is nothing to resume and no run directory is left."""
    run = tmp_path / "runs" / "two"
    command = [sys.executable, "-m", "crosslevel", "train", "--config", "digits-cld", "width=8", "epochs=500", "devices=2",
               "strategy=ddp_spawn", "workers=0", "progress=false", f"out={tmp_path / 'runs'}", "name=two"]  # fmt: skip
    spawning = lambda process: any("spawn_main" in line for line in children_of(process.pid))  # noqa: E731
    send = (lambda p: os.killpg(p.pid, signal.SIGTERM)) if to_group else (lambda p: p.send_signal(signal.SIGTERM))
    code, err = signal_a_training_run(command, run, send, ready=spawning)
    assert code == 143, err
    assert err.count("crosslevel: stopped by SIGTERM before training began: nothing to resume") == 1, err
    assert not run.exists()
