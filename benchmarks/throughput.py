"""Training throughput of NPID, CLD, MoCo and CLDm side by side, on one device.

For each method (its CIFAR-10 preset, with the model / batch / precision given here) the script
trains ``--warmup + --steps`` steps with Lightning on synthetic uint8 images of CIFAR's shape
(throughput does not depend on the pixels), and reports:

* images/s and ms per step over the timed steps (data, views, forward, backward, optimiser, bank
  or queue update: a whole training iteration), the median over ``--repeats`` rounds that visit
  the methods in turn, so that a shared machine's load affects all methods alike (each method's
  module trains on from round to round: compiled once); the epoch time
  this implies for ``--train-size`` images, and the step time relative to NPID;
* CLD/NPID and CLDm/MoCo step-time ratios per round (the methods of a round run back to back),
  with their median and range over the rounds;
* the time of the k-means + CLD loss (forward and backward, both views) and its share of the step;
* the data pipeline alone: ms per batch of views made on the device (``augment_device=device``,
  the MoCo presets' random erasing included) and by torchvision in ``--workers`` loader processes
  (``augment_device=cpu``).

The k-means + CLD and view timings run at the end of training, on the device the module trained
on (Lightning's teardown moves it back to the CPU after ``fit``). ``--json`` is rewritten after
every measured round of a method, so a method that fails (it is named, and the others go on)
loses no rows. Methods whose preset is not installed are skipped with a note.

Examples::

    python benchmarks/throughput.py                                   # GPU, ResNet-18, batch 256, bf16
    python benchmarks/throughput.py --device cpu --width 8 --batch 64 --steps 5 --precision 32-true
    python benchmarks/throughput.py --methods npid,cld --json throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
import traceback
import warnings
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import torch

from crosslevel.config import Config, apply_overrides, load_preset, preset_names
from crosslevel.data.images import InMemoryImages
from crosslevel.data.sources import CIFAR_MEAN, CIFAR_STD
from crosslevel.errors import CrossLevelError
from crosslevel.losses import bank_softmax_loss, cld_loss
from crosslevel.data.datamodule import ContrastiveDataModule, Data
from crosslevel.methods import ContrastiveModule
from crosslevel.training import build_module, recording_cudagraph_skips

METHOD_PRESETS = {
    "npid": "cifar10-npid", "cld": "cifar10-cld", "moco": "cifar10-moco", "cldm": "cifar10-cldm",
    "simclr": "cifar10-simclr", "simclr+cld": "cifar10-simclr-cld", "byol": "cifar10-byol", "byol+cld": "cifar10-byol-cld",
    "vit-cld": "cifar10-cld-vit",
}  # fmt: skip
# (with CLD, without): the step-time ratios reported per round
PAIRS = (("CLD/NPID", "cld", "npid"), ("CLDm/MoCo", "cldm", "moco"), ("SimCLR+CLD/SimCLR", "simclr+cld", "simclr"), ("BYOL+CLD/BYOL", "byol+cld", "byol"))


def synthetic_images(count: int, size: int, seed: int = 0) -> InMemoryImages:
    """``count`` random uint8 size×size RGB images with CIFAR's normalisation statistics."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return InMemoryImages(images, np.zeros(count, dtype=np.int64), (), CIFAR_MEAN, CIFAR_STD)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls (after ``warmup`` calls), synchronised."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class StepTimer(pl.Callback):
    """Wall time of the ``steps`` training iterations after the first ``warmup`` (data + step).

    The device is synchronised only where the timing starts and ends, so that the host runs ahead
    of the device in between as it does in training.
    """

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.end = 0.0

    def on_train_batch_end(  # noqa: ANN001
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if batch_idx + 1 in (self.warmup, self.warmup + self.steps):
            synchronize(pl_module.device)
            if batch_idx + 1 == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    @property
    def seconds_per_step(self) -> float:
        assert self.end > self.start > 0, "the timed steps did not run"
        return (self.end - self.start) / self.steps


class DeviceProbe(pl.Callback):
    """At the end of training, while the module is still on its training device, times the k-means +
    CLD loss (forward and backward, on random features) and the on-device views of one batch there."""

    def __init__(self, cfg: Config, repeats: int) -> None:
        self.cfg, self.repeats = cfg, repeats
        self.timings: dict[str, float | str] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self._probe(trainer, pl_module)
        except Exception as err:  # noqa: BLE001 - a failing probe must not cost the method its step timing
            traceback.print_exc()
            self.timings["probe_error"] = f"{type(err).__name__}: {err}"

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cfg, device = self.cfg, pl_module.device
        self.timings["measured_on"] = str(device)
        # each call a step of its own: replays the graphs the training step recorded instead of recording new ones
        new_step = torch.compiler.cudagraph_mark_step_begin if cfg.cuda_graphs else lambda: None
        if cfg.cld_weight > 0:
            groups = [random_features(cfg, device) for _ in range(2)]

            def kmeans_and_loss() -> None:  # the module's own CLD term, compiled as the step runs it and in its
                new_step()  # autocast state (the precision's context, autocast off inside): its graph, not a new one
                with trainer.precision_plugin.forward_context(), torch.autocast(device.type, enabled=False):
                    loss = pl_module.cld(*groups)
                torch.autograd.grad(loss, groups)  # no .grad kept: a graph's output is gone next step

            self.timings["cld_ms"] = 1000 * time_call(kmeans_and_loss, device, self.repeats)
        views = trainer.datamodule.views
        if views is not None:
            indices = torch.arange(cfg.batch_size, device=device)

            def make_views() -> None:
                new_step()
                views(indices)

            self.timings["device_views_ms"] = 1000 * time_call(make_views, device, self.repeats)


def random_features(cfg: Config, device: torch.device) -> torch.Tensor:
    """B×D unit feature vectors that want a gradient, like a head's output."""
    features = torch.randn(cfg.batch_size, cfg.feature_dim, device=device)
    return torch.nn.functional.normalize(features, dim=1).requires_grad_()


def method_config(method: str, args: argparse.Namespace) -> Config:
    """The method's CIFAR-10 preset with this benchmark's model, batch, device and precision."""
    cfg = load_preset(METHOD_PRESETS[method])
    own_backbone = cfg.backbone.startswith("timm:")  # a timm preset keeps its model (and its backbone_args)
    model = [] if own_backbone else [f"backbone={args.backbone}", f"width={args.width}"]
    overrides = [
        *model, f"batch_size={args.batch}", f"precision={args.precision}",
        f"augment_device={args.augment}", f"workers={args.workers}", f"channels_last={args.channels_last}",
        f"compile={args.compile}", f"cuda_graphs={args.cuda_graphs}", "data=synthetic", "progress=false",
    ]  # fmt: skip
    cfg = dataclasses.replace(cfg, num_groups=min(cfg.num_groups, args.batch // 2))  # k < B at small CPU batches
    return apply_overrides(cfg, overrides + list(args.set))


def measure_method(
    method: str, cfg: Config, data: Data, args: argparse.Namespace, built: dict[str, tuple[ContrastiveModule, ContrastiveDataModule]]
) -> dict:
    """One round of ``method``: train ``--warmup + --steps`` steps and time them, then the k-means + CLD loss and views.
    The module and data module of the method's first round are kept in ``built`` and train on in the later
    rounds, so that a compiled method compiles (and records its CUDA graphs) once, not once a round."""
    pl.seed_everything(0, verbose=False)
    if method not in built:
        built[method] = build_module(cfg, data), ContrastiveDataModule(cfg, data)
    module, datamodule = built[method]
    timer, probe = StepTimer(args.warmup, args.steps), DeviceProbe(cfg, repeats=max(5, args.steps))
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=args.warmup + args.steps,
        accelerator=args.device,
        devices=1,
        precision=cfg.precision,
        logger=False,
        callbacks=[timer, probe],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        benchmark=True,
    )
    graphed = cfg.cuda_graphs and trainer.strategy.root_device.type == "cuda"  # on a CPU: compiled without graphs
    with recording_cudagraph_skips(graphed) as skips:
        trainer.fit(module, datamodule=datamodule)
    step = timer.seconds_per_step
    row = {"method": method, "preset": METHOD_PRESETS[method], "ms_per_step": 1000 * step, "images_per_s": cfg.batch_size / step}
    if graphed:
        row["cudagraph_skips"] = skips
    row["epoch_s"] = args.train_size / row["images_per_s"]
    row.update(probe.timings)
    if "cld_ms" in row:
        row["cld_share"] = row["cld_ms"] / row["ms_per_step"]
    return row


def median_row(measured: list[dict]) -> dict:
    """The median round of a method (by step time), with every round's ms per step and the parts run without
    CUDA graphs in any round (Inductor names them when it compiles: in the first round)."""
    row = dict(sorted(measured, key=lambda r: r["ms_per_step"])[len(measured) // 2])
    row["rounds_ms_per_step"] = [r["ms_per_step"] for r in measured]
    if "cudagraph_skips" in row:
        row["cudagraph_skips"] = list(dict.fromkeys(skip for r in measured for skip in r["cudagraph_skips"]))
    return row


def step_ratios(rounds: dict[str, list[dict]]) -> dict[str, dict]:
    """Each method's step time over its baseline without CLD (:data:`PAIRS`) in every round both ran
    in, with median, min and max."""
    ratios = {}
    for name, method, baseline in PAIRS:
        per_round = [a["ms_per_step"] / b["ms_per_step"] for a, b in zip(rounds.get(method, []), rounds.get(baseline, []))]
        if per_round:
            ratios[name] = {
                "median": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "rounds": per_round
            }  # fmt: skip
    return ratios


def write_json(path: str, result: dict) -> None:
    """Write ``result`` to ``path`` atomically (a reader never sees half a file)."""
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(partial, path)


def check_no_sync(cfg: Config, device: torch.device) -> str:
    """Run views (every on-device op: the v2 recipe with blur and random erasing), bank softmax, k-means and
    CLD loss (forward + backward) with CUDA's sync debug mode set to error."""
    if device.type != "cuda":
        return "not checked (CUDA only)"
    data = Data(synthetic_images(cfg.batch_size * 2, 32), None)
    every_op = dataclasses.replace(cfg, augment_device="device", augment="v2", blur=0.5, random_erasing=0.5)
    views = ContrastiveDataModule(every_op, data).views.to(device)
    indices = torch.arange(cfg.batch_size, device=device)
    groups = [random_features(cfg, device) for _ in range(2)]
    bank = random_features(dataclasses.replace(cfg, batch_size=len(data.train)), device).detach()  # any method's config
    for _ in range(3):  # compiled (and recorded as a CUDA graph: warm-up, record, replay) before the check
        torch.compiler.cudagraph_mark_step_begin()
        views(indices)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.compiler.cudagraph_mark_step_begin()
        views(indices)
        bank_softmax_loss(groups[0], bank, indices, cfg.instance_temperature).backward()
        cld_loss(*groups, cfg.num_groups, cfg.cld_temperature, cfg.kmeans_iters).backward()
    except RuntimeError as err:
        return f"FAILED: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "ok (no host synchronisation in views, bank softmax, k-means, CLD loss)"


def check_step_sync(cfg: Config, data: Data, warm: int = 4, steps: int = 4) -> str:
    """Train ``warm`` steps of ``cfg`` (compiling, recording the graphs, NCE's one-off normaliser), then
    ``steps`` more with CUDA's sync debug mode set to *warn* inside the step (views, forward, losses,
    backward, optimiser: Lightning's ``optimizer_step``; the branch's update after it), and count the
    synchronisations; the deferred non-finite check and Lightning's logging are outside the step."""
    if not torch.cuda.is_available():
        return "not checked (CUDA only)"
    module, datamodule = build_module(cfg, data), ContrastiveDataModule(cfg, data)
    seen: list[str] = []

    def warn_on_sync(function: Callable) -> Callable:
        def wrapped(*args: object, **kwargs: object) -> object:
            if module.trainer.global_step < warm:
                return function(*args, **kwargs)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    return function(*args, **kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                    seen.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))

        return wrapped

    module.optimizer_step = warn_on_sync(module.optimizer_step)
    module.branch.after_step = warn_on_sync(module.branch.after_step)
    datamodule.on_after_batch_transfer = warn_on_sync(datamodule.on_after_batch_transfer)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=warm + steps, accelerator="gpu", devices=1, precision=cfg.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return "ok: no synchronisation in the step" if not seen else f"{len(seen)} synchronisations in {steps} steps, first: {seen[0]}"


def cpu_pipeline_ms(cfg: Config, data: Data, batches: int) -> float:
    """ms per batch of torchvision views from ``cfg.workers`` loader processes (the CPU path)."""
    loader = data.train_loader(dataclasses.replace(cfg, augment_device="cpu"))
    batches = min(batches, len(loader) - 1)  # a small data set: what one epoch holds after the first batch
    if batches < 1:
        return float("nan")
    iterator = iter(loader)
    next(iterator)  # start the workers
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 1000 * (time.perf_counter() - start) / batches


def machine(device: torch.device) -> dict[str, str]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
    }
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    else:
        info["device"] = "cpu"
    return info


def cudagraph_verdict(skips: list[str]) -> str:
    """One line for the parts Inductor ran without CUDA graphs in a method's round."""
    return "every compiled part replayed as a graph" if not skips else f"{len(skips)} part(s) run without graphs, first: {skips[0]}"


def format_table(rows: list[dict]) -> str:
    npid = next((r["ms_per_step"] for r in rows if r["method"] == "npid"), None)
    lines = [
        f"{'method':<10} {'images/s':>9} {'ms/step':>8} {'epoch s':>8} {'vs NPID':>8} "
        f"{'k-means+CLD ms':>15} {'share':>6} {'views ms':>9}"
    ]
    for r in rows:
        ratio = f"{r['ms_per_step'] / npid:.3f}" if npid else "-"
        cld = f"{r['cld_ms']:.2f}" if "cld_ms" in r else "-"
        share = f"{100 * r['cld_share']:.1f}%" if "cld_share" in r else "-"
        views = f"{r['device_views_ms']:.2f}" if "device_views_ms" in r else "-"
        lines.append(
            f"{r['method']:<10} {r['images_per_s']:>9.0f} {r['ms_per_step']:>8.1f} {r['epoch_s']:>8.1f} {ratio:>8} "
            f"{cld:>15} {share:>6} {views:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="npid,cld,moco,cldm", help="comma-separated: " + ", ".join(METHOD_PRESETS))
    parser.add_argument("--backbone", default="resnet18_cifar")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--train-size", type=int, default=50_000, help="images in the (synthetic) training set: bank rows, epoch length"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu")
    parser.add_argument("--precision", default="bf16-mixed", help="32-true | bf16-mixed | 16-mixed")
    parser.add_argument("--augment", choices=("device", "cpu"), default="device", help="where the views are made")
    parser.add_argument("--workers", type=int, default=4, help="loader processes of the CPU view pipeline")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotune, compile); >= 1")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the methods; the median round is reported")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true", help="cuda_graphs=true: compiled with mode=reduce-overhead (CUDA graphs)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--pipeline-batches", type=int, default=10, help="batches timed for the CPU view pipeline (0: skip)")
    parser.add_argument(
        "--check-sync", action="store_true",
        help="CUDA: fail if views / k-means / CLD loss synchronise; with --cuda-graphs also count the whole step's synchronisations",
    )  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra config overrides for every method")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be >= 1")

    device = torch.device("cuda" if args.device in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    args.device = "gpu" if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = Data(synthetic_images(args.train_size, args.image_size), None)
    skipped, configs = {}, {}
    for method in args.methods.split(","):
        if method not in METHOD_PRESETS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(METHOD_PRESETS)}")
        if METHOD_PRESETS[method] not in preset_names():
            skipped[method] = f"preset {METHOD_PRESETS[method]} is not in this installation"
            print(f"skipping {method}: {skipped[method]}")
            continue
        try:
            configs[method] = method_config(method, args)
        except CrossLevelError as err:
            skipped[method] = str(err)
            print(f"skipping {method}: {err}")
    rounds: dict[str, list[dict]] = {method: [] for method in configs}
    built: dict[str, tuple[ContrastiveModule, ContrastiveDataModule]] = {}
    failed: dict[str, str] = {}
    pipeline: dict[str, float | str] = {}
    settings = {k: v for k, v in vars(args).items() if k not in ("json",)}

    def result() -> dict:
        rows = [median_row(measured) for measured in rounds.values() if measured]
        return {"machine": machine(device), "settings": settings, "rows": rows, "ratios": step_ratios(rounds),
                "pipeline": pipeline, "skipped": skipped, "failed": failed}  # fmt: skip

    for round_index in range(args.repeats):
        for method, cfg in configs.items():
            if method in failed:
                continue
            print(f"measuring {method} (round {round_index + 1}/{args.repeats}) ...", flush=True)
            try:
                rounds[method].append(measure_method(method, cfg, data, args, built))
                print(f"  {method}: {rounds[method][-1]['ms_per_step']:.1f} ms/step", flush=True)
            except Exception as err:  # noqa: BLE001 - one failing method must not cost the others their rows
                traceback.print_exc()
                failed[method] = f"{type(err).__name__}: {err}"
            if args.json:
                write_json(args.json, result())
    def check(name: str, record: Callable[[], object]) -> None:  # an after-round check: a failure recorded, the JSON kept current
        try:
            record()
        except Exception as err:  # noqa: BLE001 - one failing check must not cost the others (or the rows) their results
            traceback.print_exc()
            failed[f"check {name}"] = f"{type(err).__name__}: {err}"
        if args.json:
            write_json(args.json, result())

    reference = configs.get("cld") or next(iter(configs.values()), None)
    if reference is not None and args.pipeline_batches > 0:
        check("cpu views", lambda: pipeline.update(
            cpu_views_ms_per_batch=cpu_pipeline_ms(reference, data, args.pipeline_batches), cpu_views_workers=args.workers))
    if args.check_sync and reference is not None:
        check("views, k-means and CLD sync", lambda: pipeline.update(sync_check=check_no_sync(reference, device)))
        if args.cuda_graphs:
            step_sync: dict[str, str] = {}
            pipeline["step_sync_check"] = step_sync  # type: ignore[assignment]
            for method, cfg in configs.items():
                check(f"whole-step sync {method}", lambda method=method, cfg=cfg: step_sync.update({method: check_step_sync(cfg, data)}))
    final = result()
    if args.json:
        write_json(args.json, final)

    info, rows = final["machine"], final["rows"]
    print(f"\n{info['device']} | {info['cpu']} ({info['threads']} threads) | torch {info['torch']} | {info['date']}")
    print(
        f"{args.backbone} width {args.width}, batch {args.batch}, {args.image_size}px, {args.precision}, views on {args.augment}, "
        f"compile={args.compile}, cuda_graphs={args.cuda_graphs}, channels_last={args.channels_last}, "
        f"{args.steps} timed steps after {args.warmup}"
    )
    print(format_table(rows))
    for name, ratio in final["ratios"].items():
        print(f"{name} step time: median {ratio['median']:.3f}, range {ratio['min']:.3f}-{ratio['max']:.3f} "
              f"over {len(ratio['rounds'])} rounds")  # fmt: skip
    if "cpu_views_ms_per_batch" in pipeline:
        print(f"CPU view pipeline (torchvision, {args.workers} workers): {pipeline['cpu_views_ms_per_batch']:.1f} ms/batch")
    if "sync_check" in pipeline:
        print(f"sync check: {pipeline['sync_check']}")
    for method, verdict in pipeline.get("step_sync_check", {}).items():
        print(f"whole-step sync check, {method}: {verdict}")
    for row in rows:
        if "cudagraph_skips" in row:
            print(f"CUDA graphs, {row['method']}: {cudagraph_verdict(row['cudagraph_skips'])}")
    for method, why in skipped.items():
        print(f"skipped {method}: {why}")
    for method, why in failed.items():
        print(f"FAILED {method}: {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
