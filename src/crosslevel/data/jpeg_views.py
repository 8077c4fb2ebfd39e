"""``decode=gpu``: JPEG files read as bytes by the loader workers, decoded on the training device
(batched nvJPEG, ``torchvision.io.decode_jpeg(..., device="cuda")``) and made into views there by
the on-device view maker of :mod:`.device_views`.

* Loader: :class:`EncodedFiles` yields each file's bytes; :func:`collate_encoded` packs a batch into
  one :class:`EncodedBatch` (the bytes end to end, offsets, indices), of which only the indices move
  to the device: ``decode_jpeg`` reads its input from host memory whatever device decodes.
* Ahead: :class:`DecodeAhead`, the training loader, decodes batch i + 1 on a side CUDA stream while
  batch i trains (:class:`DecodedBatch`); the views are still made in order, on the training stream.
* Decoding (:func:`decode`): the JPEGs of a batch in one nvJPEG call; the odd file of another format
  (ImageNet's PNG named ``.JPEG``) or a JPEG nvJPEG refuses (CMYK) on the CPU, file by file, with one
  warning the first time; a folder that is mostly not JPEGs falls back to PIL in the workers.
* Views: :class:`JpegViews` decodes the batch (each image keeps its own size), draws every view's
  parameters on the CPU from torch's global generator -- seeded by ``seed`` and saved in checkpoints,
  so the same seed gives the same crops whichever device decodes --, crops each image with its own
  box and resizes it to size×size (torchvision's ``resized_crop`` of a float image, antialiased),
  flips, and hands the stacked batch to :meth:`DeviceAugment.finish` (colour, grayscale, blur,
  normalisation, erasing: the parameters of the CPU recipe).
* Pixels: nvJPEG's IDCT rounds differently from libjpeg-turbo's (PIL), a grey level or two here and
  there; the views are otherwise the CPU recipe's, computed in float32 without its uint8 rounding.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
import torchvision.io
from torch import nn
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode
from torchvision.transforms.v2.functional import to_dtype

from ..errors import CrossLevelError, warn
from .device_views import DeviceAugment

T = TypeVar("T")
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker and the first byte of the next marker


def _quiet(function: Callable[..., T]) -> Callable[..., T]:
    """``function`` without torchvision 0.29's deprecation warning of its image decoders (on every call)."""

    def quiet(*args: object, **kwargs: object) -> T:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
            return function(*args, **kwargs)

    return quiet


read_file, decode_jpeg, decode_image = map(_quiet, (torchvision.io.read_file, torchvision.io.decode_jpeg, torchvision.io.decode_image))


def is_jpeg(path: Path) -> bool:
    """Whether the file at ``path`` starts like a JPEG (an unreadable file does not)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(3) == JPEG_MAGIC
    except OSError:
        return False


def non_jpegs_sampled(paths: Sequence[Path], sample: int = 1000) -> tuple[list[Path], int]:
    """(the files that are not JPEGs among up to ``sample`` of ``paths``, evenly spaced; how many were
    checked): 3 bytes read per file, on 8 threads, so that a million files on a network disk cost a
    thousand reads, not a million."""
    checked = list(paths[:: max(1, len(paths) // sample)][:sample])
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [path for path, jpeg in zip(checked, pool.map(is_jpeg, checked)) if not jpeg], len(checked)


def starts_like_jpeg(data: torch.Tensor) -> bool:
    """Whether the uint8 bytes ``data`` start like a JPEG."""
    return data[:3].numpy().tobytes() == JPEG_MAGIC


@dataclass(frozen=True)
class EncodedBatch:
    """Encoded image files of one batch: ``data`` uint8, their bytes end to end (host memory);
    ``offsets`` B + 1 positions in it; ``indices`` long B, the images' indices; ``names`` their paths
    (for messages). Lightning moves a batch with :meth:`to`, which moves the indices only."""

    data: torch.Tensor
    offsets: tuple[int, ...]
    indices: torch.Tensor
    names: tuple[str, ...]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def files(self) -> list[torch.Tensor]:
        """The B files' bytes, uint8 each."""
        return [self.data[start:end] for start, end in itertools.pairwise(self.offsets)]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EncodedBatch:
        return replace(self, indices=self.indices.to(device, non_blocking=non_blocking))


class EncodedFiles(Dataset):
    """Yields ``(bytes, index, path)``: the undecoded file ``index`` of ``paths`` as a uint8 tensor."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path = str(self.paths[index])
        return read_file(path), index, path


def collate_encoded(items: list[tuple[torch.Tensor, int, str]]) -> EncodedBatch:
    """``(bytes, index, path)`` items → one :class:`EncodedBatch` (one tensor to share between processes)."""
    files, indices, names = zip(*items)
    offsets = tuple(itertools.accumulate((len(data) for data in files), initial=0))
    return EncodedBatch(torch.cat(files), offsets, torch.tensor(indices), names)


BatchDecoder = Callable[[list[torch.Tensor], torch.device, Sequence[str]], list[torch.Tensor]]


def decode(
    files: list[torch.Tensor], device: torch.device, names: Sequence[str] = (), jpegs_decoder: BatchDecoder | None = None
) -> list[torch.Tensor]:
    """Encoded image ``files`` (uint8 bytes, host memory) → uint8 3×H×W RGB images of their own sizes on
    ``device``, in order. The JPEGs (by their first bytes) in one batched call on ``device``: ``jpegs_decoder``
    (e.g. :class:`~.nvimgcodec_decode.NvImageCodecJpegs`), by default :func:`decode_jpegs` (torchvision;
    CUDA: nvJPEG). Other formats (PNG, WebP, GIF: ImageNet's train split holds a PNG named ``.JPEG``) are
    decoded on the CPU by ``torchvision.io.decode_image``. A file that nothing decodes is an error naming
    it (from ``names``, when given)."""
    names = list(names) or [f"file {number} of the batch" for number in range(len(files))]
    jpegs = [number for number, data in enumerate(files) if starts_like_jpeg(data)]
    images = {number: _decode_other(files[number], names[number]).to(device) for number in set(range(len(files))) - set(jpegs)}
    batch = (jpegs_decoder or decode_jpegs)([files[number] for number in jpegs], device, [names[number] for number in jpegs])
    images.update(zip(jpegs, batch))
    return [images[number] for number in range(len(files))]


def decode_jpegs(files: list[torch.Tensor], device: torch.device, names: Sequence[str]) -> list[torch.Tensor]:
    """JPEG ``files`` decoded in one torchvision call on ``device``; when that fails, file by file, and a JPEG
    that ``device`` cannot decode (nvJPEG may refuse a CMYK one) on the CPU (:func:`decode_one_jpeg`)."""
    if not files:
        return []
    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [decode_one_jpeg(data, device, name) for data, name in zip(files, names)]


def decode_one_jpeg(data: torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    """One JPEG decoded on ``device``, else on the CPU and moved to ``device``, else an error naming it."""
    error: RuntimeError | None = None
    for where in dict.fromkeys([device, torch.device("cpu")]):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=where).to(device)
        except RuntimeError as err:
            error = err
    raise _undecodable(name, error)


def _decode_other(data: torch.Tensor, name: str) -> torch.Tensor:
    """A file of another format than JPEG decoded on the CPU: uint8 3×H×W (16-bit PNGs scaled to 8 bits)."""
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise _undecodable(name, error) from None
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def _undecodable(name: str, error: Exception | None) -> CrossLevelError:
    return CrossLevelError(f"cannot decode {name} ({error}): corrupt or truncated, or not an image; decode=cpu decodes with PIL")


def resized_crops(images: Sequence[torch.Tensor], boxes: list[list[int]], flip: torch.Tensor, size: int) -> torch.Tensor:
    """Each image cropped to its own box, resized to size×size and flipped where ``flip``: torchvision's
    ``resized_crop(image / 255, ..., antialias=True)`` (bilinear) image by image, as the sizes differ.

    Args:
        images: B uint8 C×H×W (sizes may differ), all on one device.
        boxes: B ``(top, left, height, width)`` host integers (:func:`~.device_views.sample_crops`).
        flip: B bool on the images' device.
        size: output side.

    Returns:
        float B×C×size×size in [0, 1].
    """
    views = torch.cat([
        F.interpolate(image[None, :, top : top + height, left : left + width].float() / 255.0, size=(size, size),
                      mode="bilinear", align_corners=False, antialias=True)
        for image, (top, left, height, width) in zip(images, boxes)
    ])  # fmt: skip
    return torch.where(flip[:, None, None, None], views.flip(-1), views)


class JpegViews(nn.Module):
    """``decode=gpu``'s view maker: an :class:`EncodedBatch` → (``num_views`` float B×C×size×size
    views, the indices), decoded and made on the batch's device (``decode_device``, when set, decodes
    there instead: the CPU, to test everything but the nvJPEG call).

    Args:
        augment: the view maker (its recipe, size and normalisation).
        num_views: views per image.
        decode_device: where to decode; None: the batch's device.
        jpegs_decoder: what decodes a batch's JPEGs (:func:`decode`); None: torchvision.
    """

    def __init__(
        self, augment: DeviceAugment, num_views: int = 2, decode_device: str | None = None, jpegs_decoder: BatchDecoder | None = None
    ) -> None:
        super().__init__()
        self.augment, self.num_views, self.jpegs_decoder = augment, num_views, jpegs_decoder
        self.decode_device = torch.device(decode_device) if decode_device else None
        self.told_of_other_formats = False
        self.finish = augment.finish  # colour, grey, blur, erasing, normalisation of the stacked crops

    def compile_views(self, mode: str) -> None:
        """``torch.compile`` the part of the view maker after the crops (the crops are per image, of
        images of their own sizes) with ``mode``: one static graph for the stacked batch."""
        self.finish = torch.compile(self.augment.finish, dynamic=False, mode=mode)

    def sample(self, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parameters of ``num_views`` views of each image (view v of image i at v·B + i), on the CPU
        from torch's global generator: the same for the same seed whichever device decoded ``images``."""
        heights = torch.tensor([image.shape[-2] for image in images]).repeat(self.num_views)
        widths = torch.tensor([image.shape[-1] for image in images]).repeat(self.num_views)
        return self.augment.sample(len(heights), heights, widths, device=torch.device("cpu"))

    def decode_files(self, batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
        """The batch's images decoded on ``device`` (``decode_device`` when set); one warning the first time a
        batch holds a file of another format than JPEG."""
        files = batch.files()
        if not self.told_of_other_formats:
            other = next((name for data, name in zip(files, batch.names) if not starts_like_jpeg(data)), None)
            if other is not None:
                warn(f"decode=gpu: {other} is not a JPEG file; files of other formats are decoded on the CPU, the JPEGs on the GPU")
                self.told_of_other_formats = True
        return decode(files, self.decode_device or device, batch.names, self.jpegs_decoder)

    def forward(self, batch: EncodedBatch | DecodedBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """B encoded files, or B images decoded ahead (:class:`DecodeAhead`), their indices on the training
        device → (the views, the indices)."""
        device = batch.device
        if isinstance(batch, DecodedBatch):
            images = batch.wait()
        else:
            images = self.decode_files(batch, device)
        images = [image.to(device, non_blocking=True) for image in images]
        drawn = self.sample(images)
        params = {name: value.to(device, non_blocking=True) for name, value in drawn.items()}
        views = resized_crops(images * self.num_views, drawn["boxes"].tolist(), params["flip"], self.augment.size)
        return list(self.finish(views, params).chunk(self.num_views)), batch.indices


@dataclass(frozen=True)
class DecodedBatch:
    """A batch decoded ahead: ``images`` B uint8 3×H×W on the decoding device, ``indices`` long B; ``ready``:
    the CUDA event after which the images are there (None: decoded synchronously, on the CPU). Lightning
    moves it with :meth:`to`, which moves the indices only."""

    images: list[torch.Tensor]
    indices: torch.Tensor
    ready: torch.cuda.Event | None = None

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DecodedBatch:
        return replace(self, indices=self.indices.to(device, non_blocking=non_blocking))

    def wait(self) -> list[torch.Tensor]:
        """The images, once the current stream has waited for their decode (and holds their memory)."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.images[0].device if self.images else None)
            stream.wait_event(self.ready)
            for image in self.images:
                image.record_stream(stream)  # allocated on the side stream, used on this one
        return self.images


class DecodeAhead:
    """``decode=gpu``'s training loader: the encoded batches of ``loader``, each decoded one batch ahead of
    the one handed on, on a CUDA stream of its own, so that the device decodes batch i + 1 while it trains
    on batch i (on the CPU: decoded as they come). Yields :class:`DecodedBatch`; the views are made later,
    in order, by :meth:`JpegViews.forward` (the same draws, so the same views as without it).

    Args:
        loader: the DataLoader of :class:`EncodedBatch` (its sampler is the resumable one).
        views: the view maker, whose :meth:`~JpegViews.decode_files` decodes.
        device_of: the training device (read when iteration starts).
    """

    def __init__(self, loader: Iterable[EncodedBatch], views: JpegViews, device_of: Callable[[], torch.device]) -> None:
        self.loader, self.views, self.device_of = loader, views, device_of
        self.stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def sampler(self) -> object:
        """The loader's sampler, where Lightning calls ``set_epoch`` before every epoch."""
        return self.loader.sampler  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, object]:
        """The loader's (a :class:`~.sampling.ResumableLoader`: Lightning then resumes in the middle of an epoch)."""
        return self.loader.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.loader.load_state_dict(state_dict)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[DecodedBatch]:
        device = self.views.decode_device or self.device_of()
        pending: DecodedBatch | None = None
        for batch in self.loader:
            started = self._start(batch, device)
            if pending is not None:
                yield pending
            pending = started
        if pending is not None:
            yield pending

    def _start(self, batch: EncodedBatch, device: torch.device) -> DecodedBatch:
        """Queue the decode of ``batch`` on the side stream (CUDA), or decode it now (CPU)."""
        if device.type != "cuda":
            return DecodedBatch(self.views.decode_files(batch, device), batch.indices)
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self.stream):  # reads host bytes only: nothing to wait for on the training stream
            images = self.views.decode_files(batch, device)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return DecodedBatch(images, batch.indices, ready)
