"""Evaluation, separate from training: it reads models and data, never the training loop.

Pure metrics are importable from here; :mod:`.features` opens a run directory (cached
features), :mod:`.protocols` applies every protocol to it and :mod:`.figures` draws it.
"""

from .knn import extract_features, knn_accuracy, knn_scores, topk_accuracy
from .linear import fit_logistic, linear_probe
from .longtail import shot_accuracy
from .nmi import feature_nmi, kmeans_labels, nmi
from .retrieval import label_retrieval, view_retrieval
from .semi import balanced_fraction
from .unsupervised import spearman, unsupervised_score

__all__ = [
    "balanced_fraction",
    "extract_features",
    "feature_nmi",
    "fit_logistic",
    "kmeans_labels",
    "knn_accuracy",
    "knn_scores",
    "label_retrieval",
    "linear_probe",
    "nmi",
    "shot_accuracy",
    "spearman",
    "topk_accuracy",
    "unsupervised_score",
    "view_retrieval",
]
