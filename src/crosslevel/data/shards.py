"""Data sets packed as webdataset tar shards: :func:`pack` writes them, ``dataset=shards`` reads them.

A packed data set is a folder (or a URL prefix webdataset's ``gopen`` opens: ``http(s)://``,
``gs://``, ``pipe:CMD`` -- with ``{}`` where the file name goes, else at the end) holding ``index.json`` and ``<split>-NNNNNN.tar`` shards of plain tar
files. Each sample is ``<index>.<ext>`` (the image file's own bytes; PNG for array sources),
``<index>.cls`` (the label) and ``<index>.json`` (``index``, ``label``, ``size`` [w, h], ``file``).
``index`` is the image's position in the source's split -- the row of the NPID memory bank --
so a run from shards and a run from the source address the same bank rows. The samples are
written in a seeded random order, so that a shard is a random part of the data set.

Read in memory (``in_memory=true``, the default) a split is decoded once into an
:class:`InMemoryImages` placed by ``index``: the same images, in the same order, as the source.
Streamed (``in_memory=false``) training reads each rank's share of every epoch
(:func:`worker_ranges`) and evaluation reads the shards in order.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from ..config import PACK_SOURCES, is_url
from ..distributed import rank, world_size
from ..errors import CrossLevelError, MissingSplit
from . import decode_cache
from .sampling import ResumableLoader, ResumableSampler, leave_stops_to_the_trainer
from .folders import IMAGE_SUFFIXES, LOADING_BARS, ImageFiles, _decode, _one_size
from .images import Images, InMemoryImages
from .sources import load_split

INDEX_FILE = "index.json"
FORMAT, VERSION = "crosslevel-webdataset", 1
FILE_SOURCES = ("folder",)  # sources whose images are files: read in memory they are resized to image_size
Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 C×H×W image -> view


class ShardError(CrossLevelError):
    """A shard or sample that cannot be read. Raised in a loader worker, PyTorch re-raises it in the
    main process with the worker's traceback as its message; this keeps the message alone."""

    def __init__(self, message: str) -> None:
        super().__init__(message.rsplit(f"{__name__}.ShardError: ", 1)[-1].strip())


def _webdataset() -> Any:
    try:
        import webdataset
    except ModuleNotFoundError as err:
        raise CrossLevelError(f"shards (pack, dataset=shards) need webdataset: pip install 'crosslevel[shards]' ({err})") from None
    return webdataset


def _join(location: str, name: str) -> str:
    """File ``name`` of the data set at ``location``: in place of ``{}`` when it has one
    (``pipe:aws s3 cp s3://bucket/shards/{} -``), else appended as a path or URL component."""
    if "{}" in location:
        return location.replace("{}", name)
    return f"{location.rstrip('/')}/{name}" if is_url(location) else str(Path(location).expanduser() / name)


def _open(location: str, name: str) -> IO[bytes]:
    """File ``name`` of a packed data set, opened for reading (local, or through ``gopen``)."""
    where = _join(location, name)
    try:
        return _webdataset().gopen(where, "rb") if is_url(location) else open(where, "rb")
    except OSError as err:
        raise ShardError(f"cannot open {where}: {err}") from None


# ---------------------------------------------------------------- packing


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CrossLevelError(f"{out} exists and is not a folder: give a new or empty folder to pack into")
    if out.is_dir() and any(out.iterdir()):
        stopped = "" if (out / INDEX_FILE).is_file() else " (without index.json: a pack that stopped; remove it and pack again)"
        raise CrossLevelError(f"{out} exists and is not empty{stopped}: give a new or empty folder to pack into")


def _sample_bytes(images: Images, position: int) -> tuple[str, bytes, tuple[int, int], str]:
    """(extension, encoded image, (width, height), source file) of image ``position`` of a split."""
    if isinstance(images, ImageFiles):
        path = images.paths[position]
        try:
            with Image.open(path) as image:
                size = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise CrossLevelError(f"cannot read image {path} (corrupt, truncated, unreadable or not an image)") from None
        return path.suffix.lower().lstrip("."), path.read_bytes(), size, str(path.relative_to(images.where))
    pixels = images.image(position).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return "png", encoded.getvalue(), image.size, ""


def _pack_split(images: Images, split: str, out: Path, shard_size: int, seed: int) -> list[dict[str, object]]:
    """Write ``images`` as shards ``<split>-NNNNNN.tar`` of ``shard_size`` samples in a seeded random
    order; the shards' names and sample counts."""
    wds = _webdataset()
    order = np.random.default_rng(seed).permutation(len(images))
    shards = []
    with tqdm(total=len(images), desc=f"packing {split}", unit="img", mininterval=1.0) as bar:
        for start in range(0, len(images), shard_size):
            name = f"{split}-{start // shard_size:06d}.tar"
            with wds.TarWriter(str(out / name), encoder=False, mtime=0) as writer:  # whole-second mtime: no PAX headers; reproducible
                for position in order[start : start + shard_size].tolist():
                    ext, data, size, file = _sample_bytes(images, position)
                    label = int(images.labels[position])
                    meta = {"index": position, "label": label, "size": list(size), "file": file}
                    writer.write({"__key__": f"{position:09d}", ext: data, "cls": str(label).encode(), "json": json.dumps(meta).encode()})
                    bar.update()
            shards.append({"name": name, "count": min(shard_size, len(images) - start)})
    return shards


def pack(dataset: str, source: str | None, out: Path, shard_size: int = 1000, seed: int = 0, subset: str = "") -> dict[str, Any]:
    """Pack the train and (when present) test split of ``dataset`` at ``source`` into ``out``:
    shards plus ``index.json`` (format, classes, labels by index, mean/std, channels, shards), written
    last so that an interrupted pack is not taken for a data set. Returns the index."""
    if dataset not in PACK_SOURCES:
        raise CrossLevelError(f"pack reads {', '.join(PACK_SOURCES)}; got dataset '{dataset}'")
    if shard_size < 1:
        raise CrossLevelError(f"shard size must be at least 1, got {shard_size}")
    _webdataset()
    _check_out(out)
    splits: dict[str, Images] = {"train": load_split(dataset, source, "train", subset=subset, in_memory=False)}
    try:
        splits["test"] = load_split(dataset, source, "test", subset=subset, in_memory=False)
    except MissingSplit:
        pass
    out.mkdir(parents=True, exist_ok=True)
    train = splits["train"]
    index = {
        "format": FORMAT,
        "version": VERSION,
        "source": dataset,
        "classes": list(train.classes),
        "mean": list(train.mean),
        "std": list(train.std),
        "channels": train.channels,
        "splits": {
            split: {"labels": images.labels.tolist(), "shards": _pack_split(images, split, out, shard_size, seed)}
            for split, images in splits.items()
        },
    }
    temporary = out / f"{INDEX_FILE}.tmp"
    temporary.write_text(json.dumps(index) + "\n")
    temporary.replace(out / INDEX_FILE)
    return index


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Shard:
    """One tar file of a split: its file name and how many samples it holds."""

    name: str
    count: int


def read_index(location: str) -> dict[str, Any]:
    """``index.json`` of the packed data set at ``location``, checked."""
    if not is_url(location):
        folder = Path(location).expanduser()
        if not folder.exists():
            raise CrossLevelError(f"data path does not exist: {folder}")
        if not (folder / INDEX_FILE).is_file():
            raise CrossLevelError(f"no {INDEX_FILE} in {folder}: not a packed data set (crosslevel pack FOLDER OUT), or its packing did not finish")
    with _open(location, INDEX_FILE) as handle:
        try:
            index = json.loads(handle.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CrossLevelError(f"{_join(location, INDEX_FILE)} is damaged: {err}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise CrossLevelError(f"{_join(location, INDEX_FILE)} is not a crosslevel pack index (format {FORMAT}, version {VERSION})")
    return index


@dataclass(frozen=True)
class Sample:
    """One packed sample: its global ``index``, ``label``, encoded image bytes and where it is (messages)."""

    index: int
    label: int
    data: bytes
    where: str


def _sample_pixels(sample: Sample, channels: int, size: int | None) -> np.ndarray:
    """A sample's image as uint8 H×W×channels (RGB as the folder source decodes it, resized to
    size×size when given; or grey); an image that cannot be decoded is an error naming it."""
    if channels == 3:
        pixels = _decode(io.BytesIO(sample.data), size)  # type: ignore[arg-type]  # PIL opens file objects too
    else:
        try:
            with Image.open(io.BytesIO(sample.data)) as image:
                pixels = np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            pixels = None
    if pixels is None:
        raise ShardError(f"cannot decode image {sample.where} (damaged shard): pack the data set again")
    return pixels


def _offset_of(path: str, sample: int) -> int:
    """The byte offset of sample ``sample``'s first member in a local tar shard, found from the member
    headers alone (tarfile seeks over the data); a sample is the members of one key, as webdataset groups them."""
    with tarfile.open(path, "r:") as tar:
        key, seen = None, -1
        while (member := tar.next()) is not None:
            if member.name.split(".", 1)[0] != key:
                key, seen = member.name.split(".", 1)[0], seen + 1
                if seen == sample:
                    return member.offset
    raise ShardError(f"damaged shard {path}: it holds {seen + 1} samples, {INDEX_FILE} says more")


def shard_samples(location: str, shard: Shard, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
    """Samples ``start``..``stop`` (default: the end) of ``shard``, read in one pass (a local shard from
    the start of sample ``start``; a remote one read through from its beginning); a shard that cannot
    be read or holds other than its indexed count of samples is one error naming it."""
    wds = _webdataset()
    where = _join(location, shard.name)
    stop = shard.count if stop is None else stop
    position = -1
    try:
        with _open(location, shard.name) as stream:
            first = 0
            if start and not is_url(location):
                stream.seek(_offset_of(where, start))
                first = start
            files = ({**entry, "__url__": where} for entry in wds.tariterators.tar_file_iterator(stream))
            for position, sample in enumerate(wds.tariterators.group_by_keys(files), first):
                if position >= stop:
                    return
                if position >= start:
                    meta = json.loads(sample["json"])
                    image = next(value for key, value in sample.items() if f".{key}" in IMAGE_SUFFIXES)
                    yield Sample(int(meta["index"]), int(meta["label"]), image, f"{where}:{sample['__key__']}")
    except (tarfile.TarError, OSError, ValueError, KeyError, StopIteration, TypeError) as err:
        raise ShardError(f"damaged shard {where} ({type(err).__name__}: {err}): pack the data set again") from None
    if position + 1 != shard.count:
        raise ShardError(f"damaged shard {where}: {INDEX_FILE} says {shard.count} samples, it holds {position + 1}")


@dataclass(frozen=True)
class ShardImages(Images):
    """A packed split: labels by index, the shards in their stored order. Streamed (``in_memory=false``)
    it has no random access (:meth:`image`, :meth:`select`); :meth:`decoded` reads it into memory.
    ``crop_side`` is ``image_size``; ``resize``: the images are files of their own sizes, resized to
    ``crop_side`` (when set) in memory, as the folder source does."""

    location: str
    shards: tuple[Shard, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_side: int
    num_channels: int
    resize: bool

    @property
    def channels(self) -> int:
        return self.num_channels

    @property
    def side(self) -> int:
        return self.crop_side

    def image(self, index: int) -> torch.Tensor:
        raise CrossLevelError(f"streamed shards (in_memory=false) are read in order: this needs random access to the images of {self.location} (a run with in_memory=true has it)")

    def select(self, indices: np.ndarray) -> Images:
        raise CrossLevelError(f"streamed shards (in_memory=false) are read whole and in order: choosing images of {self.location} needs in_memory=true")

    def pixels(self, sample: Sample) -> torch.Tensor:
        """A sample's image as uint8 C×H×W (its own size); an undecodable image is an error naming it."""
        return torch.from_numpy(_sample_pixels(sample, self.channels, None).copy()).permute(2, 0, 1)

    def decoded(self) -> InMemoryImages:
        """Every sample decoded (4 threads) and placed by its index: the source's images in its order.
        Local shards go through the decoded-image cache (:mod:`.decode_cache`, keyed by the shard files)."""
        size = self.crop_side if self.resize and self.crop_side else None
        entry = None if is_url(self.location) else decode_cache.entry_path([Path(self.location) / s.name for s in self.shards], size)
        arrays = decode_cache.load(entry, len(self)) if entry is not None else None
        if arrays is None:
            arrays = self._decode_all(size)
            if entry is not None:
                decode_cache.save(entry, arrays)
        return InMemoryImages(np.stack(arrays), self.labels, self.classes, self.mean, self.std)  # type: ignore[arg-type]

    def _decode_all(self, size: int | None) -> list[np.ndarray | None]:
        """The decoded images in index order, checked against the index (each index once, its label)."""
        arrays: list[np.ndarray | None] = [None] * len(self)
        names = [""] * len(self)
        decode = lambda sample: (sample, _sample_pixels(sample, self.channels, size))  # noqa: E731
        with ThreadPoolExecutor(max_workers=4) as pool:
            work = pool.map(decode, self.samples())
            bar = tqdm(work, total=len(self), desc=f"decoding {self.location}", unit="img", leave=False, mininterval=1.0, disable=not LOADING_BARS.get())
            for sample, array in bar:
                if not 0 <= sample.index < len(self) or arrays[sample.index] is not None or sample.label != self.labels[sample.index]:
                    raise ShardError(f"damaged shard {sample.where}: index {sample.index} / label {sample.label} disagree with {INDEX_FILE}")
                arrays[sample.index], names[sample.index] = array, sample.where
        _one_size(names, arrays, self.location)  # type: ignore[arg-type]  # every index was seen once: no None left
        return arrays

    def samples(self, start: int = 0, stop: int | None = None, order: tuple[Shard, ...] | None = None) -> Iterator[Sample]:
        """Samples ``start``..``stop`` of the concatenation of the shards in ``order`` (default: stored)."""
        offset, stop = 0, len(self) if stop is None else stop
        for shard in order or self.shards:
            if offset + shard.count > start and offset < stop:
                yield from shard_samples(self.location, shard, max(start - offset, 0), min(stop - offset, shard.count))
            offset += shard.count


def load_shard_split(location: str, split: str, image_size: int = 0, in_memory: bool = True) -> Images:
    """Split ``split`` of the packed data set at ``location`` as a :class:`ShardImages` stream, or decoded
    into memory (:meth:`ShardImages.decoded`)."""
    index = read_index(location)
    if split not in index["splits"]:
        raise (MissingSplit if split == "test" else CrossLevelError)(f"the packed data set at {location} has no {split} split")
    part = index["splits"][split]
    location = location if is_url(location) else str(Path(location).expanduser())
    stream = ShardImages(
        location,
        tuple(Shard(s["name"], int(s["count"])) for s in part["shards"]),
        np.asarray(part["labels"], dtype=np.int64),
        tuple(index["classes"]),
        tuple(index["mean"]),
        tuple(index["std"]),
        image_size,
        int(index["channels"]),
        index["source"] in FILE_SOURCES,
    )
    return stream.decoded() if in_memory else stream


# ---------------------------------------------------------------- streaming


def epoch_shards(shards: tuple[Shard, ...], seed: int, epoch: int) -> tuple[Shard, ...]:
    """The shard order of ``epoch``: a permutation seeded by ``(seed, epoch)``, the same on every rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(shards[i] for i in torch.randperm(len(shards), generator=generator).tolist())


def worker_ranges(count: int, rank: int, world: int, batch: int, workers: int, worker: int, consumed: int) -> tuple[int, int, int]:
    """``(first, start, stop)``: loader worker ``worker`` of rank ``rank`` reads positions ``[first, stop)``
    of an epoch's sample stream (``count`` samples, shards in epoch order) and, after ``consumed``
    images of the epoch, still has ``[start, stop)`` to read.

    Rank ``r`` of ``W`` owns ``[r·M, r·M + S·B)`` with ``M = count // W`` and ``S = M // B`` batches
    (disjoint ranks, the same number of steps; the rest sits out this epoch). Its ``S`` batches are cut
    into ``workers`` contiguous blocks (the first ``S mod workers`` one batch longer). The DataLoader asks
    its workers for batches in turn, so after ``s = consumed / B`` batches worker ``w`` plays block
    ``(w + s) mod workers`` and continues it after the batches that block already gave: a resumed
    loader yields the rest of the epoch in the uninterrupted order, reading nothing before it.
    """
    share = count // world
    per, extra = divmod(share // batch, workers)
    done = consumed // batch
    role = (worker + done) % workers
    first = rank * share + (role * per + min(role, extra)) * batch
    length = per + (role < extra)
    given = min(-(-(done - role) // workers), length) if done > role else 0
    return first, first + given * batch, first + length * batch


class ShardStream(IterableDataset):
    """Training samples ``(views, index)`` of this rank's share of an epoch, streamed from shards.

    ``position`` (a :class:`ResumableSampler`, the loader's ``sampler``) holds the epoch and the images
    consumed; Lightning sets its epoch and :class:`~crosslevel.checkpointing.ResumeState` fast-forwards
    it. Each worker's range (:func:`worker_ranges`) is read in blocks of ``buffer`` samples (a whole
    number of batches); a block is shuffled with a generator seeded by ``(seed, epoch, block start)``
    before it is decoded and augmented, so a resumed worker re-reads at most its current block.
    """

    def __init__(self, images: ShardImages, transform: Transform, num_views: int, batch: int, buffer: int, position: ResumableSampler) -> None:
        self.images, self.transform, self.num_views, self.batch = images, transform, num_views, batch
        self.buffer = max(batch, buffer // batch * batch)
        self.position = position

    def __len__(self) -> int:
        """This rank's images of a whole epoch (whole batches)."""
        return len(self.images) // world_size() // self.batch * self.batch

    def _samples(self) -> Iterator[Sample]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, seed = self.position.epoch, self.position.seed
        first, start, stop = worker_ranges(len(self.images), rank(), world_size(), self.batch, workers, worker, self.position.skip)
        order = epoch_shards(self.images.shards, seed, epoch)
        block = first + (start - first) // self.buffer * self.buffer  # the block ``start`` lies in
        stream = self.images.samples(block, stop, order)  # one pass: every shard opened once
        while block < stop:
            samples = list(itertools.islice(stream, min(self.buffer, stop - block)))
            generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + block) % (1 << 63))
            yield from [samples[i] for i in torch.randperm(len(samples), generator=generator).tolist()][max(start - block, 0) :]
            block += self.buffer

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, ...], int]]:
        for sample in self._samples():
            image = self.images.pixels(sample)
            yield tuple(self.transform(image) for _ in range(self.num_views)), sample.index


class ShardLoader(ResumableLoader):
    """The loader of a :class:`ShardStream`; its ``sampler`` is the stream's position, so that
    Lightning's ``set_epoch`` and :class:`~crosslevel.checkpointing.ResumeState` reach it, as they
    reach the :class:`ResumableSampler` of in-memory data."""

    @property  # type: ignore[override]
    def sampler(self) -> ResumableSampler:
        return self.dataset.position  # type: ignore[attr-defined]

    @sampler.setter
    def sampler(self, value: object) -> None:
        """DataLoader sets its constant sampler of iterable datasets here; the batches never read it."""


class ShardLabelled(IterableDataset):
    """``(image, label)`` of every sample of a streamed split with a fixed transform, in shard order (evaluation)."""

    def __init__(self, images: ShardImages, transform: Transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for sample in self.images.samples():
            yield self.transform(self.images.pixels(sample)), sample.label


def shard_loader(images: ShardImages, transform: Transform, num_views: int, batch: int, buffer: int, seed: int, workers: int) -> ShardLoader:
    """The training loader of a streamed split: whole batches of ``(views, indices)``; worker processes
    are started anew every epoch (they read the epoch from the position when they start)."""
    position = ResumableSampler(len(images), seed)
    stream = ShardStream(images, transform, num_views, batch, buffer, position)
    return ShardLoader(
        stream, batch_size=batch, drop_last=True, num_workers=workers, pin_memory=torch.cuda.is_available(), worker_init_fn=leave_stops_to_the_trainer
    )


__all__ = ["INDEX_FILE", "ShardImages", "load_shard_split", "pack", "read_index", "shard_loader", "worker_ranges"]
