"""One typed training config, presets (TOML files in ``presets/``) and ``key=value`` overrides."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import CrossLevelError
from .models import TIMM_PREFIX
from .paths import read_json_object

DEFAULT_PRESET = "digits-cld"
FEATURES = ("f", "f_I", "f_G")  # what evaluation can read: pooled backbone output, instance head, group head


def key(default: Any, help: str, **bounds: float) -> Any:
    """A config field: its default, its one-line meaning (``--help-keys``) and its bounds
    (``min`` / ``max``: inclusive, ``gt`` / ``lt``: exclusive), checked by :func:`validate`."""
    return field(default=default, metadata={"help": help, **bounds})


Dataset = Literal["digits", "cifar10", "cifar100", "stl10", "folder", "lists", "shards"]
PACK_SOURCES = ("folder", "digits", "cifar10", "cifar100")  # what `crosslevel pack` writes as shards
Recipe = Literal["auto", "cifar", "v2", "digits", "none"]
Backbone = Literal["resnet18_cifar", "resnet18", "resnet50", "smallcnn"]  # and TIMM_PREFIX + any timm model
Optimizer = Literal["sgd", "adamw"]
Instance = Literal["npid", "moco", "simclr", "byol"]  # the instance branches of methods/module.py's BRANCHES
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Strategy = Literal["auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"]  # the bank/queue sync is DDP's
# Lightning's names. Not its "16-true" / "bf16-true" / "64-true": the memory bank, queue and losses stay float32
# while those cast every input and weight (a bf16 bank loses the small momentum updates).
Precision = Literal["32-true", "16-mixed", "bf16-mixed"]


@dataclass
class Config:
    """Everything a training run needs; every field can be set with ``key=value``. Each field carries
    its meaning and bounds (:func:`key`); choices are its ``Literal`` type; :func:`validate` checks
    both, and the rules between keys."""

    # --- data ---
    dataset: Dataset = key("digits", "data source")
    data: str | None = key(None, "path of the data set (not needed for digits; shards: also a URL)")
    class_subset: str = key("", "folder/lists: '' (all classes), 'imagenet100' (the CMC list) or a file of class names")
    train_list: str = key("", "lists: file of 'relative/path label' lines (e.g. ImageNet_LT_train.txt)")
    test_list: str = key("", "lists: the same for the test split (e.g. ImageNet_LT_test.txt)")
    stl10_unlabeled: bool = key(True, "stl10: train on train (5k) + unlabeled (100k); false: train only")
    in_memory: bool = key(True, "decode every image once into memory; false: decode files on the fly")
    train_subset: int = key(0, ">0: train on a seeded, class-stratified subset of this many images", min=0)
    test_subset: int = key(0, ">0: evaluate on a seeded, class-stratified subset of the test split", min=0)
    lt_ratio: float = key(0.0, ">0: long-tail the training set, n_c = n_max·ρ^(-c/(C-1)) with ρ = lt_ratio (>= 1)")
    hc_frames: int = key(0, ">0: turn every training image into this many correlated frames", min=0)
    hc_mode: Literal["walk", "repeat"] = key("walk", "walk: smooth random camera walk; repeat: exact copies")
    augment: Recipe = key("auto", "view recipe (auto: cifar for colour, digits for grey images)")
    random_erasing: float = key(0.0, "probability of RandomErasing after normalisation (0: off)", min=0, max=1)
    blur: float = key(0.5, "augment=v2: probability of GaussianBlur(σ ∈ [0.1, 2] px) (0: off)", min=0, max=1)
    flip: float = key(0.5, "augment=cifar, v2: probability of a horizontal flip (0: none, as the original NPID's CIFAR script)", min=0, max=1)
    image_size: int = key(0, "side of the views (0: the data set's own size)", min=0)
    eval_resize: int = key(0, "test transform: short side resized to this, then centre crop image_size (0: image_size)", min=0)
    workers: int = key(2, "data-loader worker processes", min=0)
    shuffle_buffer: int = key(1024, "shards, in_memory=false: samples shuffled together (whole batches; shard order reshuffled every epoch)", min=1)
    bad_images: Literal["error", "skip"] = key("error", "an unreadable image: error (stop) or skip (warn, count in summary.json)")
    augment_device: Literal["cpu", "device"] = key("cpu", "cpu: torchvision in loader workers; device: batched on the training device")
    decode: Literal["cpu", "gpu"] = key(
        "cpu",
        "folder/lists with in_memory=false: cpu: PIL in loader workers; gpu: the workers read JPEG bytes, the GPU "
        "decodes them (nvJPEG; other formats on the CPU) and makes the views (PIL with a warning when most files are not JPEGs or there is no GPU)",
    )
    gpu_decoder: Literal["torchvision", "nvimgcodec"] = key(
        "torchvision",
        "decode=gpu's JPEG decoder: torchvision (nvJPEG on the CUDA cores) or nvimgcodec (NVIDIA nvImageCodec: the "
        "hardware JPEG decoder of A100/H100/H200 GPUs; pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg)",
    )
    # --- model ---
    backbone: Backbone = key("resnet18_cifar", "the network before the heads; timm:<name> needs pip install 'crosslevel[timm]'")
    backbone_args: str = key("", "timm:<name> only: constructor arguments, e.g. 'patch_size=4,drop_path_rate=0.1'")
    width: int = key(64, "channels of the first stage (64: the standard ResNet; a timm model's size is its name)", min=1)
    feature_dim: int = key(128, "output size of both heads", min=1)
    normlinear: bool = key(False, "cosine-layer heads instead of Linear (columns start at unit norm, as the reference)")
    mlp: bool = key(False, "shared Linear(d, d)+ReLU trunk before the heads")
    mlp_bn: bool = key(False, "mlp: BatchNorm1d between the trunk's Linear and ReLU (SimCLR v2 / BYOL / solo-learn projectors)")
    mlp_shared: bool = key(True, "mlp: one trunk feeds f_I and f_G; false: the group head gets its own trunk (same layers)")
    pool_window: int = key(0, "0: global average pool; N: the reference's avg_pool2d(N) (STL-10: 7; not with timm)", min=0)
    conv_init: Literal["torchvision", "pytorch"] = key("torchvision", "ResNets: torchvision: kaiming-normal fan_out; pytorch: the layer default (reference CIFAR ResNet)")
    # --- instance branch ---
    instance: Instance = key("npid", "instance branch: npid (memory bank), moco (momentum encoder + queue), simclr (in-batch NT-Xent), byol (predictor + EMA target, no negatives)")
    npid_views: int = key(2, "NPID: views per image (1: the original NPID; CLD needs 2)", min=1, max=2)
    nce_negatives: int = key(0, "NPID: 0 = full softmax over the bank; K > 0 = the original NPID's NCE with K noise rows", min=0)
    instance_temperature: float = key(0.1, "T_I of the instance loss (MoCo: 0.07 CIFAR, 0.2 ImageNet; SimCLR's τ; unused by BYOL)", gt=0)
    bank_momentum: float = key(0.5, "NPID: row <- normalise(m·row + (1-m)·f)", min=0, lt=1)
    queue_size: int = key(4096, "MoCo: negatives in the queue (>= the global batch)", min=1)
    ema_momentum: float = key(0.999, "MoCo key encoder / BYOL target <- m·θ + (1-m)·θ_online (BYOL: the base of its cosine m -> 1; BYOL uses 0.99-0.996)", min=0, lt=1)
    jigsaw_weight: float = key(0.0, "β of PIRL's jigsaw auxiliary (npid, moco): (1-β)·instance + β·jigsaw query's instance loss; 0: off", min=0, lt=1)
    predictor_hidden: int = key(4096, "BYOL: hidden width of the predictor MLP (D -> hidden -> D)", min=1)
    # --- cross-level term ---
    cld_weight: float = key(1.0, "λ, the weight of the CLD term (0: the instance method alone)", min=0)
    cld_temperature: float = key(0.2, "T_G of the CLD term", gt=0)
    num_groups: int = key(128, "k of the batch grouping (< the batch it groups: per device, or global with kmeans_scope=global)", min=1)
    groups_above_batch: Literal["error", "cap"] = key("error", "k >= the grouped batch: error, or cap (the reference's ImageNet arithmetic)")
    kmeans_iters: int = key(5, "k-means iterations", min=1)
    kmeans_scope: Literal["local", "global"] = key("local", "group each device's batch (local, the reference) or the gathered global batch")
    grouping: Literal["kmeans", "ncuts"] = key("kmeans", "CLD's grouping: batch k-means, or k-way normalised cuts (spectral)")
    ncuts_eigenvectors: int = key(10, "grouping=ncuts: eigenvectors of the spectral embedding (the reference's k_eigen)", min=1)
    # --- optimisation ---
    epochs: int = key(200, "training epochs", min=1)
    batch_size: int = key(256, "images per device and step", min=1)
    optimizer: Optimizer = key("sgd", "sgd (ResNets) or adamw (ViTs: base_lr ~1e-4, weight_decay 0.05-0.1, warm-up)")
    base_lr: float = key(0.03, "lr = base_lr · global batch / 128", gt=0)
    weight_decay: float = key(7e-4, "sgd: L2 on every parameter; adamw: decoupled, not on biases and norms", min=0)
    sgd_momentum: float = key(0.9, "SGD momentum (adamw: unused, betas (0.9, 0.999))", min=0, lt=1)
    warmup_epochs: int = key(5, "linear warm-up, then lr_schedule", min=0)
    warmup_start: float = key(0.0, "warm-up's first lr as a fraction of the peak (0: peak/warm-up steps; the reference: 0.01)", min=0, lt=1)
    lr_schedule: Literal["cosine", "step"] = key("cosine", "after the warm-up: cosine to 1e-6, or step: × lr_gamma from each of lr_milestones on")
    lr_milestones: str = key("", "lr_schedule=step: fractions of the epochs, comma-separated (0.6,0.8: from epochs 120 and 160 of 200, the original NPID's CIFAR script)")
    lr_gamma: float = key(0.1, "lr_schedule=step: the factor at each milestone", gt=0, max=1)
    schedule_interval: Literal["step", "epoch"] = key("step", "the lr schedule updated every step or every epoch")
    # --- evaluation ---
    knn_k: int = key(200, "kNN neighbours", min=1)
    knn_temperature: float = key(0.1, "kNN σ of exp(cos/σ) (0.07 in the MoCo presets)", gt=0)
    eval_every: int = key(0, "kNN every N epochs (0: only at the end)", min=0)
    checkpoint_every: int = key(
        1, "checkpoints/last.ckpt replaced every N epochs (and always at the end, on Ctrl-C and SIGTERM): more for "
        "short epochs on a GPU, where writing ~115 MB every epoch is up to a third of a 1.5 s epoch", min=1,
    )
    # --- run ---
    seed: int = key(0, "seed of everything (sampler, augmentations, initialisation)")
    out: str = key("runs", "parent folder of run directories")
    name: str = key("", "run directory name ('': <preset>-<time>)")
    preset: str = key("", "the preset this config came from (set by --config)")
    accelerator: Accelerator = key("auto", "Lightning accelerator")
    devices: str = key("1", "number, list '0,1', -1 or auto")
    num_nodes: int = key(1, "nodes (Lightning / torchrun / SLURM)", min=1)
    strategy: Strategy = key("auto", "Lightning strategy")
    sync_bn: bool = key(False, "SyncBatchNorm across devices (BN statistics of the global batch)")
    precision: Precision = key("32-true", "Lightning precision (k-means and losses always run in fp32)")
    channels_last: bool = key(False, "NHWC memory layout for the backbone (faster convolutions on GPUs)")
    compile: bool = key(False, "torch.compile the backbone, heads, on-device views and k-means + CLD")
    fused_views: bool = key(
        False,
        "one forward pass over the stacked query views, BatchNorm statistics still per view: the model of one "
        "pass per view (to rounding) in fewer, larger kernels",
    )
    cuda_graphs: bool = key(
        False,
        "GPU: replay the compiled parts as CUDA graphs (torch.compile mode=reduce-overhead, implies compile) with "
        "no host sync in the step; the non-finite check then runs every log interval and before each checkpoint",
    )
    logger: Literal["csv", "tensorboard", "both", "wandb", "mlflow"] = key("csv", "training logs (both: csv + tensorboard; wandb, mlflow: csv + that tracker, local by default)")
    progress: bool = key(True, "progress bars")
    limit_train_batches: float = key(1.0, "<1: fraction, >1: count of batches per epoch (tests)", gt=0)
    resume: str | None = key(None, "checkpoint or run directory to continue from")
    skip_nonfinite: bool = key(False, "a NaN/inf loss skips the step (no update) instead of stopping")
    description: str = key("", "the preset's one-line description")


# Earlier names, and the paper's symbols, accepted wherever a key is read (overrides, presets, config.json).
ALIASES = {
    "temperature": "instance_temperature",
    "T_I": "instance_temperature",
    "momentum": "sgd_momentum",
    "subset": "class_subset",
    "lambda": "cld_weight",
    "λ": "cld_weight",
    "T_G": "cld_temperature",
    "moco_momentum": "ema_momentum",
}


def compile_mode(cfg: Config) -> str | None:
    """torch.compile's ``mode`` for the run: None (eager), ``"default"`` (``compile``) or
    ``"reduce-overhead"`` (``cuda_graphs``: Inductor's CUDA graphs; on a CPU it compiles the same code without them)."""
    if cfg.cuda_graphs:
        return "reduce-overhead"
    return "default" if cfg.compile else None


def num_views(cfg: Config) -> int:
    """Views per image: NPID ``npid_views`` (2, or 1 for the original NPID); MoCo 2 (query, key);
    CLDm 3 (two query views for CLD, one key view); SimCLR and BYOL 2 (each view is both query and
    target of the other). ``jigsaw_weight`` > 0 adds one view, cut into the jigsaw's patches."""
    jigsaw = 1 if cfg.jigsaw_weight > 0 else 0
    if cfg.instance == "moco":
        return (3 if cfg.cld_weight > 0 else 2) + jigsaw
    if cfg.instance == "npid":
        return cfg.npid_views + jigsaw
    return 2


def peak_lr(cfg: Config, world_size: int) -> float:
    """The official linear scaling rule: ``base_lr · (batch per device · devices) / 128``."""
    return cfg.base_lr * cfg.batch_size * world_size / 128


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
HINTS = typing.get_type_hints(Config)
CHOICES: dict[str, tuple[str, ...]] = {
    name: typing.get_args(hint) for name, hint in HINTS.items() if typing.get_origin(hint) is Literal
}
PREFIXED_CHOICES = {"backbone": TIMM_PREFIX}  # a value may also be this prefix + a name (checked in validate)


def shown_choices(name: str) -> tuple[str, ...]:
    """The choices of key ``name`` as ``--help-keys`` and errors list them (``timm:<name>`` for a prefix)."""
    prefix = PREFIXED_CHOICES.get(name)
    return CHOICES[name] + ((f"{prefix}<name>",) if prefix else ())


def _field_type(name: str) -> type:
    hint = HINTS[name]
    if isinstance(hint, types.UnionType):  # "str | None"
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return hint


def canonical(name: str) -> str:
    """The config key ``name`` stands for (itself, or the key an alias names)."""
    return ALIASES.get(name, name)


def coerce(name: str, raw: Any) -> Any:
    """Convert ``raw`` (a CLI string or a TOML value) to the type of config field ``name`` (or an alias's)."""
    name = canonical(name)
    if name not in FIELDS:
        close = difflib.get_close_matches(name, [*FIELDS, *ALIASES], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CrossLevelError(f"unknown config key '{name}'{hint}; `crosslevel train --help-keys` lists them")
    kind = _field_type(name)
    optional = type(None) in typing.get_args(HINTS[name])
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
    values = {canonical(key): coerce(canonical(key), value) for key, value in _preset_table(name).items()}
    return Config(**{**values, "preset": name})


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return ``cfg`` with ``key=value`` strings applied and validated; a bad key or value raises."""
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CrossLevelError(f"override {item!r} is not of the form key=value")
        name = canonical(key.strip())
        changes[name] = coerce(name, value)
    return validate(dataclasses.replace(cfg, **changes))


def knn_weights_fit(temperature: float, k: int) -> bool:
    """Whether a sum of ``k`` kNN weights exp(cos/σ), σ = ``temperature``, stays within float32 (exp(88.7))."""
    return temperature * (88.7 - math.log(max(k, 1))) > 1


def validate(cfg: Config) -> Config:
    """Check values and combinations that would fail later; return ``cfg`` unchanged."""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed and not (key in PREFIXED_CHOICES and value.startswith(PREFIXED_CHOICES[key])):
            raise CrossLevelError(f"config key '{key}' must be one of {', '.join(shown_choices(key))}; got '{value}'")
    for key, spec in FIELDS.items():
        _check_bounds(key, getattr(cfg, key), spec.metadata)
    _check_backbone(cfg)
    if not knn_weights_fit(cfg.knn_temperature, cfg.knn_k):
        raise CrossLevelError(f"knn_temperature={cfg.knn_temperature}: exp(cos/σ) over knn_k={cfg.knn_k} neighbours overflows float32 (σ = 0.0125 or more for k = 200)")
    if cfg.fused_views and cfg.sync_bn:
        raise CrossLevelError(
            "fused_views=true keeps each view's BatchNorm statistics apart, which SyncBatchNorm (sync_bn=true) "
            "does not: use one of them"
        )
    if cfg.cuda_graphs and cfg.skip_nonfinite:
        raise CrossLevelError(
            "skip_nonfinite=true reads every step's loss on the host before the update; cuda_graphs=true "
            "never does (its non-finite check is deferred): use one of them"
        )
    if cfg.cuda_graphs and cfg.grouping == "ncuts":
        raise CrossLevelError("cuda_graphs=true needs grouping=kmeans: ncuts' eigensolver checks its result on the host")
    if cfg.mlp_bn and not cfg.mlp:
        raise CrossLevelError("mlp_bn=true puts BatchNorm in the MLP trunk: it needs mlp=true")
    if not cfg.mlp_shared and not cfg.mlp:
        raise CrossLevelError("mlp_shared=false gives the group head its own MLP trunk: it needs mlp=true")
    if cfg.npid_views == 1 and (cfg.instance != "npid" or cfg.cld_weight > 0):
        raise CrossLevelError(
            "npid_views=1 is the original one-view NPID: it needs instance=npid and cld_weight=0 "
            "(CLD compares two views)"
        )
    if cfg.nce_negatives and cfg.instance != "npid":
        raise CrossLevelError(f"nce_negatives={cfg.nce_negatives} is NPID's NCE: it needs instance=npid (got instance={cfg.instance})")
    if cfg.jigsaw_weight > 0 and cfg.instance not in ("npid", "moco"):
        raise CrossLevelError(
            f"jigsaw_weight={cfg.jigsaw_weight} scores the jigsaw query against a memory bank or a queue: "
            f"it needs instance=npid or moco (got instance={cfg.instance})"
        )
    if cfg.instance == "moco":
        world = known_world_size(cfg) or 1  # devices=auto: checked again when training starts
        if cfg.queue_size < cfg.batch_size * world:
            devices = f" × {world} devices" if world > 1 else ""
            raise CrossLevelError(
                f"queue_size={cfg.queue_size} is smaller than batch_size={cfg.batch_size}{devices}: "
                "the MoCo queue must hold at least one (global) batch of keys"
            )
    if cfg.lt_ratio != 0 and cfg.lt_ratio < 1:
        raise CrossLevelError(f"lt_ratio (ρ) must be 0 (off) or >= 1, e.g. 10, 50, 100; got {cfg.lt_ratio}")
    if cfg.dataset == "lists" and not cfg.train_list:
        raise CrossLevelError("dataset 'lists' needs train_list=FILE (lines of 'relative/path label')")
    streamed = [f"{key}={getattr(cfg, key)}" for key in ("lt_ratio", "train_subset", "test_subset", "hc_frames") if getattr(cfg, key)]
    if cfg.dataset == "shards" and not cfg.in_memory and streamed:
        raise CrossLevelError(f"{', '.join(streamed)} choose images of the data set: with dataset=shards they need in_memory=true (streamed shards are read whole)")
    if cfg.decode == "gpu":
        _check_gpu_decode(cfg)
    elif cfg.gpu_decoder != "torchvision":
        raise CrossLevelError(f"gpu_decoder={cfg.gpu_decoder} chooses decode=gpu's decoder: it needs decode=gpu (got decode={cfg.decode})")
    if not cfg.in_memory and not cfg.image_size:
        raise CrossLevelError("in_memory=false decodes images on the fly and needs image_size=N (e.g. 224)")
    if not cfg.in_memory and cfg.bad_images == "skip":
        raise CrossLevelError(
            "bad_images=skip leaves unreadable files out when the images are decoded into memory (in_memory=true); "
            "files decoded on the fly (in_memory=false) are read in the middle of an epoch, each one an error naming it: remove them first"
        )
    if cfg.dataset != "digits" and not cfg.data:
        raise CrossLevelError(f"dataset '{cfg.dataset}' needs a path: add --data PATH (or data=PATH)")
    if cfg.dataset == "digits" and cfg.data:
        raise CrossLevelError(
            f"dataset=digits is built in and reads no path (got data={cfg.data}): name the kind of data there, "
            "e.g. dataset=folder (class sub-folders), cifar10 or shards"
        )
    if not re.fullmatch(r"auto|-1|[1-9]\d*|\d+,(\d+,?)*", cfg.devices):
        raise CrossLevelError(
            f"devices must be a count (1, 4), -1 or auto (all), or device indices like 0,1; got '{cfg.devices}'"
        )
    lr_milestones(cfg)
    check_groups(cfg, known_world_size(cfg))
    return cfg


def lr_milestones(cfg: Config) -> list[int]:
    """The epochs (counted from 0) from which ``lr_schedule=step`` multiplies the lr by ``lr_gamma``
    once more: ``lr_milestones``' fractions of ``epochs``, rounded, never the first epoch (in a run of a
    few epochs two may fall on one: both apply there); [] for the cosine schedule."""
    if cfg.lr_schedule != "step":
        if cfg.lr_milestones:
            raise CrossLevelError(
                f"lr_milestones={cfg.lr_milestones} are read with lr_schedule=step only (got lr_schedule={cfg.lr_schedule}); "
                "with another schedule clear them too: lr_milestones="
            )
        return []
    try:
        fractions = [float(part) for part in cfg.lr_milestones.split(",") if part.strip()]
    except ValueError:
        fractions = []
    if not fractions or fractions != sorted(set(fractions)) or not 0 < fractions[0] <= fractions[-1] < 1:
        raise CrossLevelError(
            "lr_schedule=step needs lr_milestones=F1,F2,...: increasing fractions of the epochs between 0 and 1, "
            f"e.g. 0.6,0.8 (from epochs 120 and 160 of 200); got '{cfg.lr_milestones}'"
        )
    return [max(1, round(fraction * cfg.epochs)) for fraction in fractions]


def _check_gpu_decode(cfg: Config) -> None:
    """``decode=gpu`` is for large image files read on the fly, with views the device can make."""
    if cfg.dataset not in ("folder", "lists"):
        raise CrossLevelError(f"decode=gpu decodes image files: it needs dataset=folder or lists (got dataset={cfg.dataset})")
    if cfg.in_memory:
        raise CrossLevelError("decode=gpu decodes every batch's files again: it needs in_memory=false (images decoded once into memory need no GPU decode)")
    if cfg.augment_device == "device":
        raise CrossLevelError("decode=gpu makes the views on the GPU itself; augment_device=device is for images held in memory: set augment_device=cpu")
    if cfg.augment == "digits":
        raise CrossLevelError("augment=digits has no on-device version: decode=gpu needs augment=auto, cifar, v2 or none")
    if cfg.hc_frames > 0:
        raise CrossLevelError("decode=gpu reads each file as it is; hc_frames makes frames of decoded images: use decode=cpu")


def known_world_size(cfg: Config) -> int | None:
    """Processes the run will have (devices × num_nodes), or None when ``devices`` is auto / -1."""
    if cfg.devices in ("auto", "-1"):
        return None
    count = len([d for d in cfg.devices.split(",") if d]) if "," in cfg.devices else int(cfg.devices)
    return count * cfg.num_nodes


def check_groups(cfg: Config, world_size: int | None) -> None:
    """Raise unless k (``num_groups``) is below the batch it groups: the per-device batch
    (``kmeans_scope=local``) or the global one, ``batch_size × world_size`` (``global``; not checked
    while ``world_size`` is None, unknown). ``groups_above_batch=cap`` allows k >= that batch."""
    if cfg.cld_weight == 0 or cfg.groups_above_batch == "cap":
        return
    degenerate = (
        "with k >= batch every image is its own group and CLD degenerates to in-batch instance "
        "discrimination (groups_above_batch=cap allows it on purpose, as the reference's ImageNet run did)"
    )
    if cfg.kmeans_scope == "local" and cfg.num_groups >= cfg.batch_size:
        raise CrossLevelError(
            f"num_groups (k={cfg.num_groups}) must be smaller than the per-device batch "
            f"(batch_size={cfg.batch_size}): {degenerate}; kmeans_scope=global groups the global batch instead"
        )
    if cfg.kmeans_scope == "global" and world_size is not None and cfg.num_groups >= cfg.batch_size * world_size:
        raise CrossLevelError(
            f"num_groups (k={cfg.num_groups}) must be smaller than the global batch "
            f"(batch_size={cfg.batch_size} × {world_size} device{'s' if world_size > 1 else ''} = {cfg.batch_size * world_size}) "
            f"with kmeans_scope=global: {degenerate}"
        )


TIMM_SET_ARGS = ("pretrained", "num_classes", "in_chans")  # what crosslevel passes to timm.create_model itself


def _check_backbone(cfg: Config) -> None:
    """A ``timm:<name>`` backbone: timm installed, the name known, ``backbone_args`` readable, and no
    built-in-only architecture key (``width``, ``pool_window``) changed; else no ``backbone_args``."""
    kwargs = backbone_kwargs(cfg.backbone_args)
    if not cfg.backbone.startswith(TIMM_PREFIX):
        if kwargs:
            raise CrossLevelError(f"backbone_args is for timm backbones (backbone=timm:<name>); backbone={cfg.backbone} takes none")
        return
    from .models.timm_backbone import check_timm_name  # imports timm: only for timm backbones

    check_timm_name(cfg.backbone.removeprefix(TIMM_PREFIX))
    changed = [f"{key}={getattr(cfg, key)}" for key in ("width", "pool_window") if getattr(cfg, key) != FIELDS[key].default]
    if changed:
        raise CrossLevelError(
            f"{', '.join(changed)} shapes the built-in backbones only; a timm model's size comes from its name and "
            f"backbone_args, and it pools itself (backbone_args='global_pool=...'): set width=64, pool_window=0"
        )
    if reserved := [name for name in TIMM_SET_ARGS if name in kwargs]:
        raise CrossLevelError(
            f"backbone_args may not set {', '.join(reserved)}: crosslevel builds timm models untrained "
            "(pretrained=False), without classifier (num_classes=0) and with the data's channels (in_chans)"
        )


def backbone_kwargs(text: str) -> dict[str, Any]:
    """``backbone_args`` as keyword arguments: ``'patch_size=4,drop_path_rate=0.1,global_pool=avg'`` →
    ``{'patch_size': 4, 'drop_path_rate': 0.1, 'global_pool': 'avg'}`` (numbers, true/false/none as
    Python values, anything else a string)."""
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name.isidentifier() or not value:
            raise CrossLevelError(f"backbone_args must be comma-separated name=value pairs, e.g. 'patch_size=4,drop_path_rate=0.1'; got {item!r}")
        kwargs[name] = _python_value(value)
    return kwargs


def _python_value(text: str) -> Any:
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (int, float, str)) else text


BOUNDS = {"min": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b), "max": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _check_bounds(key: str, value: Any, metadata: typing.Mapping[str, Any]) -> None:
    """Raise if ``value`` breaks a bound of its field (:func:`key`'s ``min``, ``gt``, ``max``, ``lt``)."""
    for bound, (symbol, holds) in BOUNDS.items():
        if bound in metadata and value is not None and not holds(value, metadata[bound]):
            raise CrossLevelError(f"config key '{key}' must be {symbol} {metadata[bound]:g}, got {value}")


PATH_KEYS = ("data", "train_list", "test_list", "class_subset")  # class_subset may also name a built-in list


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with its file and folder paths absolute (the data's and ``out``), so that the saved run works
    from any folder and says where it is."""
    paths = {key: getattr(cfg, key) for key in (*PATH_KEYS, "out")}
    return dataclasses.replace(
        cfg, **{key: os.path.abspath(Path(value).expanduser()) for key, value in paths.items() if value and value != "imagenet100" and not is_url(value)}
    )


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL-like location (``https://...``, ``pipe:...``; dataset=shards) rather than a local path."""
    return "://" in path or path.startswith("pipe:")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as JSON."""
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def load_config(path: Path) -> Config:
    """Read a config written by :func:`save_config`; a damaged file, a wrong value or keys this version
    does not know (a newer crosslevel's run) are an error naming the file."""
    values = read_json_object(path)
    unknown = sorted(key for key in values if canonical(key) not in FIELDS)
    if unknown:
        raise CrossLevelError(
            f"{path} has config keys this crosslevel does not know ({', '.join(unknown)}): "
            "it was written by a newer version; upgrade crosslevel to use this run"
        )
    try:
        return Config(**{canonical(key): coerce(canonical(key), value) for key, value in values.items()})
    except CrossLevelError as err:
        raise CrossLevelError(f"{path} is damaged: {err}") from None


def describe_keys(cfg: Config | None = None) -> str:
    """One line per config key: name, type, value in ``cfg`` (default: the base defaults), choices
    and meaning, for ``--help-keys``; then the aliases."""
    cfg = cfg or Config()
    lines = []
    for name, spec in FIELDS.items():
        kind = _field_type(name).__name__
        choices = f" ({'|'.join(shown_choices(name))})" if name in CHOICES else ""
        lines.append(f"  {name:<20} {kind:<5} {getattr(cfg, name)!r:<16} {spec.metadata['help']}{choices}")
    aliases = ", ".join(f"{old} = {new}" for old, new in ALIASES.items())
    return "\n".join(lines + [f"  also accepted: {aliases}"])


def preset_summary() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every preset."""
    return [(name, str(_preset_table(name).get("description", ""))) for name in preset_names()]


__all__ = [
    "Config",
    "DEFAULT_PRESET",
    "apply_overrides",
    "backbone_kwargs",
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
