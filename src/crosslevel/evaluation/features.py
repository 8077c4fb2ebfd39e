"""A trained run opened for evaluation, with its features computed once and cached on disk.

Importing this module imports the model and data stack (to rebuild the module from its
checkpoint, :mod:`crosslevel.run_dir`); the pure metrics in this package do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from ..config import FEATURES, Config
from ..data import Images, LabelledDataset, view_transform
from ..data.views import eval_loader
from ..data.datamodule import Data, load_support, load_test, load_train
from ..errors import CrossLevelError
from ..methods import ContrastiveModule
from ..run_dir import FEATURE_DIR, DataInfo, checkpoint_of, open_run, read_data_info
from .knn import extract_features


@dataclass
class Run:
    """A run directory's config, trained module (eval mode, on the best device), what its input is
    (``info``, from ``data.json``) and its data, each split read from the config's source on first
    use only (``plot`` reads the test split alone; ``embed``, ``cluster`` and ``export`` none)."""

    path: Path
    cfg: Config
    module: ContrastiveModule
    info: DataInfo
    _splits: dict[str, tuple[Images | None, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        cfg, module, _ = open_run(Path(path))
        module.to("cuda" if torch.cuda.is_available() else "cpu")
        return cls(Path(path), cfg, module, read_data_info(Path(path), cfg))

    def _load(self, name: str) -> Images | None:
        """Split ``name`` ('train', 'support' or 'test'; None when the run has no labelled test split), loaded once."""
        if name not in self._splits:
            if name == "test":
                self._splits[name] = load_test(self.cfg, self._splits.get("train", (None, ""))[0])
            elif name == "train":
                self._splits[name] = load_train(self.cfg), ""
            else:
                self._splits[name] = load_support(self.cfg, self.split("train")), ""
        return self._splits[name][0]

    @property
    def data(self) -> Data:
        """All the run's splits (as :func:`~crosslevel.data.datamodule.load_data` gives them)."""
        test = self._load("test")
        return Data(self.split("train"), test, self._load("support"), self._splits["test"][1])

    @property
    def test(self) -> Images | None:
        """The labelled test split, or None when the run has none."""
        return self._load("test")

    @property
    def device(self) -> torch.device:
        return self.module.device

    @property
    def batch_size(self) -> int:
        return max(self.cfg.batch_size, 256)

    def split(self, name: str) -> Images:
        """Images of a split: 'train' (everything trained on, labels may be -1), 'support' (the
        labelled training images the supervised protocols fit on; STL-10: its labelled train split)
        or 'test'; a clear error when the run has no labelled test split."""
        images = self._load(name)
        if name == "support":
            return images or self.split("train")
        if images is None:
            raise CrossLevelError(f"{self.path}: this evaluation needs a labelled test split, and the run's data has none")
        return images

    def num_classes(self) -> int:
        return max(len(self.info.classes), len(self.split("test").classes))

    def features(self, split: str, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N×D features, N labels) of a split with the test transform; cached in ``features/``.

        The cache is keyed by the checkpoint's size and modification time, so a resumed or
        retrained run never reads stale features.
        """
        checkpoint = checkpoint_of(self.path)
        stamp = (checkpoint.stat().st_mtime_ns, checkpoint.stat().st_size)
        cache = self.path / FEATURE_DIR / f"{split}-{feature}.pt"
        if cache.is_file():
            saved = torch.load(cache, map_location=self.device)
            if tuple(saved["stamp"]) == stamp:
                return saved["features"], saved["labels"]
        images = self.split(split)
        features, labels = self.embed(images, feature, f"{split} {feature}")
        cache.parent.mkdir(exist_ok=True)
        temporary = cache.with_suffix(".tmp")
        torch.save({"stamp": stamp, "features": features.cpu(), "labels": labels.cpu()}, temporary)
        temporary.replace(cache)
        return features, labels

    def embed(self, images: Images, feature: str, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
        """(N×D features, N labels) of ``images`` with the test transform (no caching)."""
        return extract_features(self.embedder(feature), self.eval_loader(images), self.device, desc)

    def view_features(self, images: Images, feature: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(N×D features, N labels) of one random training-recipe view per image, seeded."""
        torch.manual_seed(seed)
        loader = self.view_loader(images, shuffle=False)
        return extract_features(self.embedder(feature), loader, self.device, f"augmented {feature}")

    def view_loader(self, images: Images, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        """Batches of (random view, label) with the run's training augmentation."""
        batch = batch_size or self.batch_size
        info, cfg = self.info, self.cfg
        transform = view_transform(cfg.augment, info.size, info.channels, info.mean, info.std, cfg.random_erasing, cfg.blur, cfg.flip)
        return DataLoader(LabelledDataset(images, transform), batch_size=batch, shuffle=shuffle, drop_last=shuffle and len(images) > batch)

    def eval_loader(self, images: Images) -> DataLoader:
        """In-order batches of (image, label) with the run's test transform."""
        return eval_loader(images, self.info.size, self.info.mean, self.info.std, self.cfg.eval_resize, self.batch_size)

    def embedder(self, feature: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function B×C×H×W → B×D of the eval-mode module for ``feature``."""
        if feature not in FEATURES:
            raise CrossLevelError(f"unknown feature '{feature}' (one of {', '.join(FEATURES)})")
        self.module.eval()
        return lambda images: self.module.embed(images, feature)
