"""Block-parallel algorithms on ShardedMatrices."""

from __future__ import annotations

from .distances import argmin, pairwise_sq_euclidean
from .knn import knn
from .matmul import (
    Plan,
    add,
    choose_block_size,
    gram,
    map_blocks,
    matmul,
    plan,
    scale,
    sub,
    transpose,
)

__all__ = ["KNeighborsClassifier", "KNeighborsRegressor", "NearestNeighbors", "Plan", "add",
           "argmin", "choose_block_size", "gram", "knn", "map_blocks", "matmul",
           "pairwise_sq_euclidean", "plan", "scale", "sub", "transpose"]

_ESTIMATORS = ("KNeighborsClassifier", "KNeighborsRegressor", "NearestNeighbors")


def __getattr__(name: str):
    # The scikit-learn estimators load scikit-learn: only when asked for, so that
    # workers (which import this package for the tile functions) stay light.
    if name in _ESTIMATORS:
        from . import neighbors

        return getattr(neighbors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
