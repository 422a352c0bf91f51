"""Exact k-nearest neighbours that never materialise the distance matrix.

Each task takes one tile (a block of queries against a block of training rows),
computes its squared distances with a single float32 GEMM and keeps only each
query's k best; the partial results of a query block are merged in a tree.

Work-saving choices that keep results exact:

* **constant columns dropped**: a column constant across the training set adds
  the same amount to every distance of a query (MNIST has 67 all-zero pixels), so
  the GEMM skips it and the amount is added back to the reported distances;
* **one augmented GEMM**: ``[q, 1] . [-2t, |t|^2] = |t|^2 - 2 q.t``, so the
  distance tile (up to the per-query constant ``|q|^2``) comes out of the GEMM
  with no extra pass over it;
* **symmetry** for train-vs-train: each unordered block pair is computed once and
  serves both blocks' rows.

Ties go to the smaller training index, so results are deterministic.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from ..executor import Executor
from ..futures import get_all_results
from ..matrix import ShardedMatrix
from ._common import Inputs, check_features, executor_for, new_token, run_resumable, sq_norms

Partial = tuple[np.ndarray, np.ndarray]  # (squared distances, indices), each (n, k)


class Columns(NamedTuple):
    """Which feature columns vary across the training set."""

    kept: np.ndarray | None  # indices of varying columns; None = all
    const_idx: np.ndarray     # indices of constant columns
    const_val: np.ndarray     # their values
    token: str = ""           # unique per call: keys worker caches (object ids get reused)


# --- pure kernels (no I/O; tested directly) ---------------------------------------------


def topk_rows(S: np.ndarray, k: int, offset: int = 0) -> Partial:
    """The k smallest entries of each row of S, sorted, ties to the smaller column.

    Returns values and column indices (plus ``offset``), each of shape (rows, min(k, cols)).
    """
    n, m = S.shape
    k = min(k, m)
    if k == 1:
        idx = np.argmin(S, axis=1)[:, None]  # first occurrence: smallest index on ties
    else:
        idx = np.argpartition(S, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (n, 1))
        kth = np.take_along_axis(S, idx, 1).max(axis=1)
        # argpartition may drop a smaller index tied with the k-th value: redo those rows.
        crowded = np.flatnonzero((S <= kth[:, None]).sum(axis=1) > k)
        for r in crowded:
            cand = np.flatnonzero(S[r] <= kth[r])
            idx[r] = cand[np.lexsort((cand, S[r, cand]))[:k]]
    vals = np.take_along_axis(S, idx, 1)
    order = np.lexsort((idx, vals), axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1) + offset


def merge(a: Partial, b: Partial, k: int) -> Partial:
    """Merge two partial top-k results for the same queries."""
    vals = np.concatenate([a[0], b[0]], axis=1)
    idx = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((idx, vals), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


def tree_merge(parts: list[Partial], k: int) -> Partial:
    """Merge partials pairwise, level by level (a balanced tree)."""
    if not parts:
        raise ValueError("nothing to merge")
    while len(parts) > 1:
        nxt = [merge(parts[i], parts[i + 1], k) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


# --- worker-side tile tasks ----------------------------------------------------------------

# Prepared blocks, per worker process: a tile's neighbours in the task order often
# reuse a block. Small and bounded, so memory per worker stays a few block pairs.
_CACHE: OrderedDict = OrderedDict()
_CACHE_ENTRIES = 5


def _cached(key: tuple, make):
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return value


def _gemm_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` into a reused per-worker buffer.

    A fresh 64 MB result per tile costs page faults and zeroing on every task
    (badly so under allocators tuned to return memory eagerly, as Dask's workers
    are); reusing the buffer keeps the tile's cost the GEMM's. The caller must be
    done with the previous result before the next call with the same shape.
    """
    shape = (a.shape[0], b.shape[0])
    buf = _cached(("scratch", shape), lambda: np.empty(shape, dtype=np.float32))
    return np.matmul(a, b.T, out=buf)


def _finite_block(M: ShardedMatrix, i: int, what: str) -> np.ndarray:
    X = M.get_block(i, 0, copy=False)
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(
            f"{what} contains NaN or infinity (row {i * M.shard_sizes[0] + bad[0]}, column {bad[1]}); "
            "k-NN needs finite values: drop or impute those rows first")
    return X


def _train_side(T: ShardedMatrix, j: int, cols: Columns) -> np.ndarray:
    """Training block j as ``[-2 t, |t|^2]`` over the varying columns."""
    def make():
        X = _finite_block(T, j, "the training set")
        Xk = X if cols.kept is None else X[:, cols.kept]
        aug = np.empty((Xk.shape[0], Xk.shape[1] + 1), dtype=np.float32)
        np.multiply(Xk, -2, out=aug[:, :-1])
        aug[:, -1] = sq_norms(Xk)
        return aug

    return _cached(("train", T.store.url, T.key, j, cols.token), make)


def _query_side(Q: ShardedMatrix, i: int, cols: Columns) -> tuple[np.ndarray, np.ndarray]:
    """Query block i as ``[q, 1]`` over the varying columns, and each row's |q - c|^2 rest."""
    def make():
        X = _finite_block(Q, i, "the query set")
        Xk = X if cols.kept is None else X[:, cols.kept]
        aug = np.empty((Xk.shape[0], Xk.shape[1] + 1), dtype=np.float32)
        aug[:, :-1] = Xk
        aug[:, -1] = 1
        rest = sq_norms(Xk)
        if cols.const_idx.size:
            rest += sq_norms(X[:, cols.const_idx] - cols.const_val)
        return aug, rest

    return _cached(("query", Q.store.url, Q.key, i, cols.token), make)


def _query_tile(Q: ShardedMatrix, T: ShardedMatrix, i: int, j: int, k: int, cols: Columns):
    q_aug, q_rest = _query_side(Q, i, cols)
    t_aug = _train_side(T, j, cols)
    S = _gemm_nt(q_aug, t_aug)  # |t|^2 - 2 q.t, straight out of the GEMM
    vals, idx = topk_rows(S, k, offset=j * T.shard_sizes[0])
    vals += q_rest[:, None]
    np.maximum(vals, 0, out=vals)
    return i, vals, idx


def _pair_tile(T: ShardedMatrix, i: int, j: int, k: int, cols: Columns, exclude_self: bool):
    """Block pair (i, j), i <= j, of train-vs-train: partials for both blocks' rows."""
    a_aug, a_rest = _query_side(T, i, cols)
    D = _gemm_nt(a_aug, _train_side(T, j, cols))
    D += a_rest[:, None]  # now the full squared distances
    np.maximum(D, 0, out=D)
    b = T.shard_sizes[0]
    if i == j and exclude_self:
        np.fill_diagonal(D, np.inf)
    out = [(i, *topk_rows(D, k, offset=j * b))]
    if i != j:
        out.append((j, *topk_rows(D.T, k, offset=i * b)))
    return out


# --- driver side -----------------------------------------------------------------------------


def _column_stats(T: ShardedMatrix, j: int) -> tuple[np.ndarray, np.ndarray]:
    X = T.get_block(j, 0, copy=False)
    return X.min(axis=0), X.max(axis=0)


def varying_columns(T: ShardedMatrix, executor: Executor, progress: bool | None = None) -> Columns:
    """Find the columns that are constant across the training set (one pass, in parallel)."""
    res = get_all_results(executor.map(lambda j: _column_stats(T, j), range(T.grid[0])),
                          progress=progress)
    lo = np.min([r[0] for r in res], axis=0)
    hi = np.max([r[1] for r in res], axis=0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("the training set contains NaN or infinity; k-NN needs finite values: "
                         "drop or impute those rows first")
    const = lo == hi
    token = new_token()
    if not const.any():
        return Columns(None, np.zeros(0, np.int64), np.zeros(0, np.float32), token)
    return Columns(np.flatnonzero(~const), np.flatnonzero(const), lo[const].astype(np.float32),
                   token)


def knn(train: Any, query: Any = None, k: int = 1, executor: Executor | None = None,
        exclude_self: bool = False, block_size: int | None = None,
        progress: bool | None = None, timings: dict[str, Any] | None = None,
        method: str = "brute", index: Any = None, resume: bool = False,
        key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (squared Euclidean) of each query row among training rows.

    Parameters
    ----------
    train : ShardedMatrix or array, shape (n, d)
    query : ShardedMatrix or array, shape (m, d), optional
        Default: the training set itself (train-vs-train, using symmetry).
    k : int
        Neighbours per query.
    executor : Executor, optional
        Default: a local executor for the duration of the call.
    exclude_self : bool
        Train-vs-train only: leave each point out of its own neighbours (leave-one-out).
    block_size : int, optional
        Rows per block when sharding array inputs (default 4000).
    timings : dict, optional
        Filled with seconds per phase and the number of tasks run.
    method : {"brute", "pruned", "auto"}
        ``"brute"``: every distance, float32 GEMM (symmetry for train-vs-train).
        ``"pruned"``: provable lower bounds from a PCA projection skip most
        distances; survivors get exact float64 distances
        (:mod:`shardwren.linalg.pruned`). ``"auto"``: pruned when a sample shows
        the bounds pay off, brute otherwise.
    index : PrunedIndex, optional
        A projection built before by :func:`shardwren.linalg.pruned.fit` for this
        training set (the classifier's ``fit`` does this), reused across queries.
    resume : bool
        Keep each tile's partial result in the store under ``<key>/parts/``; a
        later call with the same ``key`` (after the driver died, say) reuses them
        and computes only the missing tiles (or, on the pruned path, query slices).
    key : str, optional
        The job's name in the store, needed with ``resume``.

    Returns
    -------
    distances : array (m, k)
        Squared Euclidean distances, ascending: float32 from the brute path,
        exact float64 from the pruned one.
    indices : int64 array (m, k)
        Training row indices; ties go to the smaller index.
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    symmetric = query is None or query is train
    if exclude_self and not symmetric:
        raise ValueError("exclude_self=True needs train-vs-train (leave query=None)")
    timings = timings if timings is not None else {}
    with executor_for(executor) as ex, Inputs(ex, block_size) as inputs:
        t0 = time.perf_counter()
        T = inputs.matrix(train, "train")
        Q = T if symmetric else inputs.matrix(query, "query")
        check_features(T, Q, "train and query")
        n_train = T.shape[0] - (1 if exclude_self else 0)
        if T.shape[0] == 0 or Q.shape[0] == 0:
            raise ValueError(f"empty input: train has shape {T.shape}, query {Q.shape}")
        if k > n_train:
            raise ValueError(f"k={k} is larger than the {n_train} training points available")
        t1 = time.perf_counter()
        if method not in ("brute", "pruned", "auto"):
            raise ValueError(f"method must be 'brute', 'pruned' or 'auto', got {method!r}")
        if method != "brute":
            from . import pruned

            if index is None or index.train is not T and index.train.key != T.key:
                index = pruned.fit(T, ex, k=k, allow_brute=method == "auto", progress=progress)
                inputs.adopt(index.Z)
            timings.update(fit=time.perf_counter() - t1, m=index.m, pruning=index.Z is not None,
                           why=index.info.get("reason"))
            if index.Z is not None:
                t2 = time.perf_counter()
                jobs = len(ex.history)
                dist, ind, surv, ran = pruned.query(index, Q, k, ex, exclude_self, progress,
                                                    resume, key)
                timings.update(shard=t1 - t0, query=time.perf_counter() - t2, survivors=surv,
                               survivors_per_query=surv / Q.shape[0], tasks=ran,
                               peak_rss=_peak_rss(ex, jobs))
                return dist, ind
        cols = varying_columns(T, ex, progress)
        t2 = time.perf_counter()
        jobs = len(ex.history)
        if symmetric:
            pairs = [(i, j) for i in range(T.grid[0]) for j in range(i, T.grid[0])]
            out, ran = run_resumable(ex, lambda i, j: _pair_tile(T, i, j, k, cols, exclude_self),
                                     pairs, key, "pair", resume, progress,
                                     fingerprint={"train": T, "k": k, "exclude_self": exclude_self})
            results = [p for r in out for p in r]
        else:
            tiles = [(i, j) for i in range(Q.grid[0]) for j in range(T.grid[0])]
            results, ran = run_resumable(ex, lambda i, j: _query_tile(Q, T, i, j, k, cols),
                                         tiles, key, "tile", resume, progress,
                                         fingerprint={"train": T, "query": Q, "k": k})
        t3 = time.perf_counter()
        dist, ind = _assemble(results, Q, k)
        timings.update(shard=t1 - t0, columns=t2 - t1, tiles=t3 - t2,
                       merge=time.perf_counter() - t3, tasks=ran + T.grid[0],
                       constant_columns=int(cols.const_idx.size), peak_rss=_peak_rss(ex, jobs))
    return dist, ind


def _peak_rss(ex: Executor, jobs: int) -> int:
    """The largest per-task peak RSS among the jobs run since ``len(ex.history)`` was ``jobs``."""
    recs = [r for h in list(ex.history)[jobs:] for r in h[2]]
    return max((r.get("peak_rss") or 0 for r in recs), default=0)


def _assemble(results: list, Q: ShardedMatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    by_block: dict[int, list[Partial]] = {}
    for i, vals, idx in results:
        by_block.setdefault(i, []).append((vals, idx))
    dist = np.empty((Q.shape[0], k), dtype=np.float32)
    ind = np.empty((Q.shape[0], k), dtype=np.int64)
    b = Q.shard_sizes[0]
    for i, parts in by_block.items():
        vals, idx = tree_merge(parts, k)
        dist[i * b:i * b + len(vals)] = vals
        ind[i * b:i * b + len(vals)] = idx
    return dist, ind


def vote(labels: np.ndarray) -> np.ndarray:
    """Majority vote over each row of neighbour labels (nearest first).

    Ties between labels with equal counts go to the label whose first
    occurrence is nearest (for k=1 this is plain 1-NN).
    """
    labels = np.asarray(labels)
    out = np.empty(labels.shape[0], dtype=labels.dtype)
    for r, row in enumerate(labels):
        values, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = np.lexsort((first, -counts))[0]
        out[r] = values[best]
    return out


class KNeighborsClassifier:
    """k-NN classifier in scikit-learn's style, computed by shardwren.

    Parameters
    ----------
    n_neighbors : int
    executor : Executor, optional
    block_size : int, optional
        Rows per block when sharding array inputs.
    method : {"brute", "pruned", "auto"}
        See :func:`knn`. With "pruned" or "auto", :meth:`fit` builds the
        projection once and every query reuses it.

    Notes
    -----
    Majority vote; ties between labels go to the label of the nearest neighbour
    among the tied ones, so predictions are deterministic. Call :meth:`close`
    (or use the classifier as a context manager) to delete the data it sharded.
    """

    def __init__(self, n_neighbors: int = 1, executor: Executor | None = None,
                 block_size: int | None = None, method: str = "brute"):
        self.n_neighbors = n_neighbors
        self.executor = executor
        self.block_size = block_size
        self.method = method
        self._index = None
        self._inputs = None

    def fit(self, X: Any, y: Any) -> KNeighborsClassifier:
        y = np.asarray(y).ravel()
        n = X.shape[0]
        if len(y) != n:
            from ..errors import ShapeMismatchError

            raise ShapeMismatchError(f"X has {n} rows but y has {len(y)} labels")
        self.close()
        self._X, self.classes_, self._y = X, np.unique(y), y
        if self.method != "brute":
            from . import pruned
            from ..executor import default_executor

            if self.executor is None:
                self.executor = default_executor()
            self._inputs = Inputs(self.executor, self.block_size)
            self._X = self._inputs.matrix(X, "train")
            self._index = pruned.fit(self._X, self.executor, k=self.n_neighbors,
                                     allow_brute=self.method == "auto")
            self._inputs.adopt(self._index.Z)
        return self

    def close(self) -> None:
        """Delete what :meth:`fit` stored (sharded training data, projections)."""
        if self._inputs is not None:
            self._inputs.__exit__(None, None, None)
            self._inputs = None
            self._index = None

    def __enter__(self) -> KNeighborsClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kneighbors(self, X: Any = None, n_neighbors: int | None = None,
                   return_distance: bool = True):
        """Neighbours of X (default: the training set, leaving each point out)."""
        k = n_neighbors or self.n_neighbors
        kw = dict(executor=self.executor, block_size=self.block_size, method=self.method,
                  index=self._index)
        if X is None:
            d, i = knn(self._X, None, k, exclude_self=True, **kw)
        else:
            d, i = knn(self._X, X, k, **kw)
        return (np.sqrt(d), i) if return_distance else i

    def predict(self, X: Any) -> np.ndarray:
        idx = self.kneighbors(X, return_distance=False)
        return vote(self._y[idx])

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of :meth:`predict` on ``X`` against ``y``."""
        return float(np.mean(self.predict(X) == np.asarray(y).ravel()))
