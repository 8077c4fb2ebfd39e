"""Use a trained backbone: export it (the file :func:`crosslevel.load_backbone` reads; torchvision,
detectron2 weights), embed a folder of images, group a folder into k clusters with a contact sheet per group."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import plots
from .config import backbone_kwargs
from .data import eval_transform
from .data.folders import decode_images, image_files
from .errors import CrossLevelError, warn
from .evaluation.features import Run
from .evaluation.nmi import kmeans_labels
from .models import TIMM_PREFIX
from .models.exported import FORMAT, VERSION, detectron2_key, torchvision_architecture
from .paths import check_new_file
from .run_dir import open_run, read_data_info


def export_backbone(run_dir: Path, out: Path, fmt: str = "crosslevel") -> tuple[dict, list[Path]]:
    """Save the backbone of a run at ``out``: for ``fmt`` ``crosslevel`` the file
    :func:`crosslevel.load_backbone` reads (and, for a standard torchvision ResNet, its plain ``state_dict`` without ``fc`` at
    ``<out stem>_torchvision.pth``); for ``detectron2`` a detectron2 weights ``.pkl``.
    Return the backbone's description (name, width, in_channels, pool_window, for timm models image_size
    and args, feature_dim) and the files written. A file already at ``out`` (or at the torchvision
    file's place) is an error: an export never writes over a file."""
    check_new_file(out, "--out")
    cfg, module, _ = open_run(run_dir)
    spec = {"name": cfg.backbone, "width": cfg.width, "in_channels": module.hparams["in_channels"], "pool_window": cfg.pool_window}
    if cfg.backbone.startswith(TIMM_PREFIX):  # what timm.create_model needs besides the name
        spec.update(image_size=module.hparams["image_size"], args=backbone_kwargs(cfg.backbone_args))
    weights = {key: value.detach().cpu().contiguous() for key, value in module.backbone.state_dict().items()}
    described = {**spec, "feature_dim": module.backbone.out_dim}
    if fmt == "detectron2" and torchvision_architecture(spec, cifar_stem=False) is None:
        raise CrossLevelError(
            f"--format detectron2 needs a standard ImageNet-stem ResNet (backbone=resnet18 or resnet50, width=64, "
            f"3 channels, pool_window=0); this run's backbone is {spec}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "detectron2":
        model = {detectron2_key(key): value.numpy() for key, value in _torchvision_weights(weights).items()}
        with open(out, "wb") as handle:
            pickle.dump({"model": model, "__author__": "crosslevel", "matching_heuristics": True}, handle)
        return described, [out]
    plain = out.with_name(f"{out.stem}_torchvision.pth") if torchvision_architecture(spec) is not None else None
    if plain is not None:
        check_new_file(plain, "--out")
    info = read_data_info(Path(run_dir), cfg)
    preprocessing = {"channels": info.channels, "image_size": info.size, "mean": list(info.mean), "std": list(info.std)}
    torch.save({"format": FORMAT, "version": VERSION, "backbone": spec, "state_dict": weights,
                "preprocessing": preprocessing, "feature_dim": module.backbone.out_dim}, out)
    if plain is None:
        return described, [out]
    torch.save(_torchvision_weights(weights), plain)
    return described, [out, plain]


def _torchvision_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A :class:`ResNetTrunk`'s ``state_dict`` with torchvision's keys (``net.`` removed)."""
    return {key.removeprefix("net."): value for key, value in weights.items()}


def _folder_images(run: Run, folder: Path) -> tuple[list[Path], np.ndarray]:
    """Every image under ``folder`` decoded at the run's image size and channel count (grey: mean of RGB),
    with a warning when they do not look like the model's input."""
    if not folder.is_dir():
        raise CrossLevelError(f"not a folder: {folder}")
    paths = image_files(folder)
    if not paths:
        raise CrossLevelError(f"no images found in {folder}")
    side, channels = run.info.size, run.info.channels
    images, _, _ = decode_images(paths, side, f"decoding {folder.name}", folder)
    colour = bool((images[..., :1] != images[..., 1:]).any())
    mismatch = _input_mismatch(paths, colour, channels, side, one_size=run.cfg.in_memory)
    if mismatch:
        warn(f"the images in {folder} do not look like the input of the model in {run.path}: {mismatch}; its features may say little about them")
    if channels == 1:
        images = images.mean(axis=3, keepdims=True).round().astype(np.uint8)
    return paths, images


def _input_mismatch(paths: list[Path], colour: bool, channels: int, side: int, one_size: bool) -> str:
    """How images differ from what a model of ``channels``×``side``×``side`` input was trained on ('' when
    they do not): colour for a grey model, a short side under half ``side``, or over twice it for a model
    trained on images decoded to ``one_size`` (in memory; on-the-fly training crops images of any size)."""
    problems = ["they are colour, the model's images grey (they are made grey)"] if colour and channels == 1 else []
    largest = 2 * side if one_size else math.inf
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        if not side / 2 <= min(width, height) <= largest:
            problems.append(f"{path.name} is {width}×{height}, the model's input {side}×{side} (every image is resized to it)")
            break
    return "; ".join(problems)


def embed_folder(run: Run, folder: Path, feature: str = "f") -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(files, uint8 N×H×W×C images, float32 N×D L2-normalised features) of every image under ``folder``."""
    paths, images = _folder_images(run, folder)
    transform = eval_transform(run.info.size, run.info.mean, run.info.std, run.cfg.eval_resize)
    embed = run.embedder(feature)
    chunks = []
    for start in range(0, len(images), run.batch_size):
        batch = torch.from_numpy(images[start : start + run.batch_size]).permute(0, 3, 1, 2)
        chunks.append(embed(transform(batch).to(run.device)).cpu())
    return paths, images, torch.cat(chunks).numpy().astype(np.float32)


def cluster_folder(run: Run, folder: Path, k: int, out: Path, feature: str = "f", seed: int = 0, per_sheet: int = 64) -> list[int]:
    """Group the images under ``folder`` into ``k`` k-means clusters of their features; write ``out``
    (CSV: file, group) and ``<out stem>_group<g>.png`` contact sheets; return the group sizes."""
    paths, images, features = embed_folder(run, folder, feature)
    if not 1 <= k <= len(paths):
        raise CrossLevelError(f"--k must be between 1 and the number of images ({len(paths)}), got {k}")
    groups = kmeans_labels(torch.from_numpy(features), k, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "group"])
        writer.writerows((str(path.relative_to(folder)), int(group)) for path, group in zip(paths, groups))
    sizes = np.bincount(groups, minlength=k).tolist()
    for group in range(k):
        members = np.flatnonzero(groups == group)[:per_sheet]
        plots.contact_sheet(
            images[members], f"group {group}: {sizes[group]} images" + (f" (first {per_sheet})" if sizes[group] > per_sheet else ""),
            out.with_name(f"{out.stem}_group{group}.png"), names=[str(paths[i].relative_to(folder)) for i in members],
        )
    return sizes
