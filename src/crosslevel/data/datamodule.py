"""The data side of a run: its splits (:class:`Data`, from the config's source, variants and subsets)
and the :class:`ContrastiveDataModule` that Lightning trains from -- loaders, and the views made on
the training device after the batch transfer with ``augment_device=device`` or ``decode=gpu``."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ..config import Config, compile_mode, num_views
from ..errors import CrossLevelError, MissingSplit, warn
from .device_views import DEVICE_RECIPES, DeviceAugment, DeviceViewSource
from .jpeg_views import DecodeAhead, DecodedBatch, EncodedBatch, EncodedFiles, JpegViews, collate_encoded, non_jpegs_sampled
from .nvimgcodec_decode import NvImageCodecJpegs
from .sampling import ResumableLoader, ResumableSampler, leave_stops_to_the_trainer
from .folders import ImageFiles, loading_bars
from .images import Images, InMemoryImages
from .shards import ShardImages, shard_loader
from .sources import load_split
from .variants import high_correlation, long_tail
from .views import MultiViewDataset, eval_loader, view_transform


@dataclass
class Data:
    """The splits of one run: training images, the labelled test split (if any) and the kNN
    support set (``None``: the training set; STL-10: its 5k labelled train images);
    ``no_knn`` says why there is no kNN evaluation ('' when there is)."""

    train: Images
    test: Images | None
    support: Images | None = None
    no_knn: str = ""

    @property
    def knn_support(self) -> Images:
        return self.train if self.support is None else self.support

    @property
    def side(self) -> int:
        """The side (pixels) of the training images' views."""
        return self.train.side

    def train_loader(self, cfg: Config) -> DataLoader:
        """Batches of (views, indices), of indices alone with ``augment_device=device``, or of encoded
        files with ``decode=gpu`` (:class:`~.jpeg_views.EncodedBatch`; the data module then makes the
        views on the device), in the :class:`ResumableSampler` order (seeded per epoch, one share per
        device; streamed shards: :func:`~.shards.shard_loader`); the last partial batch is dropped
        (k-means needs k < B)."""
        if len(self.train) < cfg.batch_size:
            raise CrossLevelError(
                f"the training set has {len(self.train)} images, fewer than batch_size={cfg.batch_size}"
            )
        sampler = ResumableSampler(len(self.train), cfg.seed)
        if cfg.augment_device == "device":
            return ResumableLoader(range(len(self.train)), batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
        workers = {"num_workers": cfg.workers, "persistent_workers": cfg.workers > 0, "worker_init_fn": leave_stops_to_the_trainer}
        if cfg.decode == "gpu":
            assert isinstance(self.train, ImageFiles)
            dataset = EncodedFiles(self.train.paths)
            return ResumableLoader(dataset, cfg.batch_size, sampler=sampler, drop_last=True, collate_fn=collate_encoded, **workers)
        size = cfg.image_size or self.side
        transform = view_transform(
            cfg.augment, size, self.train.channels, self.train.mean, self.train.std, cfg.random_erasing, cfg.blur, cfg.flip
        )
        if isinstance(self.train, ShardImages):
            return shard_loader(self.train, transform, num_views(cfg), cfg.batch_size, cfg.shuffle_buffer, cfg.seed, cfg.workers)
        return ResumableLoader(
            MultiViewDataset(self.train, transform, num_views(cfg)),
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            **workers,
        )

    def eval_loader(self, images: Images, cfg: Config) -> DataLoader:
        """In-order batches of (image, label) with the test transform."""
        return eval_loader(images, cfg.image_size or self.side, self.train.mean, self.train.std, cfg.eval_resize, max(cfg.batch_size, 256))


def load_split_of(cfg: Config, split: str, stl10_unlabeled: bool | None = None) -> Images:
    """Split ``split`` of the config's data set before any variant or subset; image folders and list
    files as an undecoded :class:`ImageFiles` listing (:func:`chosen_and_decoded` decodes what is
    kept). ``stl10_unlabeled`` overrides the config's choice (the kNN support set of STL-10 is its
    labelled part)."""
    return load_split(
        cfg.dataset, cfg.data, split, cfg.image_size, cfg.bad_images,
        subset=cfg.class_subset,
        list_file=cfg.train_list if split == "train" else cfg.test_list,
        in_memory=False,
        stl10_unlabeled=cfg.stl10_unlabeled if stl10_unlabeled is None else stl10_unlabeled,
    )  # fmt: skip


def chosen_and_decoded(images: Images, cfg: Config, choose: Callable[[Images], Images]) -> Images:
    """``choose(images)``, with image files decoded into memory (unless ``in_memory=false``) after the
    choice, so that only the chosen files are decoded. Under ``bad_images=skip`` an unreadable chosen
    file sends the choice back to the readable files of the whole split, as when every file was
    decoded first: the same images either way."""
    if cfg.in_memory and isinstance(images, ShardImages):  # read whole: decoded before the choice
        images = images.decoded()
    chosen = choose(images)
    if not (cfg.in_memory and isinstance(chosen, ImageFiles)):
        return chosen
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipped .* unreadable image")  # reported once, by the decoding below
        decoded = chosen.decoded(cfg.bad_images)
    return decoded if not decoded.skipped else choose(images.decoded(cfg.bad_images))


def training_images(images: Images, cfg: Config) -> Images:
    """The training set the config asks for: long-tailed (``lt_ratio``), then subset (``train_subset``),
    then turned into correlated frames (``hc_frames``, ``hc_mode``); all seeded by ``seed``."""

    def choose(images: Images) -> Images:
        images = long_tail(images, cfg.lt_ratio, cfg.seed) if cfg.lt_ratio > 0 else images
        return images.subset(cfg.train_subset, cfg.seed, "train_subset")

    images = chosen_and_decoded(images, cfg, choose)
    return high_correlation(images, cfg.hc_frames, cfg.hc_mode, cfg.seed) if cfg.hc_frames > 0 else images


def load_train(cfg: Config) -> Images:
    """The training set: the train split with its variants and subset."""
    return training_images(load_split_of(cfg, "train"), cfg)


def load_support(cfg: Config, train: Images) -> Images | None:
    """The labelled kNN support set when it is not the training set ``train`` (STL-10: its labelled train split)."""
    return load_split_of(cfg, "train", stl10_unlabeled=False) if cfg.dataset == "stl10" and not train.labelled else None


def support_labelled(cfg: Config, train: Images | None = None) -> bool:
    """Whether the kNN support set has labels, found without decoding an image: digits, CIFAR and
    STL-10 (whose support is its labelled train split) always have; an image folder's, list file's or
    packed data set's training set (``train``, else read as a listing) has when every image has a label."""
    return cfg.dataset not in ("folder", "lists", "shards") or (train if train is not None else load_split_of(cfg, "train")).labelled


def load_test(cfg: Config, train: Images | None = None) -> tuple[Images | None, str]:
    """The labelled test split (``test_subset`` of it), or None and why there is no kNN evaluation;
    ``train``, the training set when it is loaded already."""
    try:
        test = load_split_of(cfg, "test")
    except MissingSplit as missing:
        return None, str(missing)
    if not test.labelled:
        return None, "the test split has no labels"
    if not support_labelled(cfg, train):
        return None, "the training images have no labels"
    return chosen_and_decoded(test, cfg, lambda images: images.subset(cfg.test_subset, cfg.seed, "test_subset")), ""


def load_data(cfg: Config) -> Data:
    """Load the training set (with its variants and subset), the labelled test split when it
    exists, and the labelled kNN support set (STL-10: the labelled train split); with progress bars
    while decoding unless ``progress=false``."""
    with loading_bars(cfg.progress):
        train = load_train(cfg)
        test, no_knn = load_test(cfg, train)
        return Data(train, test, load_support(cfg, train), no_knn)


def device_views(cfg: Config, images: Images) -> DeviceViewSource:
    """The on-device view maker of ``augment_device=device``: ``images`` kept as uint8 on the device."""
    if not isinstance(images, InMemoryImages):
        raise CrossLevelError(
            "augment_device=device needs decoded images in memory (not in_memory=false or hc_frames); "
            "set augment_device=cpu"
        )
    return DeviceViewSource(torch.from_numpy(images.images), device_augment(cfg, images), num_views(cfg))


def device_augment(cfg: Config, images: Images) -> DeviceAugment:
    """The on-device recipe of the config for ``images``; ``random_erasing``, ``flip`` (``cifar``, ``v2``)
    and (``v2``) ``blur`` set its probabilities."""
    recipe = cfg.augment if cfg.augment != "auto" else ("cifar" if images.channels == 3 else "digits")
    if recipe not in DEVICE_RECIPES:
        raise CrossLevelError(
            f"augment={recipe} has no on-device version (on-device recipes: {', '.join(DEVICE_RECIPES)}); "
            "set augment_device=cpu"
        )
    if DEVICE_RECIPES[recipe].colour and images.channels != 3:
        raise CrossLevelError(f"augment={recipe} needs colour images; these have {images.channels} channel(s)")
    device_recipe = dataclasses.replace(DEVICE_RECIPES[recipe], erasing_p=cfg.random_erasing)
    if recipe in ("cifar", "v2"):
        device_recipe = dataclasses.replace(device_recipe, flip_p=cfg.flip)
    if recipe == "v2":
        device_recipe = dataclasses.replace(device_recipe, blur_p=cfg.blur)
    return DeviceAugment(device_recipe, cfg.image_size or images.side, images.mean, images.std)


def jpeg_views(cfg: Config, images: Images, decode_device: str | None = None) -> JpegViews | None:
    """``decode=gpu``'s view maker, or None after one warning when it falls back to PIL in the loader
    workers: when training will not run on a CUDA device (unless ``decode_device`` says where to
    decode) or when most training files are not JPEGs (their first bytes, in a sample of a thousand).
    A few files of other formats are decoded on the CPU, file by file (:func:`~.jpeg_views.decode`)."""
    assert isinstance(images, ImageFiles)  # decode=gpu is validated to mean in_memory=false folders / lists
    on_cuda = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if not (on_cuda or decode_device):
        why = "training will not run on a CUDA GPU"
    else:
        others, checked = non_jpegs_sampled(images.paths)
        why = f"{len(others)} of {checked} training files checked are not JPEG files (e.g. {others[0]})" if 2 * len(others) > checked else ""
    if why:
        warn(f"decode=gpu: {why}; decoding with PIL in the loader workers instead (decode=cpu)")
        return None
    jpegs_decoder = NvImageCodecJpegs() if cfg.gpu_decoder == "nvimgcodec" else None
    return JpegViews(device_augment(cfg, images), num_views(cfg), decode_device, jpegs_decoder)


class ContrastiveDataModule(pl.LightningDataModule):
    """The training batches of a run: ``(views, indices)``.

    With ``augment_device=device`` the loader yields image indices only; the images live on the
    training device as uint8 (:class:`~.device_views.DeviceViewSource`, moved there with the first
    batch) and :meth:`on_after_batch_transfer` -- which Lightning calls after moving each batch --
    makes the views there. With ``decode=gpu`` the loader yields encoded JPEG files, decoded and made
    into views there (:class:`~.jpeg_views.JpegViews`; ``decode_device`` decodes elsewhere, e.g. on
    the CPU for tests). The loader is built once, so its :class:`ResumableSampler` is the one the
    checkpoints record.
    """

    def __init__(self, cfg: Config, data: Data, decode_device: str | None = None) -> None:
        super().__init__()
        self.cfg, self.data = cfg, data
        self.views: DeviceViewSource | JpegViews | None = None
        if cfg.decode == "gpu":
            self.views = jpeg_views(cfg, data.train, decode_device)
            cfg = cfg if self.views is not None else dataclasses.replace(cfg, decode="cpu")
        elif cfg.augment_device == "device":
            self.views = device_views(cfg, data.train)
        mode = compile_mode(cfg)
        if self.views is not None and mode is not None:  # one graph per batch shape: random sizes do not trace symbolically
            self.views.compile_views(mode)
        self.loader = data.train_loader(cfg)

    @property
    def sampler(self) -> ResumableSampler:
        return self.loader.sampler  # type: ignore[return-value]

    def train_dataloader(self) -> DataLoader | DecodeAhead:
        if isinstance(self.views, JpegViews):  # decode=gpu: the next batch decodes while this one trains
            return DecodeAhead(self.loader, self.views, self._training_device)
        return self.loader

    def _training_device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a loader read without a trainer (benchmarks)

    def on_after_batch_transfer(self, batch: object, dataloader_idx: int) -> object:
        """On-device views: B indices or an encoded batch (already on the device) → ``(views, indices)``.
        With ``cuda_graphs`` this is where a training step begins (the first graph replayed is the views')."""
        if self.cfg.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.views is None or not isinstance(batch, (torch.Tensor, EncodedBatch, DecodedBatch)):
            return batch
        if self.views.augment.mean.device != batch.device:
            self.views.to(batch.device)
        return self.views(batch)
