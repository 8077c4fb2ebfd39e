"""The ``crosslevel pack`` command: a data set written as webdataset tar shards (:mod:`.data.shards`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import PACK_SOURCES


def _pack(args: argparse.Namespace) -> int:
    from .data.shards import pack

    source = None if args.dataset == "digits" else args.folder
    index = pack(args.dataset, source, Path(args.out), args.shard_size, args.seed, args.subset)
    for split, part in index["splits"].items():
        shards = len(part["shards"])
        print(f"{split}: {len(part['labels'])} images in {shards} shard{'s' if shards != 1 else ''}, {len(index['classes'])} classes")
    print(f"wrote {args.out}; train from it with dataset=shards data={args.out}")
    return 0


def add_pack_command(commands: argparse._SubParsersAction) -> None:
    """Register ``pack FOLDER OUT`` with the CLI's sub-commands (nothing heavy imported before it runs)."""
    pack = commands.add_parser("pack", help="write a data set as webdataset tar shards, for dataset=shards (streaming, many machines)")
    pack.add_argument("folder", metavar="FOLDER", help="the data set (an image folder; the CIFAR parent folder; '-' for digits)")
    pack.add_argument("out", metavar="OUT", help="new or empty folder for the shards and index.json")
    pack.add_argument("--dataset", choices=PACK_SOURCES, default="folder", help="what FOLDER holds (default folder)")
    pack.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000: ~118 MB of ImageNet JPEGs)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the random order the images are written in")
    pack.add_argument("--subset", default="", help="folder: keep these classes ('imagenet100' or a file of class names)")
    pack.set_defaults(func=_pack)
