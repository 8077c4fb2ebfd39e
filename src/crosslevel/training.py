"""Build data, model and Lightning trainer from a :class:`Config`; train; evaluate with kNN."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from .checkpointing import AtomicCheckpointIO, LastCheckpoint, ResumeState, check_compatible, read_checkpoint
from .config import Config, apply_overrides, load_config, num_views, save_config
from .data import Images, ImageSet, LabelledDataset, MultiViewDataset, eval_transform, load_split, view_transform
from .data.device_views import DEVICE_RECIPES, DeviceAugment, DeviceViewSource
from .data.sampling import ResumableSampler
from .data.variants import high_correlation, long_tail
from .errors import CrossLevelError, MissingSplit
from .evaluation import extract_features, knn_accuracy
from .methods import ContrastiveModule

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RUN_NAME_ENV = "CROSSLEVEL_RUN_NAME"  # passes a generated run name to the processes Lightning launches


@dataclass
class Data:
    """The splits of one run: training images, the labelled test split (if any) and the kNN
    support set (``None``: the training set; STL-10: its 5k labelled train images)."""

    train: Images
    test: Images | None
    support: Images | None = None

    @property
    def knn_support(self) -> Images:
        return self.train if self.support is None else self.support

    @property
    def size(self) -> int:
        return self.train.size

    def train_loader(self, cfg: Config) -> DataLoader:
        """Batches of (views, indices), or of indices alone with ``augment_device=device`` (the module
        then makes the views on the device), in the :class:`ResumableSampler` order (seeded per epoch,
        one share per device); the last partial batch is dropped (k-means needs k < B)."""
        if len(self.train) < cfg.batch_size:
            raise CrossLevelError(
                f"the training set has {len(self.train)} images, fewer than batch_size={cfg.batch_size}"
            )
        sampler = ResumableSampler(len(self.train), cfg.seed)
        if cfg.augment_device == "device":
            return DataLoader(range(len(self.train)), batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
        size = cfg.image_size or self.size
        transform = view_transform(
            cfg.augment, size, self.train.channels, self.train.mean, self.train.std, cfg.random_erasing, cfg.blur
        )
        return DataLoader(
            MultiViewDataset(self.train, transform, num_views(cfg)),
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=cfg.workers,
            persistent_workers=cfg.workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def eval_loader(self, images: Images, cfg: Config) -> DataLoader:
        """In-order batches of (image, label) with the test transform."""
        transform = eval_transform(cfg.image_size or self.size, self.train.mean, self.train.std, cfg.eval_resize)
        return DataLoader(LabelledDataset(images, transform), batch_size=max(cfg.batch_size, 256), num_workers=0)


def load_split_of(cfg: Config, split: str, stl10_unlabeled: bool | None = None) -> Images:
    """Split ``split`` of the config's data set (before any variant or subset); ``stl10_unlabeled``
    overrides the config's choice (the kNN support set of STL-10 is its labelled part)."""
    return load_split(
        cfg.dataset, cfg.data, split, cfg.image_size, cfg.bad_images,
        subset=cfg.subset,
        list_file=cfg.train_list if split == "train" else cfg.test_list,
        in_memory=cfg.in_memory,
        stl10_unlabeled=cfg.stl10_unlabeled if stl10_unlabeled is None else stl10_unlabeled,
    )


def training_images(images: Images, cfg: Config) -> Images:
    """The training set the config asks for: long-tailed (``lt_ratio``), then subset (``train_subset``),
    then turned into correlated frames (``hc_frames``, ``hc_mode``); all seeded by ``seed``."""
    if cfg.lt_ratio > 0:
        images = long_tail(images, cfg.lt_ratio, cfg.seed)
    images = images.subset(cfg.train_subset, cfg.seed)
    if cfg.hc_frames > 0:
        images = high_correlation(images, cfg.hc_frames, cfg.hc_mode, cfg.seed)
    return images


def load_data(cfg: Config) -> Data:
    """Load the training set (with its variants and subset), the labelled test split when it
    exists, and the labelled kNN support set (STL-10: the labelled train split)."""
    train = training_images(load_split_of(cfg, "train"), cfg)
    try:
        test: Images | None = load_split_of(cfg, "test")
    except MissingSplit:
        test = None
    support = None
    if cfg.dataset == "stl10" and not train.labelled:
        support = load_split_of(cfg, "train", stl10_unlabeled=False)
    labelled_support = (train if support is None else support).labelled
    if test is not None:
        test = test.subset(cfg.test_subset, cfg.seed) if test.labelled and labelled_support else None
    return Data(train, test, support)


def device_views(cfg: Config, images: Images) -> DeviceViewSource:
    """The on-device view maker of ``augment_device=device``: ``images`` kept as uint8 on the device;
    ``random_erasing`` and (``augment=v2``) ``blur`` set the recipe's probabilities."""
    if not isinstance(images, ImageSet):
        raise CrossLevelError(
            "augment_device=device needs decoded images in memory (not in_memory=false or hc_frames); "
            "set augment_device=cpu"
        )
    recipe = cfg.augment if cfg.augment != "auto" else ("cifar" if images.channels == 3 else "digits")
    if recipe not in DEVICE_RECIPES:
        raise CrossLevelError(
            f"augment={recipe} has no on-device version (on-device recipes: {', '.join(DEVICE_RECIPES)}); "
            "set augment_device=cpu"
        )
    if DEVICE_RECIPES[recipe].colour and images.channels != 3:
        raise CrossLevelError(f"augment={recipe} needs colour images; these have {images.channels} channel(s)")
    device_recipe = dataclasses.replace(DEVICE_RECIPES[recipe], erasing_p=cfg.random_erasing)
    if recipe == "v2":
        device_recipe = dataclasses.replace(device_recipe, blur_p=cfg.blur)
    augment = DeviceAugment(device_recipe, cfg.image_size or images.size, images.mean, images.std)
    return DeviceViewSource(torch.from_numpy(images.images), augment, num_views(cfg))


def build_module(cfg: Config, data: Data) -> ContrastiveModule:
    """The training module for ``cfg`` on ``data`` (with its on-device view maker when asked for)."""
    views = device_views(cfg, data.train) if cfg.augment_device == "device" else None
    return ContrastiveModule(cfg, len(data.train), data.train.channels, views)


class EpochTimer(Callback):
    """Wall-clock seconds of every training epoch (kNN evaluation excluded), in ``seconds``."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._now(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(round(self._now(pl_module) - self._start, 3))


def evaluate_knn(module: ContrastiveModule, data: Data, cfg: Config, feature: str = "f_I") -> dict:
    """Weighted kNN of ``feature``: support = the labelled training images with the test transform,
    eval-mode BN. Returns :func:`~crosslevel.evaluation.knn.knn_accuracy`'s result (``top1``,
    ``top5``; ``shots`` for a long-tailed support set), the schema of ``eval knn`` too."""
    if data.test is None:
        raise CrossLevelError("kNN needs a labelled training set and a labelled test split")
    was_training = module.training
    module.eval()
    device = module.device
    embed = lambda images: module.embed(images, feature)  # noqa: E731
    support = data.knn_support
    train_x, train_y = extract_features(embed, data.eval_loader(support, cfg), device, "kNN support", cfg.progress)
    test_x, test_y = extract_features(embed, data.eval_loader(data.test, cfg), device, "kNN queries", cfg.progress)
    module.train(was_training)
    classes = max(len(support.classes), len(data.test.classes))
    return knn_accuracy(train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature, classes)


class KNNMonitor(Callback):
    """kNN top-1 / top-5 every ``eval_every`` epochs and after the last epoch, logged as knn_top1/5.

    ``last`` is the latest result (the final epoch's, the headline); ``best`` the evaluated epoch with
    the highest top-1 (``{"epoch", "top1", "top5"}``, what the reference reports), kept in checkpoints
    so that it survives a resume.
    """

    def __init__(self, data: Data, cfg: Config) -> None:
        self.data, self.cfg = data, cfg
        self.last: dict[str, float] | None = None
        self.best: dict[str, float] | None = None

    def state_dict(self) -> dict[str, object]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.best = state_dict.get("best")  # type: ignore[assignment]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        final = epoch >= trainer.max_epochs
        periodic = self.cfg.eval_every > 0 and epoch % self.cfg.eval_every == 0
        if self.data.test is None or not (final or periodic):
            return
        # Under DDP rank 0 evaluates (the model is the same on every rank) and shares the result.
        result = evaluate_knn(pl_module, self.data, self.cfg) if trainer.is_global_zero else None  # type: ignore[arg-type]
        self.last = trainer.strategy.broadcast(result, src=0)
        if self.best is None or self.last["top1"] > self.best["top1"]:
            self.best = {"epoch": epoch, "top1": self.last["top1"], "top5": self.last["top5"]}
        shots = {f"top1_{group}": value for group, value in (self.last.get("shots") or {}).items() if value is not None}
        logged = {"top1": self.last["top1"], "top5": self.last["top5"], **shots}
        pl_module.log_dict({f"knn_{name}": value for name, value in logged.items()}, on_epoch=True, sync_dist=True)


def _loggers(cfg: Config, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger in ("csv", "both"):  # one version folder per attempt, so a resume never deletes a log
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs"))
    if cfg.logger in ("tensorboard", "both"):
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard"))
        except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
            raise CrossLevelError(f"logger=tensorboard needs: pip install 'crosslevel[tensorboard]' ({err})") from None
    return loggers


def merge_metrics(run_dir: Path) -> Path | None:
    """Join the CSV logs of every attempt (``logs/version_*/metrics.csv``) into ``run_dir/metrics.csv``."""
    parts = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    rows = [row for part in parts for row in csv.DictReader(open(part, newline=""))]
    if not rows:
        return None
    keys = sorted({key for row in rows for key in row})
    target = run_dir / METRICS_FILE
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return target


def resolve_resume(cfg: Config, overrides: list[str]) -> tuple[Config, Path]:
    """For ``resume=PATH`` (a checkpoint or a run directory): the run's saved config with
    ``overrides`` on top, and the checkpoint to continue from."""
    assert cfg.resume is not None
    target = Path(cfg.resume).expanduser()
    checkpoint = target / CHECKPOINT_DIR / LAST_CHECKPOINT if target.is_dir() else target
    if not checkpoint.is_file():
        raise CrossLevelError(f"no checkpoint to resume from at {checkpoint}")
    run_dir = checkpoint.parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise CrossLevelError(f"{checkpoint} is not inside a run directory (no {CONFIG_FILE} in {run_dir})")
    saved = load_config(run_dir / CONFIG_FILE)
    resumed = apply_overrides(saved, [o for o in overrides if not o.startswith("resume=")])
    return dataclasses.replace(resumed, resume=str(checkpoint), out=str(run_dir.parent), name=run_dir.name), checkpoint


def run_dir_of(cfg: Config) -> Path:
    """``out/name``; without a name ``<preset>-<time>``, or ``<preset>-job<id>`` when a multi-process
    launcher (torchrun, SLURM) started every rank, so that all ranks agree."""
    name = cfg.name or os.environ.get(RUN_NAME_ENV, "")
    if not name:
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
        several = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1
        stamp = f"job{job}" if several and job and job != "none" else time.strftime("%Y%m%d-%H%M%S")
        name = f"{cfg.preset or 'run'}-{stamp}"
    return Path(cfg.out).expanduser() / name


def train(cfg: Config) -> tuple[Path, dict[str, float] | None]:
    """Train as ``cfg`` says; return (run directory, final kNN ``{"top1", "top5"}`` or None).

    Raises :class:`TrainingInterrupted` after SIGINT/SIGTERM (a resumable checkpoint is written first).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = run_dir_of(cfg)
    checkpoint = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if rank_zero_only.rank == 0 and cfg.resume is None and (run_dir / CONFIG_FILE).exists():
        raise CrossLevelError(f"run directory {run_dir} already exists: resume={run_dir}, or choose another name=")
    data = load_data(cfg)
    module = build_module(cfg, data)
    if cfg.resume is not None:  # before config.json is rewritten: a checkpoint that does not fit leaves the run as it was
        restore(module, read_checkpoint(Path(cfg.resume)), Path(cfg.resume), cfg, len(data.train), data.train.channels)
    loader = data.train_loader(cfg)
    limit = cfg.limit_train_batches
    steps_per_epoch = min(len(loader), int(limit) if limit > 1 else max(1, int(len(loader) * limit)))
    monitor, timer = KNNMonitor(data, cfg), EpochTimer()
    last = LastCheckpoint(checkpoint)
    # the timer first, so that epoch times exclude checkpointing and the kNN evaluation
    callbacks: list[Callback] = [timer, last, ResumeState(loader.sampler, cfg.batch_size), monitor]  # type: ignore[arg-type]
    if cfg.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, steps_per_epoch // 4))))
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices if cfg.devices == "auto" or "," in cfg.devices else int(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        sync_batchnorm=cfg.sync_bn,
        use_distributed_sampler=False,  # ResumableSampler shards the data itself
        plugins=[AtomicCheckpointIO()],
        precision=cfg.precision,
        logger=_loggers(cfg, run_dir),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        limit_train_batches=int(limit) if limit > 1 else limit,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        num_sanity_val_steps=0,
        deterministic=False,
        benchmark=True,  # cuDNN picks the fastest convolutions for the (fixed) input shape
    )
    if cfg.sync_bn and isinstance(trainer.accelerator, CPUAccelerator):
        raise CrossLevelError("sync_bn=true needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU")
    if len(data.train) // trainer.world_size < cfg.batch_size:
        raise CrossLevelError(
            f"{len(data.train)} training images over {trainer.world_size} devices is less than one batch "
            f"(batch_size={cfg.batch_size} per device)"
        )
    if rank_zero_only.rank == 0:  # written once every check has passed
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
    started = time.time()
    os.environ[RUN_NAME_ENV] = run_dir.name  # inherited by the rank processes Lightning starts
    try:
        with last.handling_signals(run_dir):
            trainer.fit(module, train_dataloaders=loader, ckpt_path=cfg.resume)
    finally:
        os.environ.pop(RUN_NAME_ENV, None)
    knn = monitor.last
    if knn is None and "knn_top1" in trainer.callback_metrics:  # ddp_spawn: the monitor ran in the rank processes
        knn = {key: float(trainer.callback_metrics[f"knn_{key}"]) for key in ("top1", "top5")}
    summary = {
        "epochs": trainer.current_epoch,
        "train_seconds": round(time.time() - started, 1),
        "epoch_seconds": timer.seconds,
        "train_images": len(data.train),
        "skipped_images": len(data.train.skipped) + (len(data.test.skipped) if data.test is not None else 0),
        "skipped_steps": module.skipped_steps,
        "knn": knn,
        "knn_best": monitor.best,
    }
    if trainer.is_global_zero:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        merge_metrics(run_dir)
    return run_dir, knn


def _run_checkpoint(run_dir: Path) -> tuple[Config, dict, Path]:
    """(config, loaded checkpoint, checkpoint path) of a run directory; clear errors when either is missing."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CrossLevelError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    checkpoint = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise CrossLevelError(f"no checkpoint in {run_dir} (expected {checkpoint})")
    return load_config(run_dir / CONFIG_FILE), read_checkpoint(checkpoint), checkpoint


def restore(module: ContrastiveModule, saved: dict, checkpoint: Path, cfg: Config, num_train: int, in_channels: int) -> None:
    """Load ``saved``'s weights into ``module`` after checking it is a checkpoint of the same model."""
    check_compatible(saved, checkpoint, cfg, num_train, in_channels)
    try:
        module.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].strip()
        raise CrossLevelError(f"checkpoint {checkpoint} does not fit this model: {reason}") from None


def _restore(cfg: Config, saved: dict, checkpoint: Path, num_train: int, in_channels: int) -> ContrastiveModule:
    module = ContrastiveModule(cfg, num_train, in_channels)
    restore(module, saved, checkpoint, cfg, num_train, in_channels)
    return module.eval()


def load_module(run_dir: Path) -> tuple[Config, ContrastiveModule]:
    """Config and trained module (last checkpoint, eval mode) of a run directory, without loading its data."""
    cfg, saved, checkpoint = _run_checkpoint(run_dir)
    hparams = saved.get("hyper_parameters", {})
    return cfg, _restore(cfg, saved, checkpoint, hparams.get("num_train", 0), hparams.get("in_channels", 0))


def load_run(run_dir: Path) -> tuple[Config, ContrastiveModule, Data]:
    """Config, trained module (last checkpoint, eval mode) and data of a run directory."""
    cfg, saved, checkpoint = _run_checkpoint(run_dir)
    data = load_data(cfg)
    return cfg, _restore(cfg, saved, checkpoint, len(data.train), data.train.channels), data
