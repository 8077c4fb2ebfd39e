"""Packing and streaming figures of ``dataset=shards`` on this machine (CPU, local disk).

1. ``crosslevel pack`` of an image folder: seconds, images/s, bytes per image in the shards against
   the image files' own bytes (the tar headers' share).
2. Reading: samples/s of the train split's shards parsed in one process (no decoding).
3. Rank 0's share of one epoch of ``--world`` ranks streamed (:class:`~crosslevel.data.shards.ShardStream`,
   ``--workers`` loader workers): images/s read, decoded and augmented (two ``cifar`` views each).

    python benchmarks/shards.py ../shared/data/cifar10 --out /tmp/cifar10-shards --world 4 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from unittest import mock

import torch

import crosslevel.data.shards as shards
from crosslevel.config import Config
from crosslevel.data.shards import load_shard_split, pack, shard_loader
from crosslevel.data.folders import IMAGE_SUFFIXES
from crosslevel.data.views import view_transform


def file_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="image folder with train/ (and test/) class folders")
    parser.add_argument("--out", type=Path, required=True, help="where to pack (replaced)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--world", type=int, default=4, help="ranks of the epoch whose rank 0 share is streamed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    index = pack("folder", str(args.folder), args.out, args.shard_size)
    pack_s = time.perf_counter() - start
    images = sum(len(part["labels"]) for part in index["splits"].values())
    packed = sum(path.stat().st_size for path in args.out.glob("*.tar"))
    result = {
        "pack_seconds": round(pack_s, 1),
        "pack_images_per_s": round(images / pack_s),
        "image_bytes_per_image": round(file_bytes(args.folder) / images),
        "shard_bytes_per_image": round(packed / images),
    }

    train = load_shard_split(str(args.out), "train", image_size=32, in_memory=False)
    start = time.perf_counter()
    read = sum(1 for _ in train.samples())
    result.update(read_images_per_s=round(read / (time.perf_counter() - start)))

    transform = view_transform("cifar", 32, 3, train.mean, train.std)
    loader = shard_loader(train, transform, 2, args.batch, Config().shuffle_buffer, seed=0, workers=args.workers)
    start = time.perf_counter()
    with mock.patch.object(shards, "world_size", lambda: args.world):  # rank 0's share of an epoch of --world ranks
        streamed = sum(len(indices) for _, indices in loader)
    result.update(stream_images=streamed, stream_images_per_s=round(streamed / (time.perf_counter() - start)), torch_threads=torch.get_num_threads())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
