"""Exact k-nearest neighbours that never materialise the distance matrix.

Each task takes one tile (a block of queries against a block of training rows),
estimates its squared distances with a float32 GEMM, keeps the few candidates that
the estimate cannot rule out, and gives those exact float64 distances; only each
query's k best leave the task, and the partial results of a query block are
merged in a tree. Ties go to the smaller training index.

Why the answer is exact, on any finite input
--------------------------------------------
Notation: ``u = 2**-24`` (float32's unit roundoff), ``gamma_n = n u / (1 - n u)``,
and ``D(q, t) = sum_i (q_i - t_i)**2`` over the float64 values of the data, the
quantity the float64 reference ranks by.

1. *Preparation* (one pass over the training set, in parallel): per column the
   minimum, maximum and mean ``mu`` in float64. Columns constant over the training
   set add the same amount ``c_q`` to every distance of a query, so they are
   dropped from the estimate (d' columns remain). The kept columns are centred on
   ``mu`` and scaled by a power of two ``s`` (exact) so that every training value
   lies in [-1, 1]: no float32 overflow, negligible underflow, and the cancellation
   of uncentred data (``|t|**2 - 2 q.t`` with huge norms) is gone.
2. *Estimate*: with ``x~ = fl32(s (x - mu))`` (error at most ``(u + 2 u64) |s (x - mu)|``
   per element, plus ``TINY32`` below the normal range), one float32 GEMM of
   ``[q~, 1, fl32(|q~|**2)]`` with ``[-2 t~, fl32(|t~|**2), 1]`` gives ``S``, and
   ``|S - s**2 (D - c_q)| <= E = C (|q~| + |t~|)**2 + A`` with
   ``C = 1.01 (2 e + e**2 + gamma_{d'+2} (1 + u) + 2 u)``, ``e = u + 2 u64``
   (input rounding moves the distance by at most ``(2 e + e**2)(|q~| + |t~|)**2``;
   the GEMM is a length ``d' + 2`` dot product whose absolute terms sum to at most
   ``(|q~| + |t~|)**2``; two norms are rounded to float32) and ``A`` an absolute
   term for underflow (about ``1e-42``). ``|q~|`` and ``|t~|`` come from float64.
3. *Certification*: let ``kth`` be the k-th smallest ``S`` of a query in the tile
   and ``E_q`` the bound with the block's largest ``|t~|``. Every training row whose
   exact distance is at most the tile's k-th smallest exact distance has
   ``S <= kth + 2 E_q``; the window also covers float64's own rounding of the exact
   distances (``gamma_{d+2}(u64)`` relative), so a row the float64 reference would rank
   among the k best, ties included, is always a candidate. Candidates are
   ``S <= ceil32(kth + window)``.
4. *Exact step*: every candidate's distance is computed in float64 as
   ``sum((q - t)**2)`` with numpy's pairwise summation: bitwise the reference's value.
   The tile keeps each query's k best (ties to the smaller index) and the merge of
   tiles does the same, so neighbours and distances equal the float64 reference's.

On centred data such as MNIST the window is a few thousandths of the gaps between
neighbours, so about k candidates per query and tile get exact distances. Data far
from the training set (queries offset by many training spreads) widens the window
and costs more exact distances, never exactness; a query too far away for float32
(``|q~| > 1e17``) has every row of the tile as a candidate.

Work-saving choices: constant columns dropped; one augmented GEMM per tile, in row
chunks that stay in cache for the selection passes; for train-vs-train each
unordered block pair is computed once and serves both blocks' rows.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from ..errors import InvalidParameterError, NonFiniteInputError, ShapeMismatchError
from ..executor import Executor
from ..futures import get_all_results
from ..matrix import ShardedMatrix
from ._cache import CACHE
from ._common import (
    Inputs,
    check_features,
    check_k,
    executor_for,
    new_token,
    run_resumable,
)
from .kernels import (
    TINY32,
    U32,
    U64,
    RunningTopK,
    best_k,
    ceil_f32,
    exact_sq_dist,
    gamma,
    gemm_nt,
    merge,
    narrow_integers,
    power_of_two_scale,
    subnormal_slack,
    topk_rows,
    tree_merge,
    vote,
    window_candidates,
)

__all__ = ["Prep", "knn", "merge", "topk_rows", "tree_merge", "vote"]

#: Names the arithmetic of the partial results a resumed job may reuse: parts saved
#: by another version of the algorithm (float32 distances, say) are refused.
ALGORITHM = "certified-float64-v1"
#: Query rows per GEMM chunk: a chunk of distances (rows x 4000 floats) stays in
#: cache for the selection passes that follow it.
CHUNK_ROWS = 1024
#: Queries whose scaled norm exceeds this are too far from the training set for
#: float32 estimates: every training row is their candidate.
WIDE = 1e17


class Prep(NamedTuple):
    """What the preparation pass learns about the training set (see the module docstring)."""

    kept: np.ndarray | None   # indices of varying columns; None = all
    const_idx: np.ndarray     # indices of constant columns
    const_val: np.ndarray     # their values (float64)
    mean: np.ndarray          # float64 mean of the kept columns
    scale: float              # power of two: s (x - mu) lies in [-1, 1] for training rows
    C: float                  # relative error constant of the estimate
    token: str = ""           # unique per call: keys worker caches


def error_constant(d_kept: int) -> float:
    """``C`` of the module docstring for ``d_kept`` columns in the GEMM."""
    e = U32 + 2 * U64
    return 1.01 * (2 * e + e * e + gamma(d_kept + 2) * (1 + U32) + 2 * U32)


def absolute_error(d_kept: int, norms: np.ndarray | float) -> np.ndarray | float:
    """``A`` of the module docstring: underflow in rounding and in the GEMM's products."""
    return (d_kept + 4) * (np.asarray(norms) + 1) * 2 * TINY32


def check_finite(X: np.ndarray, first_row: int, what: str) -> None:
    """Raise :class:`NonFiniteInputError` naming the first NaN or infinity in X."""
    if X.dtype.kind != "f" or np.isfinite(X).all():
        return
    r, c = np.argwhere(~np.isfinite(X))[0]
    value = "NaN" if np.isnan(X[r, c]) else ("infinity" if X[r, c] > 0 else "-infinity")
    raise NonFiniteInputError(
        f"{what} contains {value} at row {first_row + int(r)}, column {int(c)}; distances "
        "need finite values: drop or impute those rows first")


# --- worker-side tile tasks ----------------------------------------------------------------


def _centred(X: np.ndarray, prep: Prep, rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``fl32(s (x - mu))`` over the kept columns, and each row's norm in float64.

    In row chunks: float64 copies of a whole block are large fresh allocations,
    and first-touching memory is slow on virtual machines.
    """
    d = X.shape[1] if prep.kept is None else len(prep.kept)
    out = np.empty((len(X), d), dtype=np.float32)
    norms = np.empty(len(X))
    for r in range(0, len(X), rows):
        part = X[r:r + rows] if prep.kept is None else X[r:r + rows][:, prep.kept]
        c = np.subtract(part, prep.mean, dtype=np.float64)
        c *= prep.scale
        with np.errstate(over="ignore"):
            out[r:r + rows] = c
        c32 = out[r:r + rows].astype(np.float64)
        norms[r:r + rows] = np.sqrt(np.einsum("ij,ij->i", c32, c32))
    return out, norms


def _raw(M: ShardedMatrix, i: int, prep: Prep, what: str, block: np.ndarray | None = None):
    """Block i for exact distances, checked finite: as small integers when it holds only
    such (:func:`.kernels.narrow_integers`). One entry per block, whichever side of a
    tile asks (train-vs-train uses a block on both)."""
    def make():
        raw = M.get_block(i, 0, copy=False) if block is None else block
        check_finite(raw, i * M.shard_sizes[0], what)
        return narrow_integers(raw)

    return CACHE.get(("knn-raw", prep.token, M.store.url, M.key, i), make)


def _left(M: ShardedMatrix, i: int, prep: Prep, what: str):
    """Block i as GEMM rows ``[x~, 1, |x~|**2]``, their norms, and the constant columns'
    part of each row's distance."""
    def make():
        raw = M.get_block(i, 0, copy=False)
        _raw(M, i, prep, what, raw)  # the finiteness check, before anything is derived
        x, norms = _centred(raw, prep)
        form = np.empty((len(x), x.shape[1] + 2), dtype=np.float32)
        form[:, :-2] = x
        form[:, -2] = 1
        with np.errstate(over="ignore"):
            form[:, -1] = norms ** 2
        rest = np.zeros(len(x))
        if prep.const_idx.size:
            diff = np.subtract(raw[:, prep.const_idx], prep.const_val, dtype=np.float64)
            rest = np.einsum("ij,ij->i", diff, diff)
        return form, norms, rest

    return CACHE.get(("knn-left", prep.token, M.store.url, M.key, i), make)


def _right(T: ShardedMatrix, j: int, prep: Prep):
    """Training block j as GEMM rows ``[-2 t~, |t~|**2, 1]`` and the largest norm."""
    def make():
        raw = T.get_block(j, 0, copy=False)
        _raw(T, j, prep, "the training set", raw)
        t, norms = _centred(raw, prep)
        form = np.empty((len(t), t.shape[1] + 2), dtype=np.float32)
        np.multiply(t, -2, out=form[:, :-2])
        form[:, -2] = norms ** 2
        form[:, -1] = 1
        return form, norms, float(norms.max(initial=0.0))

    return CACHE.get(("knn-right", prep.token, T.store.url, T.key, j), make)


def _window(kth: np.ndarray, norms: np.ndarray, other_max: float, rest: np.ndarray,
            prep: Prep, d_kept: int) -> np.ndarray:
    """The float32 threshold ``ceil32(kth + window)`` of step 3 (module docstring)."""
    kth = kth.astype(np.float64)
    E = prep.C * (norms + other_max) ** 2 + absolute_error(d_kept, norms + other_max)
    # float64's rounding of the exact distances, measured on the k-th's upper bound.
    d_full = np.abs(kth) + E + norms ** 2 + prep.scale ** 2 * rest
    d_all = d_kept + len(prep.const_idx)
    thr = kth + 2 * E + 2 * gamma(d_all + 2, U64) * d_full
    thr += subnormal_slack(d_all) * prep.scale ** 2  # distances below float64's normals
    thr += 8 * U64 * np.abs(thr)  # the rounding of this float64 arithmetic itself
    out = ceil_f32(thr)
    out[~(norms <= WIDE)] = np.inf
    # A k-th distance that may overflow float64 (in real units) ties, at inf, with every
    # farther one: the reference then ranks them by index, so all are candidates.
    with np.errstate(over="ignore", under="ignore"):
        near_overflow = np.float64(np.finfo(np.float64).max / 4) * np.float64(prep.scale) ** 2
    out[thr >= near_overflow] = np.inf
    return out


def _wide_pairs(norms: np.ndarray, n_other: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of the rows too far away for float32 estimates (rare)."""
    wide = np.flatnonzero(~(norms <= WIDE))
    return np.repeat(wide, n_other), np.tile(np.arange(n_other), len(wide))


def _query_tile(Q: ShardedMatrix, T: ShardedMatrix, i: int, j: int, k: int, prep: Prep):
    """Exact partial k-NN of query block i against training block j."""
    q_form, q_norms, q_rest = _left(Q, i, prep, "the query set")
    t_form, _, t_max = _right(T, j, prep)
    q_raw, t_raw = _raw(Q, i, prep, "the query set"), _raw(T, j, prep, "the training set")
    d_kept = q_form.shape[1] - 2
    nq, nt = len(q_form), len(t_form)
    q_parts, t_parts = [], []
    for r0 in range(0, nq, CHUNK_ROWS):
        r1 = min(nq, r0 + CHUNK_ROWS)
        S = gemm_nt(q_form[r0:r1], t_form)
        rows, cols = window_candidates(
            S, k, lambda kth: _window(kth, q_norms[r0:r1], t_max, q_rest[r0:r1], prep, d_kept))
        q_parts.append(rows + r0)
        t_parts.append(cols)
    wq, wt = _wide_pairs(q_norms, nt)
    qs, ts = np.concatenate(q_parts + [wq]), np.concatenate(t_parts + [wt])
    if len(wq):
        keep = np.unique(qs * nt + ts)
        qs, ts = keep // nt, keep % nt
    ds = exact_sq_dist(q_raw, t_raw, qs, ts)
    vals, idx = best_k(qs, ts + j * T.shard_sizes[0], ds, nq, k)
    return i, vals, idx, len(ds)


def _pair_tile(T: ShardedMatrix, i: int, j: int, k: int, prep: Prep, exclude_self: bool):
    """Block pair (i, j), i <= j, of train-vs-train: exact partials for both blocks' rows."""
    a_form, a_norms, _ = _left(T, i, prep, "the training set")
    b_form, b_norms, b_max = _right(T, j, prep)
    a_raw, b_raw = _raw(T, i, prep, "the training set"), _raw(T, j, prep, "the training set")
    d_kept = a_form.shape[1] - 2
    na, nb = len(a_form), len(b_form)
    S = gemm_nt(a_form, b_form)
    diagonal = i == j and exclude_self
    if diagonal:
        np.fill_diagonal(S, np.inf)
    zeros_a, zeros_b = np.zeros(na), np.zeros(nb)
    rows, cols = window_candidates(
        S, k, lambda kth: _window(kth, a_norms, b_max, zeros_a, prep, d_kept))
    flat = [rows * nb + cols]
    if i != j:
        a_max = float(a_norms.max(initial=0.0))
        rows, cols = window_candidates(
            S, k, lambda kth: _window(kth, b_norms, a_max, zeros_b, prep, d_kept), axis=0)
        flat.append(rows * nb + cols)
    wa, wb = _wide_pairs(a_norms, nb)  # cannot happen for training rows; kept for symmetry
    pairs = np.unique(np.concatenate(flat + [wa * nb + wb]))
    ra, rb = pairs // nb, pairs % nb
    if diagonal:
        off = ra != rb
        ra, rb = ra[off], rb[off]
    ds = exact_sq_dist(a_raw, b_raw, ra, rb)
    bs = T.shard_sizes[0]
    out = [(i, *best_k(ra, rb + j * bs, ds, na, k), len(ds))]
    if i != j:
        out.append((j, *best_k(rb, ra + i * bs, ds, nb, k), 0))
    return out


# --- driver side -----------------------------------------------------------------------------


def _column_stats(T: ShardedMatrix, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = T.get_block(j, 0, copy=False)
    lo, hi = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        check_finite(X, j * T.shard_sizes[0], "the training set")
    return lo, hi, X.sum(axis=0, dtype=np.float64)


def prepare(T: ShardedMatrix, executor: Executor, progress: bool | None = None) -> Prep:
    """Step 1 of the module docstring: column ranges and means (one pass, in parallel)."""
    res = get_all_results(executor.map(lambda j: _column_stats(T, j), range(T.grid[0])),
                          progress=progress)
    lo = np.min([r[0] for r in res], axis=0)
    hi = np.max([r[1] for r in res], axis=0)
    mean = np.sum([r[2] for r in res], axis=0) / T.shape[0]
    const = lo == hi
    kept = np.flatnonzero(~const)
    mu = mean[kept]
    spread = np.maximum(hi[kept] - mu, mu - lo[kept]).max(initial=0.0)
    # A power of two, so that scaling is exact: s * spread < 1. At most 2**500, so that
    # s**2 stays a finite float64 (a spread below 2**-500 gets smaller scaled values,
    # which the absolute error terms cover).
    scale = power_of_two_scale(spread, highest=500)
    return Prep(None if not const.any() else kept, np.flatnonzero(const), lo[const], mu,
                scale, error_constant(len(kept)), new_token())


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
        Filled with seconds per phase, the number of tasks run and, on the brute
        path, ``exact_per_query``: how many exact float64 distances the
        certification needed per query (about k per tile on centred data).
    method : {"brute", "pruned", "auto"}
        ``"brute"``: every distance estimated by a float32 GEMM, certified and
        re-ranked in float64 (symmetry for train-vs-train).
        ``"pruned"``: provable lower bounds from a PCA projection skip most
        distances; survivors get exact float64 distances
        (:mod:`shardwren.linalg.pruned`). ``"auto"``: pruned when a sample shows
        the bounds pay off, brute otherwise.
    index : PrunedIndex, optional
        A projection built before by :func:`shardwren.linalg.pruned.fit` for this
        training set (the estimators of :mod:`shardwren.linalg.neighbors` keep one),
        reused across queries.
    resume : bool
        Keep each tile's partial result in the store under ``<key>/parts/``; a
        later call with the same ``key`` (after the driver died, say) reuses them
        and computes only the missing tiles (or, on the pruned path, query slices).
    key : str, optional
        The job's name in the store, needed with ``resume``.

    Returns
    -------
    distances : float64 array (m, k)
        Squared Euclidean distances, ascending, on every path and for every input
        dtype: ``sum((q - x)**2)`` evaluated in float64 from the data's float64 values,
        bitwise equal to the float64 reference (``((Q[:, None] - X[None]) ** 2).sum(-1)``
        with numpy). Integer and bool data up to 2**26 in magnitude (and uint8, int8,
        int16, float16, float32 data of any value) give exactly the real distances
        when they are below 2**53; int64 values beyond 2**53 are rounded to float64 as
        the reference rounds them.
    indices : int64 array (m, k)
        Training row indices of the k nearest, those of the float64 reference; ties
        go to the smaller index.

    Raises
    ------
    TypeError
        ``k`` is not an integer.
    NonFiniteInputError
        NaN or infinity in either set (a ``ValueError``), naming row and column.
    """
    k = check_k(k)
    symmetric = query is None or query is train
    if exclude_self and not symmetric:
        raise InvalidParameterError("exclude_self=True needs train-vs-train (leave query=None)")
    timings = timings if timings is not None else {}
    with executor_for(executor) as ex, Inputs(ex, block_size) as inputs:
        t0 = time.perf_counter()
        T = inputs.matrix(train, "train")
        Q = T if symmetric else inputs.matrix(query, "query")
        check_features(T, Q, "train and query")
        n_train = T.shape[0] - (1 if exclude_self else 0)
        if T.shape[0] == 0 or Q.shape[0] == 0:
            raise ShapeMismatchError(f"empty input: train has shape {T.shape}, query {Q.shape}")
        if k > n_train:
            raise InvalidParameterError(
                f"k={k} is larger than the {n_train} training points available")
        t1 = time.perf_counter()
        if method not in ("brute", "pruned", "auto"):
            raise InvalidParameterError(
                f"method must be 'brute', 'pruned' or 'auto', got {method!r}")
        if method != "brute":
            from . import pruned

            if index is None or index.train is not T and index.train.key != T.key:
                index = pruned.fit(T, ex, k=k, allow_brute=method == "auto", progress=progress)
            timings.update(fit=time.perf_counter() - t1, m=index.m, pruning=index.pruning,
                           why=index.info.get("reason"))
            if index.pruning:
                t2 = time.perf_counter()
                jobs = {j.job_id for j in ex.history}
                dist, ind, surv, ran = pruned.query(index, Q, k, ex, exclude_self, progress,
                                                    resume, key)
                timings.update(shard=t1 - t0, query=time.perf_counter() - t2, survivors=surv,
                               survivors_per_query=surv / Q.shape[0],
                               exact_per_query=surv / Q.shape[0], tasks=ran,
                               peak_rss=_peak_rss(ex, jobs))
                return dist, ind
        prep = prepare(T, ex, progress)
        t2 = time.perf_counter()
        jobs = {j.job_id for j in ex.history}
        top = RunningTopK(Q.shape[0], k)
        b = Q.shard_sizes[0]
        exact = 0

        def fold_tile(_: int, part) -> None:  # merged as it arrives: nothing kept per tile
            nonlocal exact
            i, vals, idx, e = part
            top.add(i * b, vals, idx)
            exact += e

        def fold_pair(n: int, parts) -> None:  # a pair tile answers for both its blocks
            for part in parts:
                fold_tile(n, part)

        if symmetric:
            pairs = [(i, j) for i in range(T.grid[0]) for j in range(i, T.grid[0])]
            _, ran = run_resumable(ex, lambda i, j: _pair_tile(T, i, j, k, prep, exclude_self),
                                   pairs, key, "pair", resume, progress,
                                   fingerprint={"train": T, "k": k, "exclude_self": exclude_self,
                                                "algorithm": ALGORITHM},
                                   fold=fold_pair)
        else:
            tiles = [(i, j) for i in range(Q.grid[0]) for j in range(T.grid[0])]
            _, ran = run_resumable(ex, lambda i, j: _query_tile(Q, T, i, j, k, prep),
                                   tiles, key, "tile", resume, progress,
                                   fingerprint={"train": T, "query": Q, "k": k,
                                                "algorithm": ALGORITHM}, fold=fold_tile)
        t3 = time.perf_counter()
        dist, ind = top.result()
        timings.update(shard=t1 - t0, columns=t2 - t1, tiles=t3 - t2,
                       merge=time.perf_counter() - t3, tasks=ran + T.grid[0],
                       exact_per_query=exact / Q.shape[0],
                       constant_columns=int(prep.const_idx.size),
                       peak_rss=_peak_rss(ex, jobs))
    return dist, ind


def _peak_rss(ex: Executor, before: set[str]) -> int:
    """The largest per-task peak RSS among the executor's jobs not in ``before``
    (the job ids of :attr:`Executor.history` when this call started)."""
    peak = 0
    for job in ex.history:
        if job.job_id in before:
            continue
        recs = job.records
        if recs:
            peak = max(peak, max((r.get("peak_rss") or 0 for r in recs), default=0))
        elif job.summary:  # records dropped to keep the history small: the summary stays
            peak = max(peak, job.summary.get("max_peak_rss") or 0)
    return peak
