"""The outside referee for every distance and k-NN test: float64 numpy, brute force.

``sum((q - x)**2)`` over the float64 values of the data (numpy's own summation
along the feature axis), ties to the smaller training index.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


_MEMO: OrderedDict[tuple, np.ndarray] = OrderedDict()


def _digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return a.shape, a.dtype.str, hashlib.blake2b(a.view(np.uint8).data, digest_size=16).digest()


def sq_distances(query: np.ndarray, train: np.ndarray) -> np.ndarray:
    """:func:`compute_sq_distances`, remembered for the last few inputs (several tests
    check different k, methods or backends against the same MNIST subset). A copy:
    callers may write into it."""
    key = (_digest(np.asarray(query)), _digest(np.asarray(train)))
    if key not in _MEMO:
        _MEMO[key] = compute_sq_distances(query, train)
        while len(_MEMO) > 4:
            _MEMO.popitem(last=False)
    _MEMO.move_to_end(key)
    return _MEMO[key].copy()


def compute_sq_distances(query: np.ndarray, train: np.ndarray, rows: int = 512) -> np.ndarray:
    """float64 ``((q - x)**2).sum(-1)`` for every pair.

    One query row against a chunk of training rows at a time, in one reused buffer
    that stays in cache (twice as fast as whole-set temporaries on MNIST). The
    arithmetic is the same: numpy sums each contiguous row on its own (pairwise along
    the feature axis), so a row's sum does not depend on the chunk it is in.
    """
    q64, t64 = np.asarray(query, dtype=np.float64), np.asarray(train, dtype=np.float64)
    out = np.zeros((len(q64), len(t64)))
    if not len(q64) or not len(t64):
        return out
    buf = np.empty((min(rows, len(t64)), t64.shape[1]))
    for c in range(0, len(t64), rows):
        chunk = t64[c:c + rows]
        b = buf[:len(chunk)]
        for i, q in enumerate(q64):
            np.subtract(q, chunk, out=b)
            np.square(b, out=b)
            out[i, c:c + len(chunk)] = b.sum(-1)
    return out


def reference_knn(train, query, k, exclude_self=False):
    """Float64 brute force k-NN, ties to the smaller index: (distances, indices)."""
    D = sq_distances(query, train)
    cols = np.arange(D.shape[1])
    # Leaving a point out ranks it after every other one (an inf on the diagonal would tie
    # with distances that overflow to inf, and win by index).
    own = (lambda r: cols == r) if exclude_self else (lambda r: np.zeros(len(cols), bool))
    idx = np.array([np.lexsort((cols, row, own(r)))[:k] for r, row in enumerate(D)])
    return np.take_along_axis(D, idx.reshape(len(D), -1), 1), idx.reshape(len(D), -1)
