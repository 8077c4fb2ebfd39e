"""``cuda_graphs=true``: a training step that never reads a tensor back to the host, the compiled step
equal to the eager one, the deferred non-finite check, the CPU fallback and the speed in metrics.csv.

The CUDA graphs themselves need a GPU (``benchmarks/gpu_check.sh`` times and checks them there);
on the CPU ``mode=reduce-overhead`` compiles the same code without graphs, which is what runs here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_cifar10

from crosslevel import training
from crosslevel.config import apply_overrides, load_preset
from crosslevel.data import datamodule as datamodule_file
from crosslevel.errors import CrossLevelError
from crosslevel.methods import module as module_file

TINY = ["backbone=smallcnn", "width=4", "feature_dim=16", "batch_size=16", "num_groups=4", "epochs=1",
        "limit_train_batches=3", "progress=false", "workers=0", "knn_k=5", "accelerator=cpu"]  # fmt: skip
# CIFAR presets: views made on the device inside the step, erasing included; small queue and predictor
ON_DEVICE = ["augment_device=device", "random_erasing=0.5", "queue_size=64", "predictor_hidden=16"]
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostReads:
    """Records every tensor → host read (``.item()``, ``.tolist()``, ``bool(t)``, ...) made inside the
    wrapped methods: on a GPU each one is a device synchronisation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.depth = 0
        self.reads: list[str] = []
        self.monkeypatch = monkeypatch
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name: str, original: Callable) -> Callable:
        def counted(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
            if self.depth:
                self.reads.append(f"{name}() at\n" + "".join(traceback.format_stack(limit=6)[:-1]))
            return original(tensor, *args, **kwargs)

        return counted

    def watch(self, owner: type, method: str) -> None:
        """Count the reads made while ``owner.method`` runs (and everything it calls)."""
        original = getattr(owner, method)

        def watched(*args: object, **kwargs: object) -> object:
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1

        self.monkeypatch.setattr(owner, method, watched)


def _train_watching_the_step(preset: str, extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostReads:
    """Train 3 steps of ``preset`` (tiny, views on the device), counting the host reads of the step:
    the views, forward, losses, backward and optimiser update (Lightning's ``optimizer_step`` runs
    the training step inside its closure) and the branch's update after it."""
    data = write_cifar10(tmp_path / "data", per_batch=12)
    cfg = apply_overrides(load_preset(preset), [*TINY, *ON_DEVICE, f"data={data}", f"out={tmp_path}", f"name={preset}", *extra])
    reads = HostReads(monkeypatch)
    reads.watch(module_file.ContrastiveModule, "optimizer_step")
    reads.watch(datamodule_file.ContrastiveDataModule, "on_after_batch_transfer")
    reads.watch(module_file.BRANCHES[cfg.instance].__self__, "after_step")  # the branch class
    training.train(cfg)
    return reads


@pytest.mark.parametrize("preset", ["cifar10-cld", "cifar10-npid-1view", "cifar10-npid-1view nce_negatives=4096", "cifar10-cldm",
                                    "cifar10-moco", "cifar10-simclr-cld", "cifar10-byol-cld"])  # fmt: skip
def test_a_cuda_graphs_step_reads_nothing_back_to_the_host(preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compiled or not, the step's Python is the same; eager here keeps the test to seconds
    monkeypatch.setattr(module_file, "compile_mode", lambda cfg: None)
    monkeypatch.setattr(datamodule_file, "compile_mode", lambda cfg: None)
    name, *extra = preset.split()
    reads = _train_watching_the_step(name, ["cuda_graphs=true", *extra], tmp_path, monkeypatch)
    # NPID's NCE estimates its normaliser Z once, on the first batch of a fresh run
    allowed = 1 if extra == ["nce_negatives=4096"] else 0
    assert len(reads.reads) <= allowed, "\n".join(reads.reads)


def test_the_per_step_non_finite_guard_is_the_one_read_without_cuda_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _train_watching_the_step("cifar10-cld", [], tmp_path, monkeypatch)
    assert len(reads.reads) == 3 and all("any_rank" in read for read in reads.reads)  # one per step


def test_the_compiled_step_equals_the_eager_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same batch, same weights: the ``cuda_graphs`` module (compiled with mode=reduce-overhead) gives
    the eager loss, its parts, the gradients and the bank update, to rounding."""
    cfg = apply_overrides(load_preset("digits-cld"), ["width=8", "feature_dim=16", "num_groups=4"])
    torch.manual_seed(0)
    eager = module_file.ContrastiveModule(cfg, 64, 1)
    graphed = module_file.ContrastiveModule(dataclasses.replace(cfg, cuda_graphs=True), 64, 1)
    graphed.load_state_dict(eager.state_dict())
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(32, 1, 8, 8, generator=generator) for _ in range(2)]
    indices = torch.randperm(64, generator=generator)[:32]
    bank_before = eager.branch.bank.memory.clone()
    results = []
    for module in (eager, graphed):
        loss, logs = module.step_loss(views, indices)
        loss.backward()
        module.branch.after_step(module.backbone, module.heads, 0.0)
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        results.append((loss.detach(), {k: v.detach() for k, v in logs.items()}, grads, module.branch.bank.memory.clone()))
    (loss_a, logs_a, grads_a, bank_a), (loss_b, logs_b, grads_b, bank_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-5)
    assert logs_a.keys() == logs_b.keys() == {"loss_inst", "loss_cld"}
    for key in logs_a:
        torch.testing.assert_close(logs_b[key], logs_a[key], rtol=1e-4, atol=1e-5)
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(bank_a[indices], bank_before[indices])  # the batch's rows did move
    torch.testing.assert_close(bank_b, bank_a, rtol=1e-4, atol=1e-5)


def test_cuda_graphs_on_a_cpu_warns_and_logs_the_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module_file, "compile_mode", lambda cfg: None)  # the fallback message, not the compiler, is tested
    monkeypatch.setattr(datamodule_file, "compile_mode", lambda cfg: None)
    cfg = apply_overrides(load_preset("digits-cld"), [*TINY, "epochs=2", f"out={tmp_path}", "name=run", "cuda_graphs=true"])
    with pytest.warns(UserWarning, match=r"cuda_graphs=true needs a CUDA GPU \(this run trains on cpu\): compiled without CUDA graphs"):
        training.train(cfg)
    rows = [row for row in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if row["steps_per_s"]]
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row in rows:
        assert float(row["steps_per_s"]) > 0
        assert float(row["images_per_s"]) == pytest.approx(float(row["steps_per_s"]) * 16, rel=1e-3)


def test_parts_run_without_cuda_graphs_are_named_at_the_end_and_in_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor's own skip warnings (as torch 2.x words them), raised here during training, become one warning
    and summary.json's cudagraph_skips; a run without cuda_graphs records nothing."""
    from torch._inductor.cudagraph_utils import cudagraphs_log

    monkeypatch.setattr(module_file, "compile_mode", lambda cfg: None)
    monkeypatch.setattr(datamodule_file, "compile_mode", lambda cfg: None)
    original = module_file.ContrastiveModule.on_train_start

    def on_train_start(self) -> None:
        original(self)
        for _ in range(2):  # a part recompiled is skipped again: named once
            cudagraphs_log.warning("skipping cudagraphs due to mutated inputs (1 instances). Found from : \n"
                                   '   File "/x/module.py", line 140, in step\n    bank.index_copy_(0, i, f)\n'
                                   '   File "/x/branch.py", line 7, in update\n    x.add_(1)')  # fmt: skip
        cudagraphs_log.warning("skipping cudagraphs due to cpu device (arg1_1)")

    monkeypatch.setattr(module_file.ContrastiveModule, "on_train_start", on_train_start)
    cfg = apply_overrides(load_preset("digits-cld"), [*TINY, f"out={tmp_path}", "name=run", "cuda_graphs=true"])
    with pytest.warns(UserWarning) as caught:
        training.train(cfg)
    expected = ['skipping cudagraphs due to mutated inputs (1 instances) (File "/x/branch.py", line 7, in update)',
                "skipping cudagraphs due to cpu device (arg1_1)"]  # fmt: skip
    assert f"cuda_graphs=true: Inductor ran 2 compiled part(s) without CUDA graphs, kernel by kernel (first: {expected[0]})" in [
        str(w.message).split("; summary.json")[0] for w in caught
    ]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cudagraph_skips"] == expected
    with training.recording_cudagraph_skips(enabled=False) as skips:
        cudagraphs_log.warning("skipping cudagraphs due to cpu device (arg1_1)")
    assert skips == []


def test_skips_counted_without_a_warning_are_reported_as_unexplained() -> None:
    """Some torch versions count a skipped graph without warning (or warn on another logger): the counter's
    excess over the warnings seen becomes one line; a warned skip is not counted twice."""
    from torch._dynamo.utils import counters
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    with training.recording_cudagraph_skips() as skips:
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to cpu device (arg1_1)")
        log_cudagraph_skip_and_bump_counter("skipping cudagraph due to function 3 exceeding max re-recording limit (=8)")
        counters["inductor"]["cudagraph_skips"] += 2
    assert skips == ["skipping cudagraphs due to cpu device (arg1_1)",
                     "skipping cudagraph due to function 3 exceeding max re-recording limit (=8)",
                     "2 skip(s) counted by Inductor without a warning (TORCH_LOGS=perf_hints,cudagraphs may name them)"]  # fmt: skip
    with training.recording_cudagraph_skips() as skips:
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to cpu device (arg1_1)")
    assert skips == ["skipping cudagraphs due to cpu device (arg1_1)"]
    with training.recording_cudagraph_skips(on_cuda=False) as skips:  # a CPU run counts every compiled graph as skipped
        counters["inductor"]["cudagraph_skips"] += 8
    assert skips == []


def test_a_non_finite_loss_under_cuda_graphs_stops_before_any_checkpoint_holds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module_file, "compile_mode", lambda cfg: None)
    monkeypatch.setattr(datamodule_file, "compile_mode", lambda cfg: None)
    objective = module_file.ContrastiveModule.objective

    def poisoned(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        loss, logs = objective(self, *args, **kwargs)
        return (loss * float("nan") if self.trainer.current_epoch == 1 else loss), logs

    monkeypatch.setattr(module_file.ContrastiveModule, "objective", poisoned)
    cfg = apply_overrides(load_preset("digits-cld"), [*TINY, "epochs=3", f"out={tmp_path}", "name=run", "cuda_graphs=true"])
    with pytest.warns(UserWarning, match="cuda_graphs"), pytest.raises(CrossLevelError, match=r"non-finite before step \d+ \(epoch 2\)"):
        training.train(cfg)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0  # the end of epoch 1: nothing of epoch 2 was saved
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cuda_graphs=true", "skip_nonfinite=true"], "skip_nonfinite=true reads every step's loss on the host"),
        (["cuda_graphs=true", "grouping=ncuts"], "cuda_graphs=true needs grouping=kmeans"),
    ],
)
def test_cuda_graphs_rejects_what_needs_the_host(overrides: list[str], message: str) -> None:
    with pytest.raises(CrossLevelError, match=message):
        apply_overrides(load_preset("cifar10-cld"), overrides)


def test_compiled_evaluation_pads_a_smaller_last_batch_to_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled, eval mode: the last, smaller batch is padded to the largest so far and cut off again, so the
    compiled backbone sees one shape; the features equal the eager ones of the unpadded batch."""
    cfg = apply_overrides(load_preset("digits-cld"), TINY)
    module = module_file.ContrastiveModule(cfg, 64, 1).eval()  # built eager: the padding, not the compiler, is tested
    images = torch.randn(13, 1, 8, 8)
    expected = {feature: module.embed(images[8:], feature) for feature in ("f", "f_I", "f_G")}
    shapes: list[int] = []
    module.backbone.register_forward_pre_hook(lambda _, args: shapes.append(len(args[0])))
    monkeypatch.setattr(module_file, "compile_mode", lambda cfg: "default")
    full = module.embed(images[:8])
    for feature, wanted in expected.items():
        torch.testing.assert_close(module.embed(images[8:], feature), wanted)
    assert full.shape == (8, 16) and shapes == [8, 8, 8, 8]  # the 5-image batch went through as 8
    module.train()
    module.embed(images[8:])  # training mode (BatchNorm's batch statistics): never padded
    assert shapes[-1] == 5
