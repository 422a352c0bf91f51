"""Block-parallel algorithms on ShardedMatrices."""

from __future__ import annotations

from .distances import argmin, pairwise_sq_euclidean
from .knn import KNeighborsClassifier, knn

__all__ = ["KNeighborsClassifier", "argmin", "knn", "pairwise_sq_euclidean"]
