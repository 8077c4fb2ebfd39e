"""Data: the image sets (:mod:`.images`), the built-in sources (digits, CIFAR, STL-10: :mod:`.sources`),
image folders and list files (:mod:`.folders`), variants (long tail, high correlation), view recipes
and datasets."""

from .folders import ImageFiles, decode_images, image_files
from .images import Images, InMemoryImages
from .sources import load_split
from .variants import high_correlation, long_tail, long_tail_counts
from .views import LabelledDataset, MultiViewDataset, eval_transform, view_transform

__all__ = [
    "ImageFiles",
    "InMemoryImages",
    "Images",
    "LabelledDataset",
    "MultiViewDataset",
    "decode_images",
    "eval_transform",
    "high_correlation",
    "image_files",
    "load_split",
    "long_tail",
    "long_tail_counts",
    "view_transform",
]
