"""Block-parallel algorithms on ShardedMatrices."""

from __future__ import annotations

from .distances import argmin, pairwise_sq_euclidean
from .knn import KNeighborsClassifier, knn
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

__all__ = ["KNeighborsClassifier", "Plan", "add", "argmin", "choose_block_size", "gram", "knn",
           "map_blocks", "matmul", "pairwise_sq_euclidean", "plan", "scale", "sub", "transpose"]
