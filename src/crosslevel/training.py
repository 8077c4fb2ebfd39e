"""Build data, model and Lightning trainer from a :class:`Config`; train; evaluate with kNN."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from torch.utils.data import DataLoader

from .config import Config, apply_overrides, load_config, save_config
from .data import ImageSet, LabelledDataset, MultiViewDataset, eval_transform, load_split, view_transform
from .errors import CrossLevelError
from .evaluation import extract_features, knn_accuracy
from .methods import ContrastiveModule

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


@dataclass
class Data:
    """The splits of one run: training images and the labelled test split (if any)."""

    train: ImageSet
    test: ImageSet | None

    @property
    def size(self) -> int:
        return self.train.size

    def train_loader(self, cfg: Config) -> DataLoader:
        """Shuffled batches of (views, indices); the last partial batch is dropped (k-means needs k < B)."""
        if len(self.train) < cfg.batch_size:
            raise CrossLevelError(
                f"the training set has {len(self.train)} images, fewer than batch_size={cfg.batch_size}"
            )
        size = cfg.image_size or self.size
        transform = view_transform(cfg.augment, size, self.train.channels, self.train.mean, self.train.std)
        return DataLoader(
            MultiViewDataset(self.train, transform),
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.workers,
            persistent_workers=cfg.workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def eval_loader(self, images: ImageSet, cfg: Config) -> DataLoader:
        """In-order batches of (image, label) with the test transform."""
        transform = eval_transform(cfg.image_size or self.size, self.train.mean, self.train.std)
        return DataLoader(LabelledDataset(images, transform), batch_size=max(cfg.batch_size, 256), num_workers=0)


def load_data(cfg: Config) -> Data:
    """Load (and subset) the training split and, when it exists and is labelled, the test split."""
    train = load_split(cfg.dataset, cfg.data, "train", cfg.image_size).subset(cfg.train_subset, cfg.seed)
    try:
        test: ImageSet | None = load_split(cfg.dataset, cfg.data, "test", cfg.image_size)
    except CrossLevelError as err:
        if "test" not in str(err):
            raise
        test = None
    if test is not None:
        test = test.subset(cfg.test_subset, cfg.seed) if test.labelled and train.labelled else None
    return Data(train, test)


def evaluate_knn(module: ContrastiveModule, data: Data, cfg: Config, feature: str = "f_I") -> dict[str, float]:
    """Weighted kNN of ``feature``: support = training images with the test transform, eval-mode BN."""
    if data.test is None:
        raise CrossLevelError("kNN needs a labelled training set and a labelled test split")
    was_training = module.training
    module.eval()
    device = module.device
    embed = lambda images: module.embed(images, feature)  # noqa: E731
    train_x, train_y = extract_features(embed, data.eval_loader(data.train, cfg), device, "kNN support")
    test_x, test_y = extract_features(embed, data.eval_loader(data.test, cfg), device, "kNN queries")
    module.train(was_training)
    classes = max(len(data.train.classes), len(data.test.classes)) or None
    return knn_accuracy(train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature, classes)


class KNNMonitor(Callback):
    """kNN top-1 / top-5 every ``eval_every`` epochs and after the last epoch, logged as knn_top1/5."""

    def __init__(self, data: Data, cfg: Config) -> None:
        self.data, self.cfg = data, cfg
        self.last: dict[str, float] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        final = epoch >= trainer.max_epochs
        periodic = self.cfg.eval_every > 0 and epoch % self.cfg.eval_every == 0
        if self.data.test is None or not (final or periodic):
            return
        self.last = evaluate_knn(pl_module, self.data, self.cfg)  # type: ignore[arg-type]
        pl_module.log_dict({"knn_top1": self.last["top1"], "knn_top5": self.last["top5"]}, on_epoch=True)


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
    name = cfg.name or f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.out).expanduser() / name


def train(cfg: Config) -> tuple[Path, dict[str, float] | None]:
    """Train as ``cfg`` says; return (run directory, final kNN ``{"top1", "top5"}`` or None)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_data(cfg)
    if cfg.cld_weight > 0 and cfg.num_groups >= cfg.batch_size:  # re-checked: the batch may come from a resumed run
        raise CrossLevelError(f"num_groups={cfg.num_groups} must be smaller than batch_size={cfg.batch_size}")
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_FILE)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    monitor = KNNMonitor(data, cfg)
    loader = data.train_loader(cfg)
    limit = cfg.limit_train_batches
    steps_per_epoch = min(len(loader), int(limit) if limit > 1 else max(1, int(len(loader) * limit)))
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, save_last=True, save_top_k=0, every_n_epochs=1),
        monitor,
    ]
    if cfg.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, steps_per_epoch // 4))))
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices if cfg.devices == "auto" or "," in cfg.devices else int(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
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
    )
    started = time.time()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=cfg.resume)
    summary = {
        "epochs": trainer.current_epoch,
        "train_seconds": round(time.time() - started, 1),
        "train_images": len(data.train),
        "knn": monitor.last,
    }
    if trainer.is_global_zero:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        merge_metrics(run_dir)
    return run_dir, monitor.last


def load_run(run_dir: Path) -> tuple[Config, ContrastiveModule, Data]:
    """Config, trained module (last checkpoint, eval mode) and data of a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CrossLevelError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    checkpoint = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise CrossLevelError(f"no checkpoint in {run_dir} (expected {checkpoint})")
    cfg = load_config(run_dir / CONFIG_FILE)
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return cfg, module.eval(), data
