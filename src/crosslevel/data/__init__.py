"""Data: sources (digits, CIFAR, image folders) decoded to uint8, view recipes and datasets."""

from .sources import ImageSet, decode_images, image_files, load_split
from .views import MultiViewDataset, LabelledDataset, eval_transform, view_transform

__all__ = ["ImageSet", "decode_images", "image_files", "LabelledDataset", "MultiViewDataset", "eval_transform", "load_split", "view_transform"]
