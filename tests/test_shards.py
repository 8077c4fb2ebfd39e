"""Packed tar shards: `crosslevel pack`, dataset=shards in memory and streamed, per-rank shares, resume, damage."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import signal_a_training_run, write_image_folder
from ddp_helpers import run_on_ranks

pytest.importorskip("webdataset", reason="webdataset is not installed (pip install 'crosslevel[shards]')")

import crosslevel.data.shards as shards  # noqa: E402
from crosslevel.cli import main  # noqa: E402
from crosslevel.config import apply_overrides, load_preset  # noqa: E402
from crosslevel.data.shards import ShardImages, load_shard_split, pack, shard_loader, worker_ranges  # noqa: E402
from crosslevel.data.folders import load_folder_split  # noqa: E402
from crosslevel.data.sources import load_digits_split  # noqa: E402
from crosslevel.errors import CrossLevelError  # noqa: E402
from crosslevel.methods import ContrastiveModule  # noqa: E402

TINY = ["width=8", "feature_dim=16", "num_groups=3", "epochs=1", "workers=0", "progress=false", "knn_k=5", "accelerator=cpu", "warmup_epochs=0"]


def identity(image: torch.Tensor) -> torch.Tensor:
    return image


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "digits"
    pack("digits", None, out, shard_size=128, seed=1)
    return out


def test_packed_digits_decode_to_the_source_images_in_its_order(digits_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = json.loads((digits_pack / "index.json").read_text())
    assert [len(part["shards"]) for part in index["splits"].values()] == [11, 4]  # 1,347 and 450 images, 128 a shard
    for split in ("train", "test"):
        source, packed = load_digits_split(split), load_shard_split(str(digits_pack), split)
        np.testing.assert_array_equal(packed.images, source.images)
        np.testing.assert_array_equal(packed.labels, source.labels)
        assert (packed.classes, packed.mean, packed.std) == (source.classes, source.mean, source.std)
    monkeypatch.setattr(shards, "shard_samples", None)  # decoded again: from the decoded-image cache, no shard opened
    np.testing.assert_array_equal(load_shard_split(str(digits_pack), "test").images, source.images)
    monkeypatch.undo()
    stream = load_shard_split(str(digits_pack), "train", in_memory=False)
    first = [sample.index for sample in stream.samples(0, 5)]
    assert first != sorted(first)  # written in a seeded random order, each sample with its source index


@pytest.mark.parametrize("url", ["file", "pipe"])
def test_a_url_location_streams_the_same_samples(digits_pack: Path, url: str) -> None:
    local = load_shard_split(str(digits_pack), "test", in_memory=False)
    location = digits_pack.as_uri() if url == "file" else f"pipe:cat {digits_pack}/{{}}"
    remote = load_shard_split(location, "test", in_memory=False)
    assert [s.index for s in remote.samples()] == [s.index for s in local.samples()]
    # from mid-shard: a local shard seeks to the sample's header, a remote one reads through to it
    assert [s.index for s in remote.samples(130, 300)] == [s.index for s in local.samples(130, 300)] != []


def test_pack_and_read_errors_name_the_problem(tmp_path: Path, digits_pack: Path) -> None:
    with pytest.raises(CrossLevelError, match="data path does not exist"):
        pack("folder", str(tmp_path / "missing"), tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CrossLevelError, match="exists and is not empty"):
        pack("digits", None, tmp_path / "full")
    with pytest.raises(CrossLevelError, match="no index.json"):
        load_shard_split(str(tmp_path / "full"), "train")
    with pytest.raises(CrossLevelError, match="no test split"):
        folder = write_image_folder(tmp_path / "images")
        (tmp_path / "flat").mkdir()
        for path in sorted((folder / "train" / "class0").iterdir()):
            path.rename(tmp_path / "flat" / path.name)
        pack("folder", str(tmp_path / "flat"), tmp_path / "flat-pack")
        load_shard_split(str(tmp_path / "flat-pack"), "test")


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_damaged_shard_is_one_error_naming_it(tmp_path: Path, digits_pack: Path, in_memory: bool) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in digits_pack.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    shard = damaged / "test-000002.tar"
    shard.write_bytes(shard.read_bytes()[:20_000])  # cut inside its samples
    with pytest.raises(CrossLevelError, match="^damaged shard .*test-000002.tar .*pack the data set again$"):
        images = load_shard_split(str(damaged), "test", image_size=8, in_memory=in_memory)
        for _ in shard_loader(images, identity, 1, batch=8, buffer=8, seed=0, workers=1):  # raised in a worker process
            pass


def test_pack_command_prints_counts_and_refuses_a_full_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_image_folder(tmp_path / "images")
    assert main(["pack", str(folder), str(tmp_path / "packed"), "--shard-size", "5"]) == 0
    assert "train: 12 images in 3 shards, 3 classes" in capsys.readouterr().out
    assert main(["pack", str(folder), str(tmp_path / "packed")]) == 2
    assert capsys.readouterr().err.strip().endswith("give a new or empty folder to pack into")


def test_training_from_shards_equals_training_from_the_folder(tmp_path: Path) -> None:
    """Same seed, same images at the same indices: the same weights and bank, bit for bit."""
    from crosslevel.training import train

    folder = write_image_folder(tmp_path / "images", classes=3, per_class=8)
    pack("folder", str(folder), tmp_path / "packed", shard_size=7, seed=3)
    states = []
    for name, source in (("folder", f"dataset=folder data={folder}"), ("shards", f"dataset=shards data={tmp_path / 'packed'}")):
        cfg = apply_overrides(load_preset("digits-cld"), [*source.split(), *TINY, "batch_size=8", f"out={tmp_path}", f"name={name}"])
        run_dir, knn = train(cfg)
        assert knn is not None
        states.append(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], atol=0, rtol=0, msg=key)
    assert load_folder_split(folder, "train").labels.tolist() == load_shard_split(str(tmp_path / "packed"), "train").labels.tolist()


def streamed_config(tmp_path: Path, name: str, *extra: str):
    """NPID (one view, no CLD) on 24 packed 16-px images streamed, batches of 8."""
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=8)
    if not (tmp_path / "packed").is_dir():
        pack("folder", str(folder), tmp_path / "packed", shard_size=5)
    overrides = [f"data={tmp_path / 'packed'}", "dataset=shards", "in_memory=false", "image_size=16", *TINY, "batch_size=8", "npid_views=1", "cld_weight=0"]
    return apply_overrides(load_preset("digits-npid"), [*overrides, f"out={tmp_path}", f"name={name}", *extra])


def updated_rows(cfg, run_dir: Path) -> int:
    """Rows of the run's memory bank that training changed."""
    bank = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["branch.bank.memory"]
    pl.seed_everything(cfg.seed, verbose=False)  # as train() does before building the module
    return int((bank != ContrastiveModule(cfg, 24, in_channels=3).branch.bank.memory).any(dim=1).sum())


@pytest.mark.parametrize("devices,epochs,updated", [("1", 2, 24), ("2", 1, 16)])
def test_streamed_training_updates_each_bank_row_once_per_image(tmp_path: Path, devices: str, epochs: int, updated: int) -> None:
    """One process: 3 steps of 8 of the 24 images an epoch; Lightning DDP on two CPU processes: 12 images a
    rank, one step of 8 each, 16 distinct rows (the ranks read disjoint parts and take the same number of steps)."""
    from crosslevel.training import train

    cfg = streamed_config(tmp_path, "stream", f"devices={devices}", f"epochs={epochs}", *(["strategy=ddp_fork"] if devices != "1" else []))
    run_dir, knn = train(cfg)
    assert knn is not None and 0 <= knn["top1"] <= 100
    assert updated_rows(cfg, run_dir) == updated
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["crosslevel_resume"]["epoch"] == epochs  # Lightning's set_epoch reached the stream's position


def test_a_streamed_run_stopped_mid_epoch_resumes_with_the_images_not_yet_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_fault_tolerance import resume, signal_at_step

    from crosslevel.errors import TrainingInterrupted
    from crosslevel.training import train

    signal_at_step(monkeypatch, step=1)  # after the first of the epoch's 3 batches
    cfg = streamed_config(tmp_path, "stopped")
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    monkeypatch.undo()
    run_dir, _ = resume(tmp_path / "stopped")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and updated_rows(cfg, run_dir) == 24  # the epoch continued: every image once


@pytest.mark.parametrize("count,world,batch,workers", [(40, 2, 4, 1), (41, 2, 4, 3), (100, 3, 5, 2), (97, 4, 3, 4)])
def test_worker_ranges_deal_disjoint_whole_batches_and_resume_in_order(count: int, world: int, batch: int, workers: int) -> None:
    steps = count // world // batch
    for rank in range(world):
        ranges = [worker_ranges(count, rank, world, batch, workers, w, 0) for w in range(workers)]
        covered = sorted(p for first, _, stop in ranges for p in range(first, stop))
        share = count // world
        assert covered == list(range(rank * share, rank * share + steps * batch))  # the rank's share, each position once
        # the loader's order: batch k from worker k mod workers; after s batches the rest, in that order
        order = [b for k in range(steps) for b in [_nth_batch(ranges, k, workers, batch)]]
        for done in range(steps + 1):
            resumed = [worker_ranges(count, rank, world, batch, workers, w, done * batch) for w in range(workers)]
            rest = [_nth_batch([(start, start, stop) for _, start, stop in resumed], k, workers, batch) for k in range(steps - done)]
            assert rest == order[done:]


def _nth_batch(ranges: list[tuple[int, int, int]], k: int, workers: int, batch: int) -> int:
    """The first position of the k-th batch a DataLoader yields from workers reading ``ranges`` in turn."""
    given = [0] * workers
    worker = 0
    for _ in range(k + 1):
        while ranges[worker][1] + given[worker] * batch >= ranges[worker][2]:
            worker = (worker + 1) % workers
        position = ranges[worker][1] + given[worker] * batch
        given[worker] += 1
        worker = (worker + 1) % workers
    return position


def _stream_indices(images: ShardImages, workers: int, consumed: int = 0, epoch: int = 0) -> list[int]:
    loader = shard_loader(images, identity, 1, batch=4, buffer=6, seed=0, workers=workers)
    loader.sampler.fast_forward(epoch, consumed)
    return [int(i) for _, indices in loader for i in indices]


def stream_worker(rank: int, world_size: int, location: str) -> dict[str, torch.Tensor]:
    images = load_shard_split(location, "train", image_size=16, in_memory=False)
    return {"epoch0": torch.tensor(_stream_indices(images, 0)), "epoch1": torch.tensor(_stream_indices(images, 0, epoch=1))}


def test_two_gloo_ranks_read_disjoint_shares_whose_union_is_the_data_set(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", classes=4, per_class=10)
    pack("folder", str(folder), tmp_path / "packed", shard_size=7)
    results = run_on_ranks(stream_worker, str(tmp_path / "packed"))
    for epoch in ("epoch0", "epoch1"):
        shares = [set(result[epoch].tolist()) for result in results]
        assert len(shares[0]) == len(shares[1]) == 20 and not shares[0] & shares[1]
        assert shares[0] | shares[1] == set(range(40))
    assert results[0]["epoch0"].tolist() != results[0]["epoch1"].tolist()  # another shard order and shuffle


def test_a_resumed_stream_continues_the_epoch_with_worker_processes(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=10)
    pack("folder", str(folder), tmp_path / "packed", shard_size=7)
    images = load_shard_split(str(tmp_path / "packed"), "train", image_size=16, in_memory=False)
    whole = _stream_indices(images, workers=2)
    assert sorted(whole) == sorted(set(whole)) and len(whole) == 28  # 7 batches of 4 of the 30
    assert _stream_indices(images, workers=2, consumed=12) == whole[12:]


def test_torchrun_ranks_streaming_shards_stop_on_sigterm_with_one_checkpoint(tmp_path: Path, digits_pack: Path) -> None:
    """torchrun passes a SIGTERM on to each rank's whole process group, loader workers included: the
    ranks still stop at a step boundary, rank 0 writes the resumable checkpoint and says so once."""
    import signal
    import sys

    run = tmp_path / "runs" / "tr"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "crosslevel", "train",
        "--config", "digits-cld", "dataset=shards", f"data={digits_pack}", "in_memory=false", "image_size=16", "workers=1",
        "width=8", "feature_dim=16", "epochs=500", "progress=false", f"out={tmp_path / 'runs'}", "name=tr",
    ]  # fmt: skip
    _, err = signal_a_training_run(command, run, lambda process: process.send_signal(signal.SIGTERM), cwd=tmp_path)
    assert err.count("crosslevel: stopped by SIGTERM; resumable checkpoint") == 1, err  # torchrun itself exits 1
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] > 0 and "crosslevel_resume" in saved
