"""Data: sources (digits, CIFAR, image folders) decoded to uint8, view recipes and datasets."""

from .sources import ImageSet, load_split
from .views import MultiViewDataset, LabelledDataset, eval_transform, view_transform

__all__ = ["ImageSet", "LabelledDataset", "MultiViewDataset", "eval_transform", "load_split", "view_transform"]
