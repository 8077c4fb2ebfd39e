"""One typed training config, presets (TOML files in ``presets/``) and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import CrossLevelError

DEFAULT_PRESET = "digits-cld"
FEATURES = ("f", "f_I", "f_G")  # what evaluation can read: pooled backbone output, instance head, group head


@dataclass
class Config:
    """Everything a training run needs; every field can be set with ``key=value``."""

    # --- data ---
    dataset: str = "digits"  # digits | cifar10 | cifar100 | stl10 | folder | lists
    data: str | None = None  # path of the data set (not needed for digits)
    subset: str = ""  # folder/lists: '' (all classes), 'imagenet100' (the CMC list) or a file of class names
    train_list: str = ""  # lists: file of "relative/path label" lines (e.g. ImageNet_LT_train.txt)
    test_list: str = ""  # lists: the same for the test split (e.g. ImageNet_LT_test.txt)
    stl10_unlabeled: bool = True  # stl10: train on train (5k) + unlabeled (100k); False: train only
    in_memory: bool = True  # decode every image once into memory; False: decode files on the fly
    train_subset: int = 0  # >0: train on a seeded, class-stratified subset of this many images
    test_subset: int = 0  # >0: evaluate on a seeded, class-stratified subset of the test split
    lt_ratio: float = 0.0  # >0: long-tail the training set, n_c = n_max·ρ^(-c/(C-1)) with ρ = lt_ratio
    hc_frames: int = 0  # >0: turn every training image into this many correlated frames
    hc_mode: str = "walk"  # walk (smooth random camera walk) | repeat (exact copies)
    augment: str = "auto"  # view recipe: auto | cifar | v2 | digits | none
    random_erasing: float = 0.0  # probability of RandomErasing after normalisation (0: off)
    blur: float = 0.5  # augment=v2: probability of GaussianBlur(σ ∈ [0.1, 2] px) (0: off)
    image_size: int = 0  # 0: the data set's own size
    eval_resize: int = 0  # test transform: short side resized to this, then centre crop image_size (0: image_size)
    workers: int = 2  # data-loader worker processes
    bad_images: str = "error"  # an unreadable image in a folder: error (stop) | skip (warn, count in summary.json)
    augment_device: str = "cpu"  # cpu: torchvision in loader workers | device: batched on the training device
    # --- model ---
    backbone: str = "resnet18_cifar"  # resnet18_cifar | resnet18 | resnet50 | smallcnn
    width: int = 64  # channels of the first stage (64 = the standard ResNet-18)
    feature_dim: int = 128  # output size of both heads
    normlinear: bool = False  # cosine-layer heads instead of Linear (columns start at unit norm, as the reference)
    mlp: bool = False  # shared Linear(d, d)+ReLU trunk before the heads
    pool_window: int = 0  # 0: global average pool; N: the reference's avg_pool2d(N) (STL-10: 7, top-left 7×7 of 12×12)
    conv_init: str = "torchvision"  # torchvision: kaiming-normal fan_out | pytorch: layer default (reference CIFAR ResNet)
    # --- instance branch: NPID memory bank or MoCo momentum encoder + queue ---
    instance: str = "npid"  # npid | moco
    npid_views: int = 2  # NPID: views per image (1: the original NPID; CLD needs 2)
    temperature: float = 0.1  # T_I (MoCo: 0.07 CIFAR, 0.2 ImageNet)
    bank_momentum: float = 0.5  # NPID: row <- normalise(m·row + (1-m)·f)
    queue_size: int = 4096  # MoCo: negatives in the queue (>= the global batch)
    moco_momentum: float = 0.999  # MoCo: key encoder <- m·key + (1-m)·query
    # --- cross-level term ---
    cld_weight: float = 1.0  # λ; 0 = plain NPID
    cld_temperature: float = 0.2  # T_G
    num_groups: int = 128  # k of the batch k-means
    groups_above_batch: str = "error"  # k >= per-device batch: error | cap (the reference's ImageNet arithmetic)
    kmeans_iters: int = 5
    # --- optimisation ---
    epochs: int = 200
    batch_size: int = 256  # per device
    base_lr: float = 0.03  # lr = base_lr · global batch / 128
    weight_decay: float = 7e-4
    momentum: float = 0.9
    warmup_epochs: int = 5
    schedule_interval: str = "step"  # warm-up + cosine updated every step or every epoch
    # --- evaluation ---
    knn_k: int = 200
    knn_temperature: float = 0.1
    eval_every: int = 0  # kNN every N epochs (0: only at the end)
    # --- run ---
    seed: int = 0
    out: str = "runs"  # parent folder of run directories
    name: str = ""  # run directory name ('' : <preset>-<time>)
    preset: str = ""
    accelerator: str = "auto"
    devices: str = "1"  # number, list "0,1" or "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    sync_bn: bool = False  # SyncBatchNorm across devices (BN statistics of the global batch)
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed (k-means and losses always run in fp32)
    channels_last: bool = False  # NHWC memory layout for the backbone (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the backbone, heads and on-device augmentation
    logger: str = "csv"  # csv | tensorboard | both
    progress: bool = True
    limit_train_batches: float = 1.0  # <1: fraction, >1: count of batches per epoch (tests)
    resume: str | None = None  # checkpoint to continue from
    skip_nonfinite: bool = False  # a NaN/inf loss skips the step (no update, bank untouched) instead of stopping
    description: str = ""



def num_views(cfg: Config) -> int:
    """Views per image: NPID ``npid_views`` (2, or 1 for the original NPID); MoCo 2 (query, key);
    CLDm 3 (two query views for CLD, one key view)."""
    if cfg.instance == "moco":
        return 3 if cfg.cld_weight > 0 else 2
    return cfg.npid_views


def peak_lr(cfg: Config, world_size: int) -> float:
    """The official linear scaling rule: ``base_lr · (batch per device · devices) / 128``."""
    return cfg.base_lr * cfg.batch_size * world_size / 128


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("digits", "cifar10", "cifar100", "stl10", "folder", "lists"),
    "augment": ("auto", "cifar", "v2", "digits", "none"),
    "augment_device": ("cpu", "device"),
    "hc_mode": ("walk", "repeat"),
    "backbone": ("resnet18_cifar", "resnet18", "resnet50", "smallcnn"),
    "instance": ("npid", "moco"),
    "groups_above_batch": ("error", "cap"),
    "conv_init": ("torchvision", "pytorch"),
    "schedule_interval": ("step", "epoch"),
    "logger": ("csv", "tensorboard", "both"),
    "bad_images": ("error", "skip"),
    "accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "strategy": ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"),  # the method's bank/queue sync is DDP's
    "precision": ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),  # Lightning's names
}


def _field_type(name: str) -> type:
    hint = typing.get_type_hints(Config)[name]
    if isinstance(hint, types.UnionType):  # "str | None"
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def coerce(name: str, raw: Any) -> Any:
    """Convert ``raw`` (a CLI string or a TOML value) to the type of config field ``name``."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CrossLevelError(f"unknown config key '{name}'{hint}; `crosslevel train --help-keys` lists them")
    kind = _field_type(name)
    optional = type(None) in typing.get_args(typing.get_type_hints(Config)[name])
    if optional and (raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", ""))):
        return None
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if kind is float:
            if isinstance(raw, bool) or not math.isfinite(float(raw)):  # nan / inf would poison training silently
                raise ValueError
            return float(raw)
        return str(raw)
    except ValueError:
        finite = " finite" if kind is float else ""
        raise CrossLevelError(f"config key '{name}' expects a{finite} {kind.__name__}, got {raw!r}") from None


def preset_names() -> list[str]:
    """All shipped preset names, sorted."""
    folder = resources.files("crosslevel") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _preset_table(name: str) -> dict[str, Any]:
    path = resources.files("crosslevel") / "presets" / f"{name}.toml"
    if not path.is_file():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CrossLevelError(f"unknown preset '{name}'{hint}; available: {', '.join(preset_names())}")
    table = tomllib.loads(path.read_text())
    parent = table.pop("extends", None)
    return {**_preset_table(parent), **table} if parent else table


def load_preset(name: str = DEFAULT_PRESET) -> Config:
    """The config of preset ``name`` (a file ``presets/<name>.toml``, which may ``extends`` another)."""
    values = {key: coerce(key, value) for key, value in _preset_table(name).items()}
    return Config(**{**values, "preset": name})


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return ``cfg`` with ``key=value`` strings applied and validated; a bad key or value raises."""
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CrossLevelError(f"override {item!r} is not of the form key=value")
        changes[key.strip()] = coerce(key.strip(), value)
    return validate(dataclasses.replace(cfg, **changes))


def validate(cfg: Config) -> Config:
    """Check values and combinations that would fail later; return ``cfg`` unchanged."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise CrossLevelError(f"config key '{key}' must be one of {', '.join(allowed)}; got '{getattr(cfg, key)}'")
    positive = (
        "epochs", "batch_size", "feature_dim", "width", "kmeans_iters", "knn_k", "num_groups", "num_nodes", "queue_size"
    )
    for key in positive:
        if getattr(cfg, key) < 1:
            raise CrossLevelError(f"config key '{key}' must be >= 1, got {getattr(cfg, key)}")
    for key in ("temperature", "cld_temperature", "knn_temperature", "base_lr"):
        if getattr(cfg, key) <= 0:
            raise CrossLevelError(f"config key '{key}' must be > 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.bank_momentum < 1.0:
        raise CrossLevelError(f"bank_momentum must be in [0, 1), got {cfg.bank_momentum}")
    if cfg.cld_weight < 0:
        raise CrossLevelError(f"cld_weight (λ) must be >= 0, got {cfg.cld_weight}")
    if cfg.cld_weight > 0 and cfg.num_groups >= cfg.batch_size and cfg.groups_above_batch == "error":
        raise CrossLevelError(
            f"num_groups (k={cfg.num_groups}) must be smaller than the per-device batch "
            f"(batch_size={cfg.batch_size}): with k >= batch every image is its own group and CLD "
            "degenerates to in-batch instance discrimination (groups_above_batch=cap allows it on purpose, "
            "as the reference's ImageNet run did)"
        )
    if cfg.npid_views not in (1, 2):
        raise CrossLevelError(f"npid_views must be 1 (the original NPID) or 2, got {cfg.npid_views}")
    if cfg.npid_views == 1 and (cfg.instance != "npid" or cfg.cld_weight > 0):
        raise CrossLevelError(
            "npid_views=1 is the original one-view NPID: it needs instance=npid and cld_weight=0 "
            "(CLD compares two views)"
        )
    if cfg.eval_resize < 0:
        raise CrossLevelError(f"eval_resize must be 0 (= image_size) or a side in pixels, got {cfg.eval_resize}")
    if cfg.pool_window < 0:
        raise CrossLevelError(f"pool_window must be 0 (global pooling) or a window side >= 1, got {cfg.pool_window}")
    if cfg.instance == "moco":
        if not 0.0 <= cfg.moco_momentum < 1.0:
            raise CrossLevelError(f"moco_momentum must be in [0, 1), got {cfg.moco_momentum}")
        if cfg.queue_size < cfg.batch_size:
            raise CrossLevelError(
                f"queue_size={cfg.queue_size} is smaller than batch_size={cfg.batch_size}: "
                "the MoCo queue must hold at least one (global) batch of keys"
            )
    if cfg.lt_ratio != 0 and cfg.lt_ratio < 1:
        raise CrossLevelError(f"lt_ratio (ρ) must be 0 (off) or >= 1, e.g. 10, 50, 100; got {cfg.lt_ratio}")
    if cfg.hc_frames < 0:
        raise CrossLevelError(f"hc_frames must be >= 0, got {cfg.hc_frames}")
    for key in ("random_erasing", "blur"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise CrossLevelError(f"{key} is a probability in [0, 1], got {getattr(cfg, key)}")
    if cfg.dataset == "lists" and not cfg.train_list:
        raise CrossLevelError("dataset 'lists' needs train_list=FILE (lines of 'relative/path label')")
    if not cfg.in_memory and not cfg.image_size:
        raise CrossLevelError("in_memory=false decodes images on the fly and needs image_size=N (e.g. 224)")
    if cfg.dataset != "digits" and not cfg.data:
        raise CrossLevelError(f"dataset '{cfg.dataset}' needs a path: add --data PATH (or data=PATH)")
    for key in ("eval_every", "train_subset", "test_subset", "warmup_epochs", "workers"):
        if getattr(cfg, key) < 0:
            raise CrossLevelError(f"config key '{key}' must be >= 0, got {getattr(cfg, key)}")
    if not re.fullmatch(r"auto|-1|[1-9]\d*|\d+,(\d+,?)*", cfg.devices):
        raise CrossLevelError(
            f"devices must be a count (1, 4), -1 or auto (all), or device indices like 0,1; got '{cfg.devices}'"
        )
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as JSON."""
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def load_config(path: Path) -> Config:
    """Read a config written by :func:`save_config`; unknown keys are an error."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CrossLevelError(f"cannot read config {path}: {err}") from None
    return Config(**{key: coerce(key, value) for key, value in values.items()})


def describe_keys() -> str:
    """One line per config key with its type and default, for ``--help-keys``."""
    defaults = Config()
    lines = []
    for name in FIELDS:
        kind = _field_type(name).__name__
        choices = f" one of {'|'.join(CHOICES[name])}" if name in CHOICES else ""
        lines.append(f"  {name:<22} {kind:<6} default {getattr(defaults, name)!r}{choices}")
    return "\n".join(lines)


def preset_summary() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every preset."""
    return [(name, str(_preset_table(name).get("description", ""))) for name in preset_names()]


__all__ = [
    "Config",
    "DEFAULT_PRESET",
    "apply_overrides",
    "coerce",
    "describe_keys",
    "load_config",
    "load_preset",
    "num_views",
    "peak_lr",
    "preset_names",
    "preset_summary",
    "save_config",
    "validate",
]
