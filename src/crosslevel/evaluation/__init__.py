"""Evaluation, separate from training: it reads models and data, never the training loop."""

from .knn import extract_features, knn_accuracy, knn_scores, topk_accuracy

__all__ = ["extract_features", "knn_accuracy", "knn_scores", "topk_accuracy"]
