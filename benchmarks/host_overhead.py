"""Host time around a training step, the figures docs/performance.md quotes, measured side by side:

* Lightning's ``self.log`` per call (a ``_ResultCollection.log`` of one scalar, as a training step makes it)
  and the part of it spent in ``_ResultMetric.to``;
* the kNN evaluation's test batches of in-memory images at the test size: made whole (``LabelledBatches``)
  against image by image (``LabelledDataset`` with the test transform), for ``--images`` 32-px images;
* writing and syncing one checkpoint of a CIFAR ResNet-18 run's size (weights and SGD momentum, 2 × 11.2 M
  floats, and the 50,000 × 128 bank: ~115 MB), the atomic way crosslevel writes them.

    python benchmarks/host_overhead.py                       # the figures of the docs (one CPU thread)
    python benchmarks/host_overhead.py --images 2000 --checkpoint-mb 5 --calls 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection
from torch.utils.data import DataLoader

from crosslevel.checkpointing import AtomicCheckpointIO
from crosslevel.data.images import InMemoryImages
from crosslevel.data.views import LabelledDataset, eval_loader, eval_transform


def log_call_us(calls: int) -> dict[str, float]:
    """Microseconds per ``self.log``-style call, and per ``_ResultMetric.to`` inside it."""
    results = _ResultCollection(training=True)
    value = torch.tensor(1.0)
    results.log("training_step", "loss", value, on_step=True, on_epoch=True, batch_size=256)  # registered once
    start = time.perf_counter()
    for _ in range(calls):
        results.log("training_step", "loss", value, on_step=True, on_epoch=True, batch_size=256)
    per_call = (time.perf_counter() - start) / calls
    metric = results["training_step.loss"]
    start = time.perf_counter()
    for _ in range(calls):
        metric.to(value.device)
    return {"log_us_per_call": 1e6 * per_call, "result_metric_to_us": 1e6 * (time.perf_counter() - start) / calls}


def eval_batches_s(count: int, batch_size: int = 256) -> dict[str, float]:
    """Seconds to iterate ``count`` random 32×32 RGB test images made whole and image by image."""
    rng = np.random.default_rng(0)
    images = InMemoryImages(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), np.zeros(count, dtype=np.int64), ("a",),
                            (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))  # fmt: skip
    loaders = {
        "whole_batches_s": eval_loader(images, 32, images.mean, images.std, 0, batch_size),
        "image_by_image_s": DataLoader(LabelledDataset(images, eval_transform(32, images.mean, images.std)), batch_size=batch_size),
    }
    seconds = {}
    for name, loader in loaders.items():
        start = time.perf_counter()
        for _ in loader:
            pass
        seconds[name] = time.perf_counter() - start
    return seconds


def checkpoint_write_s(megabytes: float, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` atomic, fsynced writes of a ~``megabytes`` MB checkpoint."""
    floats = int(megabytes * 1e6 / 4)
    state = {"weights": torch.randn(floats * 39 // 100), "momentum": torch.randn(floats * 39 // 100), "bank": torch.randn(floats * 22 // 100)}
    times = []
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "last.ckpt"
        for _ in range(repeats):
            start = time.perf_counter()
            AtomicCheckpointIO().save_checkpoint(state, target)
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="self.log calls timed")
    parser.add_argument("--images", type=int, default=60000, help="test images for the evaluation batches (CIFAR-10: 60,000)")
    parser.add_argument("--checkpoint-mb", type=float, default=115.0, help="checkpoint size (CIFAR ResNet-18 run: ~115 MB)")
    parser.add_argument("--repeats", type=int, default=3, help="checkpoint writes")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"threads": 1, **log_call_us(args.calls), "images": args.images, **eval_batches_s(args.images),
              "checkpoint_mb": args.checkpoint_mb, "checkpoint_write_s": checkpoint_write_s(args.checkpoint_mb, args.repeats)}  # fmt: skip
    print(f"self.log: {result['log_us_per_call']:.0f} µs a call, {result['result_metric_to_us']:.0f} µs of it in _ResultMetric.to")
    print(f"test batches of {args.images} images: whole {result['whole_batches_s']:.2f} s, image by image {result['image_by_image_s']:.2f} s")
    print(f"checkpoint of {args.checkpoint_mb:.0f} MB, written and synced: " + ", ".join(f"{s:.2f} s" for s in result["checkpoint_write_s"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
