"""crosslevel: unsupervised representation learning with Cross-Level Discrimination.

Public API (see README): :func:`crosslevel.cluster.batch_kmeans`,
:func:`crosslevel.losses.cld_loss`, :func:`crosslevel.evaluation.knn_scores`.
"""

__version__ = "0.1.0"
