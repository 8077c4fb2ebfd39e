"""Decode speed of large JPEGs: PIL in loader workers (``decode=cpu``) against ``decode=gpu`` (the workers
read bytes, the GPU decodes them with batched nvJPEG and makes the views), for ``imagenet100-cldm``.

``make`` turns packed CIFAR-10 (``cifar_pack.py pack``; ``synthetic``: 5,000 seeded 32-px images of smooth
colour blobs instead, so that nothing but the code has to travel) into an ImageNet-100-sized folder: 100 class
folders named as the CMC ImageNet-100 list (so ``class_subset=imagenet100`` reads it as ImageNet-100),
``--per-class`` images each (default 1,300: 130,000), every one a CIFAR image (used up to 3 times: as
is, mirrored, cropped) upscaled to ``--width`` × ``--height`` (400×350), with uniform noise (±20 grey
levels) for the detail of a photo (about 50 KiB a file), saved as JPEG quality 90. Labels are by index, not CIFAR's.

``measure`` then times, each for a capped time, writing ``--json`` after each row:

* the data path alone (images/s): (a) PIL workers making the preset's 3 views (``decode=cpu``,
  ``in_memory=false``), (b) ``decode=gpu``: worker-read bytes decoded and made into views on the GPU,
  with the bytes-only loader rate and the decode and view milliseconds of one batch; (b2) the same with
  ``gpu_decoder=nvimgcodec`` (the hardware JPEG decoder) when CUDA and nvImageCodec are there;
* the training step (images/s) of the preset (ResNet-50, batch 64, 3 views of 224 px, ``--set``
  changes it), fed (c) by PIL workers, (d) by ``decode=gpu`` and (d2) by its nvimgcodec decoder, and (e) from synthetic 224-px
  images held on the GPU (no decode: the compute-bound rate). Target: (b) ≥ 1.5 × (e).

First, a check that the GPU decode gives the CPU decode's pixels (``agreement``): the files of a few
training batches decoded on the GPU while the stream is busy with queued work, and one batch ahead on
the side stream as training decodes, each image against torchvision's CPU decode (libjpeg-turbo) in
mean |difference| (grey levels); the two decoders differ in rounding by a level or so, a decode that
wrote into memory still in use by tens. Without CUDA the ``decode=gpu`` rows run with the decode on the CPU and say "not measured (CUDA only)".
The folder is read from the page cache after ``make`` (a warm cache: disk reads are not measured).

    python benchmarks/decode_speed.py make .gpu-data/cifar10-jpeg.npz /tmp/in100-jpeg
    python benchmarks/decode_speed.py measure /tmp/in100-jpeg --workers 8 --json decode_speed.json
    python benchmarks/decode_speed.py table decode_speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import resources
from multiprocessing import Pool
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import machine, synchronize, synthetic_images, time_call, write_json  # noqa: E402

from crosslevel.config import Config, apply_overrides, load_preset  # noqa: E402
from crosslevel.data.datamodule import ContrastiveDataModule, Data, load_data  # noqa: E402
from crosslevel.data.jpeg_views import DecodeAhead, decode  # noqa: E402
from crosslevel.training import build_module  # noqa: E402

CUDA_ONLY = "not measured (CUDA only): dry run with the decode on the CPU"


def class_names(count: int) -> list[str]:
    names = (resources.files("crosslevel") / "data" / "imagenet100.txt").read_text().split()
    return names[:count] if count <= len(names) else [f"class{c:03d}" for c in range(count)]


NOISE: dict[tuple[int, int, int], np.ndarray] = {}  # per process: (height, width, amplitude) → a noise tile twice that size


def _write_image(job: tuple[bytes, int, str, int, int, int, int, int]) -> int:
    """One synthetic photo: a CIFAR JPEG, varied (0 as is, 1 mirrored, 2 a 26-px crop), upscaled, noised
    (a random window of a uniform ±``noise`` tile), saved (to a temporary name first: never half a JPEG)."""
    data, variation, path, width, height, quality, noise, seed = job
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if variation % 3 == 1:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif variation % 3 == 2:
        image = image.crop((3, 3, 29, 29))
    pixels = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.int16)
    if (height, width, noise) not in NOISE:
        NOISE[height, width, noise] = np.random.default_rng(0).integers(-noise, noise + 1, (2 * height, 2 * width, 3), dtype=np.int16)
    top, left = np.random.default_rng(seed).integers(0, (height, width))
    pixels = pixels + NOISE[height, width, noise][top : top + height, left : left + width]
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(f"{path}.part", format="JPEG", quality=quality)
    os.replace(f"{path}.part", path)
    return Path(path).stat().st_size


def synthetic_sources(count: int) -> list[bytes]:
    """``count`` 32×32 JPEGs of smooth colour blobs (seeded): CIFAR-sized sources where no packed CIFAR travels."""
    rng = np.random.default_rng(0)
    sources = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        buffer = io.BytesIO()
        coarse.save(buffer, format="JPEG", quality=95)
        sources.append(buffer.getvalue())
    return sources


def make_folder(
    packed: Path | None, folder: Path, classes: int, per_class: int, width: int, height: int, quality: int, noise: int
) -> dict:
    """``folder/train/<class>/<k>.jpg`` for ``classes`` × ``per_class`` images from packed CIFAR (see the docstring),
    or (``packed`` None) from 5,000 synthetic sources of smooth colour blobs."""
    if packed is None:
        encoded = synthetic_sources(5000)
    else:
        archive = np.load(packed)
        blob, offsets = archive["blob"], archive["offsets"]
        chosen = np.flatnonzero(archive["splits"] == 0) if "splits" in archive else np.arange(len(offsets) - 1)
        encoded = [blob[offsets[source] : offsets[source + 1]].tobytes() for source in chosen]
    names = class_names(classes)
    for name in names:
        (folder / "train" / name).mkdir(parents=True, exist_ok=True)
    jobs = []
    for k in range(classes * per_class):
        path = folder / "train" / names[k // per_class] / f"{k:06d}.jpg"
        jobs.append((encoded[k % len(encoded)], k // len(encoded), str(path), width, height, quality, noise, k))
    start = time.perf_counter()
    with Pool() as pool:
        sizes = pool.map(_write_image, jobs, chunksize=64)
    made = {"images": len(sizes), "classes": classes, "size": f"{width}x{height}", "quality": quality, "noise": noise,
            "sources": "synthetic" if packed is None else "CIFAR-10",
            "mean_kib": float(np.mean(sizes)) / 1024, "seconds": time.perf_counter() - start}  # fmt: skip
    (folder / "made.json").write_text(json.dumps(made))
    return made


def config(folder: Path, args: argparse.Namespace, decode_on: str, decoder: str = "torchvision") -> Config:
    """The preset on ``folder`` with this benchmark's precision, workers and ``--set``."""
    overrides = [f"data={folder}", f"decode={decode_on}", f"workers={args.workers}", f"precision={args.precision}",
                 "channels_last=true", "devices=1", "progress=false", *args.set]  # fmt: skip
    if decoder != "torchvision":
        overrides.append(f"gpu_decoder={decoder}")
    return apply_overrides(load_preset(args.preset), overrides)


def data_module(cfg: Config, data: Data, cuda: bool) -> ContrastiveDataModule:
    return ContrastiveDataModule(cfg, data, decode_device=None if cuda or cfg.decode == "cpu" else "cpu")


def data_path_rate(datamodule: ContrastiveDataModule, device: torch.device, seconds: float, make_views: bool = True) -> float:
    """Images/s of the training loader (decode=gpu: decoding one batch ahead) and the views made on ``device`` over
    ``seconds``, after one batch; without ``make_views``, of the loader's workers alone (decode=gpu: the bytes)."""
    batches = iter(datamodule.train_dataloader() if make_views else datamodule.loader)
    next(batches)  # the workers have started
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(batches, None)
        if batch is None:
            break
        if make_views and datamodule.views is not None:
            datamodule.on_after_batch_transfer(batch.to(device), 0)
        count += datamodule.cfg.batch_size
    synchronize(device)
    return count / (time.perf_counter() - start)


def gpu_decode_parts(datamodule: ContrastiveDataModule, device: torch.device) -> dict[str, float]:
    """ms of decoding one batch, and of decoding and making its views, on ``device`` (median of 5)."""
    batch = next(iter(datamodule.loader)).to(device)
    views = datamodule.views.to(device)
    decode_ms = 1000 * time_call(lambda: decode(batch.files(), views.decode_device or device, batch.names, views.jpegs_decoder), device, 5)
    return {"decode_ms_per_batch": decode_ms, "decode_and_views_ms_per_batch": 1000 * time_call(lambda: views(batch), device, 5)}


def queue_work_that_frees_memory(device: torch.device) -> None:
    """Queue on the current stream a long matrix product, then writes to 64 tensors of an image's size that
    wait behind it, and free them: the caching allocator may hand their memory to the next allocation on
    this stream at once (safe for work on this stream), so a decode writing from a stream of its own that
    does not wait for this one has its images written over by the queued writes."""
    big = torch.randn(8192, 8192, device=device)
    for _ in range(3):
        big = torch.tanh(big @ big)
    for tensor in [torch.empty(350, 400, 3, dtype=torch.uint8, device=device) for _ in range(64)]:
        tensor.fill_(255)  # queued behind the products; freed at once


MISMATCH_LEVELS = 8.0  # an image this far (mean |GPU - CPU| grey levels) from the CPU decode is wrong, not rounded


def decode_agreement(datamodule: ContrastiveDataModule, device: torch.device, batches: int = 4) -> dict[str, float]:
    """How far ``batches`` training batches decoded on ``device`` lie from the CPU decode (torchvision's
    ``decode_image``): per path, the worst image's mean |difference| (grey levels) and the images more than
    ``MISMATCH_LEVELS`` off. Paths: ``decode_ahead``, the training loader itself (:class:`DecodeAhead`:
    batch i + 1 decoding on its side stream while batch i is in use, with work queued on the training
    stream), and ``current_stream``, each batch decoded again on the current stream behind queued work
    whose memory was just freed."""
    from torchvision.io import ImageReadMode

    from crosslevel.data.jpeg_views import decode_image  # torchvision's, without its deprecation warning

    views = datamodule.views.to(device)
    seen: list = []  # the encoded batches, in the order the loader handed them on

    def recorded() -> Iterator:
        for _, batch in zip(range(batches), datamodule.loader):
            seen.append(batch)
            yield batch

    result = {"images": 0}
    for path in ("decode_ahead", "current_stream"):
        result[f"worst_mean_abs_{path}"], result[f"mismatched_{path}"] = 0.0, 0

    def compare(path: str, images: list[torch.Tensor], files: list[torch.Tensor]) -> None:
        errors = [(image.cpu().int() - decode_image(data, mode=ImageReadMode.RGB).int()).abs().float().mean().item()
                  for image, data in zip(images, files)]  # fmt: skip
        result[f"worst_mean_abs_{path}"] = max(result[f"worst_mean_abs_{path}"], *errors)
        result[f"mismatched_{path}"] += sum(error > MISMATCH_LEVELS for error in errors)

    for number, ready in enumerate(DecodeAhead(recorded(), views, lambda: device)):
        batch = seen[number]
        if device.type == "cuda":
            queue_work_that_frees_memory(device)  # the training step's work while the next batch decodes
        compare("decode_ahead", ready.wait(), batch.files())
        if device.type == "cuda":
            queue_work_that_frees_memory(device)
        compare("current_stream", decode(batch.files(), device, batch.names, views.jpegs_decoder), batch.files())
        result["images"] += len(batch.indices)
    synchronize(device)
    return result


class RateTimer(pl.Callback):
    """Images/s of the training steps after the first ``warmup``; stops training after ``steps`` timed
    steps or at ``deadline`` (``time.perf_counter()``), whichever comes first."""

    def __init__(self, warmup: int, steps: int, deadline: float, batch: int) -> None:
        self.warmup, self.steps, self.deadline, self.batch = warmup, steps, deadline, batch
        self.start, self.timed = 0.0, 0
        self.rate = float("nan")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: object) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.timed += 1
            if self.timed >= self.steps or time.perf_counter() > self.deadline:
                synchronize(pl_module.device)
                self.rate = self.timed * self.batch / (time.perf_counter() - self.start)
                trainer.should_stop = True
        elif time.perf_counter() > self.deadline:
            trainer.should_stop = True


def step_rate(cfg: Config, data: Data, datamodule: ContrastiveDataModule, args: argparse.Namespace, deadline: float) -> float:
    """Images/s of the preset's training step fed by ``datamodule`` (NaN when the warm-up did not end in time)."""
    pl.seed_everything(0, verbose=False)
    timer = RateTimer(args.warmup, args.steps, deadline, cfg.batch_size)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=args.warmup + args.steps + 1, accelerator=args.accelerator, devices=1,
        precision=cfg.precision, logger=False, callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, benchmark=True,
    )  # fmt: skip
    trainer.fit(build_module(cfg, data), datamodule=datamodule)
    return timer.rate


def measure(args: argparse.Namespace) -> dict:
    """Rows (a)-(e) of the docstring, each capped by the time left of ``--time-limit``; ``--json`` after each."""
    end = time.perf_counter() + args.time_limit
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.accelerator = "gpu" if cuda else "cpu"
    pil_cfg, gpu_cfg = config(args.folder, args, "cpu"), config(args.folder, args, "gpu")
    data = load_data(pil_cfg)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    result: dict = {"machine": machine(device), "settings": settings, "rows": {}}
    if (args.folder / "made.json").is_file():
        result["folder"] = json.loads((args.folder / "made.json").read_text())

    def row(name: str, measure_row: Callable[[], dict], note: str = "") -> None:
        """Measure one row (a failure is recorded, and the next rows still run), then rewrite ``--json``."""
        try:
            values = measure_row()
        except Exception as err:  # noqa: BLE001 - one failing row must not cost the others theirs
            traceback.print_exc()
            values, note = {}, f"FAILED: {type(err).__name__}: {err}"
        result["rows"][name] = {**values, **({"note": note} if note else {})}
        print(f"{name}: {result['rows'][name]}", flush=True)
        if args.json:
            write_json(args.json, result)

    def seconds(share: float) -> float:
        """At most ``--seconds``, and ``share`` of the time left."""
        return max(0.0, min(args.seconds, share * (end - time.perf_counter())))

    def deadline(share: float) -> float:
        return time.perf_counter() + share * (end - time.perf_counter())

    row("a_pil_data_path", lambda: {"images_per_s": data_path_rate(data_module(pil_cfg, data, cuda), device, seconds(0.2))})
    note = "" if cuda else CUDA_ONLY
    gpu_module = functools.cache(lambda: data_module(gpu_cfg, data, cuda))  # built in the first row that needs it:
    hw_cfg = config(args.folder, args, "gpu", "nvimgcodec")  # a failure to build is that row's, not the whole measure's
    hw_module = functools.cache(lambda: data_module(hw_cfg, data, cuda))
    row("agreement_torchvision", lambda: decode_agreement(gpu_module(), device) if gpu_module().views is not None else {}, note)
    gpu_decodes = "FAILED" not in result["rows"]["agreement_torchvision"].get("note", "") and gpu_module().views is not None
    if not gpu_decodes:
        row("b_gpu_decode_data_path", dict, "decode=gpu fell back to PIL (see the warning above), or failed (the row above)")
    else:
        row("b_gpu_decode_data_path", lambda: {
            "images_per_s": data_path_rate(gpu_module(), device, seconds(0.25)),
            "bytes_only_images_per_s": data_path_rate(gpu_module(), device, seconds(0.1), make_views=False),
            **gpu_decode_parts(gpu_module(), device),
        }, note)  # fmt: skip
    hardware = cuda and importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.nvimgcodec") is not None
    if hardware:  # gpu_decoder=nvimgcodec: the hardware JPEG decoder (nvImageCodec needs a CUDA driver)
        row("agreement_nvimgcodec", lambda: decode_agreement(hw_module(), device))
        row("b2_nvimgcodec_data_path", lambda: {"images_per_s": data_path_rate(hw_module(), device, seconds(0.2)), **gpu_decode_parts(hw_module(), device)})
    row("c_step_fed_by_pil", lambda: {"images_per_s": step_rate(pil_cfg, data, data_module(pil_cfg, data, cuda), args, deadline(0.3))})
    if gpu_decodes:
        row("d_step_fed_by_gpu_decode",
            lambda: {"images_per_s": step_rate(gpu_cfg, data, data_module(gpu_cfg, data, cuda), args, deadline(0.4 if hardware else 0.5))}, note)  # fmt: skip
    if hardware:
        row("d2_step_fed_by_nvimgcodec", lambda: {"images_per_s": step_rate(hw_cfg, data, data_module(hw_cfg, data, cuda), args, deadline(0.5))})
    memory_cfg = dataclasses.replace(pil_cfg, augment_device="device", in_memory=True)

    def from_memory() -> dict:
        memory = Data(synthetic_images((args.warmup + args.steps + 1) * memory_cfg.batch_size, memory_cfg.image_size), None)
        return {"images_per_s": step_rate(memory_cfg, memory, ContrastiveDataModule(memory_cfg, memory), args, end)}

    row("e_step_from_gpu_memory", from_memory)
    return result


def table(result: dict) -> str:
    rows, s = result["rows"], result["settings"]

    def cell(name: str, key: str = "images_per_s") -> str:
        value = rows.get(name, {}).get(key)
        return "not measured" if value is None or value != value else f"{value:.0f}"

    def note(name: str) -> str:
        return f"  ({rows[name]['note']})" if rows.get(name, {}).get("note") else ""

    lines = [f"\ndecode speed: preset {s['preset']} {' '.join(s['set'])}, {s['workers']} loader workers, {s['precision']}"]
    if "folder" in result:
        f = result["folder"]
        lines.append(f"folder: {f['images']} JPEGs, {f['classes']} classes, {f['size']}, quality {f['quality']}, {f['mean_kib']:.0f} KiB each")
    for decoder in ("torchvision", "nvimgcodec"):
        agreed = rows.get(f"agreement_{decoder}")
        if agreed and "images" in agreed:
            paths = {"decode_ahead": "decoded ahead as in training", "current_stream": "on a busy stream"}
            parts = [f"{label} {agreed[f'worst_mean_abs_{path}']:.2f} levels, "
                     + ("ok" if not agreed[f"mismatched_{path}"] else f"MISMATCH: {agreed[f'mismatched_{path}']} image(s) > {MISMATCH_LEVELS:.0f} off")
                     for path, label in paths.items()]  # fmt: skip
            lines.append(f"GPU decode ({decoder}) against the CPU decode, worst image of {agreed['images']}: {'; '.join(parts)}{note(f'agreement_{decoder}')}")
        elif agreed:
            lines.append(f"GPU decode ({decoder}) against the CPU decode: not measured{note(f'agreement_{decoder}')}")
    b = rows.get("b_gpu_decode_data_path", {})
    lines += [
        "data path alone, images/s:",
        f"  (a) PIL workers (decode=cpu)             {cell('a_pil_data_path'):>10}",
        f"  (b) GPU decode (decode=gpu)              {cell('b_gpu_decode_data_path'):>10}{note('b_gpu_decode_data_path')}",
        f"      bytes read by the workers alone      {cell('b_gpu_decode_data_path', 'bytes_only_images_per_s'):>10}",
        f"      one batch: decode {b.get('decode_ms_per_batch', float('nan')):.1f} ms, "
        f"decode + views {b.get('decode_and_views_ms_per_batch', float('nan')):.1f} ms",
    ]
    b2 = rows.get("b2_nvimgcodec_data_path")
    if b2 is not None:
        lines += [
            f"  (b2) GPU decode, gpu_decoder=nvimgcodec  {cell('b2_nvimgcodec_data_path'):>10}{note('b2_nvimgcodec_data_path')}",
            f"      one batch: decode {b2.get('decode_ms_per_batch', float('nan')):.1f} ms, "
            f"decode + views {b2.get('decode_and_views_ms_per_batch', float('nan')):.1f} ms",
        ]
    else:
        lines.append("  (b2) gpu_decoder=nvimgcodec: not measured (needs CUDA and nvidia-nvimgcodec; carried as wheels)")
    lines += [
        "training step, images/s:",
        f"  (c) fed by PIL workers                   {cell('c_step_fed_by_pil'):>10}",
        f"  (d) fed by GPU decode                    {cell('d_step_fed_by_gpu_decode'):>10}{note('d_step_fed_by_gpu_decode')}",
        *([f"  (d2) fed by nvimgcodec                  {cell('d2_step_fed_by_nvimgcodec'):>10}{note('d2_step_fed_by_nvimgcodec')}"] if b2 else []),
        f"  (e) images in GPU memory (compute bound) {cell('e_step_from_gpu_memory'):>10}",
    ]
    rate = {name.split("_")[0]: row.get("images_per_s") for name, row in rows.items()}
    if rate.get("b") and rate.get("e") and not b.get("note"):
        ratios = ", ".join(f"({k}) {rate[k] / rate['e']:.2f}" for k in ("a", "c", "d", "d2") if rate.get(k))
        for path in ("b", "b2"):
            if rate.get(path):
                verdict = "met" if rate[path] >= 1.5 * rate["e"] else "MISSED"
                lines.append(f"target ({path}) >= 1.5 x (e): {rate[path] / rate['e']:.2f} x, {verdict}")
        lines.append(f"as multiples of (e): {ratios}")
    else:
        lines.append("target (b) >= 1.5 x (e): not measured (CUDA only)")
    m = result["machine"]
    lines.append(f"device: {m['device']} | cpu: {m['cpu']} | torch {m['torch']} | {m['date']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    maker = commands.add_parser("make", help="packed CIFAR-10 (or 'synthetic') → an ImageNet-100-sized JPEG folder")
    maker.add_argument("packed", help="cifar_pack.py's file, or 'synthetic': smooth colour blobs, no data to carry")
    maker.add_argument("folder", type=Path)
    for option, default in (("--classes", 100), ("--per-class", 1300), ("--width", 400), ("--height", 350), ("--quality", 90)):
        maker.add_argument(option, type=int, default=default)
    maker.add_argument("--noise", type=int, default=20, help="uniform ±noise grey levels (detail: ~50 KiB files)")
    printer = commands.add_parser("table", help="print the table of a --json result (of a run that was stopped, too)")
    printer.add_argument("result", type=Path)
    measurer = commands.add_parser("measure", help="time the data paths and the training steps")
    measurer.add_argument("folder", type=Path)
    measurer.add_argument("--preset", default="imagenet100-cldm")
    measurer.add_argument("--workers", type=int, default=8, help="loader processes of both paths")
    measurer.add_argument("--precision", default="bf16-mixed")
    measurer.add_argument("--seconds", type=float, default=20.0, help="at most this long per data-path row")
    measurer.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    measurer.add_argument("--steps", type=int, default=30, help="timed training steps per row (fewer when time runs out)")
    measurer.add_argument("--time-limit", type=float, default=420.0, help="seconds for all the measurements")
    measurer.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra config overrides")
    measurer.add_argument("--json", help="write the results here (after every row)")
    args = parser.parse_args(argv)
    if args.command == "table":
        print(table(json.loads(args.result.read_text())))
        return 0
    if args.command == "make":
        packed = None if args.packed == "synthetic" else Path(args.packed)
        print(make_folder(packed, args.folder, args.classes, args.per_class, args.width, args.height, args.quality, args.noise))
        return 0
    print(table(measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
