"""The outside referee for every distance and k-NN test: float64 numpy, brute force.

``sum((q - x)**2)`` over the float64 values of the data (numpy's own summation
along the feature axis), ties to the smaller training index.
"""

from __future__ import annotations

import numpy as np


def sq_distances(query: np.ndarray, train: np.ndarray) -> np.ndarray:
    """float64 ``((q - x)**2).sum(-1)`` for every pair, one query row at a time."""
    q64, t64 = np.asarray(query, dtype=np.float64), np.asarray(train, dtype=np.float64)
    return np.stack([((q - t64) ** 2).sum(-1) for q in q64]) if len(q64) else \
        np.zeros((0, len(t64)))


def reference_knn(train, query, k, exclude_self=False):
    """Float64 brute force k-NN, ties to the smaller index: (distances, indices)."""
    D = sq_distances(query, train)
    if exclude_self:
        np.fill_diagonal(D, np.inf)
    idx = np.array([np.lexsort((np.arange(len(row)), row))[:k] for row in D]).reshape(len(D), -1)
    return np.take_along_axis(D, idx, 1), idx
