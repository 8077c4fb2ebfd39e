"""Carry CIFAR-10 to a machine without internet in one small file, and unpack it there.

``pack`` stores the JPEG bytes of an image-folder copy of CIFAR-10 (``train/<class>/*.jpg``,
``test/<class>/*.jpg``) in one ``.npz`` (about 55 MB for all 60,000 images: JPEG does not
compress further, and one file avoids per-file overhead). ``unpack`` decodes it into the
standard python-version folder (``cifar-10-batches-py``), which ``dataset=cifar10`` reads with
the presets' normalisation. The pixels are those of the JPEG files, not of the original pickles.

    python benchmarks/cifar_pack.py pack ../shared/data/cifar10 .gpu-data/cifar10-jpeg.npz
    python benchmarks/cifar_pack.py unpack .gpu-data/cifar10-jpeg.npz /tmp/cifar10
"""

from __future__ import annotations

import argparse
import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "test")


def pack(source: Path, target: Path) -> None:
    classes = sorted(d.name for d in (source / "train").iterdir() if d.is_dir())
    blobs, labels, splits = [], [], []
    for split_index, split in enumerate(SPLITS):
        for label, name in enumerate(classes):
            for path in sorted((source / split / name).glob("*.jpg")):
                blobs.append(np.frombuffer(path.read_bytes(), dtype=np.uint8))
                labels.append(label)
                splits.append(split_index)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, blob=np.concatenate(blobs), offsets=offsets, labels=np.array(labels, np.int16),
             splits=np.array(splits, np.int8), classes=np.array(classes))  # fmt: skip
    print(f"{target}: {len(blobs)} images, {target.stat().st_size / 2**20:.1f} MiB")


def unpack(packed: Path, target: Path, batches: int = 5) -> None:
    archive = np.load(packed)
    blob, offsets = archive["blob"], archive["offsets"]

    def decode(i: int) -> np.ndarray:
        image = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).reshape(-1)  # CIFAR rows: R, G, B planes

    with ThreadPoolExecutor() as pool:
        rows = np.stack(list(pool.map(decode, range(len(offsets) - 1))))
    labels, splits = archive["labels"].astype(int), archive["splits"]
    folder = target / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = np.flatnonzero(splits == 0)
    for number, part in enumerate(np.array_split(train, batches), start=1):
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps({"data": rows[part], "labels": labels[part].tolist()}))
    test = np.flatnonzero(splits == 1)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows[test], "labels": labels[test].tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": archive["classes"].tolist()}))
    print(f"{folder}: {len(train)} train and {len(test)} test images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack", help="image folder → one .npz of JPEG bytes")
    packer.add_argument("source", type=Path)
    packer.add_argument("target", type=Path)
    unpacker = commands.add_parser("unpack", help=".npz → python-version CIFAR-10 folder")
    unpacker.add_argument("packed", type=Path)
    unpacker.add_argument("target", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.source, args.target)
    else:
        unpack(args.packed, args.target)


if __name__ == "__main__":
    main()
