"""Exact k-NN that skips the distances which provably cannot matter.

Project centred data onto the top ``m`` principal directions ``P`` of the training
set. With ``y = P x~``, residual ``r = sqrt(|x~|^2 - |y|^2)`` and ``s = |x~|``::

    |q - x|^2 >= |y_q - y_x|^2 + (r_q - r_x)^2 = |q~|^2 + |x~|^2 - 2 (y_q.y_x + r_q r_x)

A query's true k-th neighbour distance is at most ``tau``, the k-th smallest
exact distance among its candidates (the training points with the smallest
bounds); every training point whose bound exceeds ``tau`` cannot be a neighbour,
and only the rest (the survivors) get exact distances.

Exactness is proven, not hoped (u is float32's unit roundoff, gamma_n = nu / (1 - nu)):

* ``P`` is orthonormal in float64; ``s = |x~|`` and ``n = s^2`` are computed in
  float64. The projection is a float32 GEMM: ``y^ = fl32(fl32(x~) P32^T)`` has
  ``|y^ - y| <= eps s`` with ``eps = 1.001 sqrt(m) (gamma_d + 2u)``. Then
  ``y.y' <= y^.y^' + 3 eps s s'``, and the residual is replaced by the upper bound
  ``r+ = sqrt(max(n - |y^|^2, 0) + 3 eps n) >= r``, so
  ``|q - x|^2 >= n_q + n_x - 2 (y^_q.y^_x + r+_q r+_x) - 1.5 eps (s_q + s_x)^2``
  (using ``6 s s' <= 1.5 (s + s')^2``): the "bound" below;
* the bound's GEMM runs in float32 on augmented vectors whose dot product is the
  bound minus a margin (``C = C_gemm + 1.5 eps``)::

      a_q = [-2 y^_q, -2 r+_q, -2 C s_q, (1 - C) n_q, 1]
      b_x = [y^_x, r+_x, s_x, 1, (1 - C) n_x]
      a_q . b_x = bound - C_gemm (s_q + s_x)^2

* the float32 error of that dot product is at most
  ``(gamma_{m+4} + 2u)(1 + 6 eps)(1 + C)(s_q + s_x)^2`` (rounding of the inputs to
  float32, then a length-(m+4) dot product, with ``|(y^, r+)|^2 <= (1 + 6 eps) n``
  and Cauchy-Schwarz), and the float64 steps add at most ``1e-8 s_q s_x``, so
  ``C_gemm = 2 (gamma_{m+4} + 2u) + 1e-7`` makes the computed value a true lower bound;
* everything above is homogeneous of degree 2, so it holds in *scaled units*: the
  centred data is multiplied by a power of two ``sigma`` (exact) that brings the
  sample's values into [-1, 1], and bounds are compared with ``sigma**2 tau``. Then
  float32 cannot overflow for any row with ``s <= 1e15`` (scaled); a row beyond that
  (an outlier, or a query far from the training set) gets the bound ``-inf``, so
  it is always a candidate. Float32 underflow adds absolute errors below
  ``(m + d + 8) 2**-150`` times values at most ``max(1, s_q, s_x)``: relative to
  ``(s_q + s_x)**2`` they are inside the ``1e-7`` slack of ``C_gemm``, and the rest is
  covered by subtracting ``1e-30`` from every bound;
* exact distances are computed in float64 as ``sum((q - x)^2)`` with the float64
  reference's own arithmetic (:func:`shardwren.linalg.kernels.exact_sq_dist`), and
  ties go to the smaller index: neighbours and distances are the reference's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..executor import Executor
from ..matrix import ShardedMatrix
from ._cache import CACHE, scratch
from ._common import new_token, run_resumable
from .kernels import (
    GROUP,
    PAD_INDEX,
    U32,
    RunningTopK,
    below,
    best_k,
    ceil_f32,
    exact_sq_dist,
    gamma,
    gemm,
    group_min,
    narrow_integers,
    power_of_two_scale,
    sq_norms,
    subnormal_slack,
    takes_integer_path,
)
from .knn import check_finite

M_CHOICES = (16, 32, 64, 96, 128, 192, 256)
#: Costs in float32 GEMM multiply-add equivalents (8 ps each at the sgemm limit),
#: measured per phase on the development machine: an exact float64 distance (a
#: gather of two rows) costs about 120 per feature (1 ns); the passes over a bound
#: tile (argmin, compare, flat scan) about 40 per element (0.3 ns).
GATHER_PENALTY = 120.0
#: ... and on 8- and 16-bit integer rows (the kernels' integer path). Measured as a
#: query task spends them (distances, then the fold into each query's best): 0.99 ns
#: per feature against float64's 2.32 ns, with a thin-GEMM multiply-add at 19 ps.
GATHER_PENALTY_INT = 52.0
PASS_COST = 40.0
#: "auto" prunes when the model's cost is at most this fraction of brute force's.
#: The model tracks the query phase (MNIST: 0.31 modelled, 0.31 measured; Fashion-
#: MNIST: 0.52 modelled from a pessimistic sample, 0.43 measured); the margin
#: covers the fit, which it leaves out.
AUTO_THRESHOLD = 0.8
#: ... and gives up after the quick look at a quarter of the sample above this.
QUICK_REJECT = 3.0
#: Rows whose scaled centred norm exceeds this are too far out for float32 bounds:
#: their bound is -inf, so they are always candidates (exact, just not pruned).
WIDE = 1e15
#: Absolute slack for float32 underflow in scaled units (see the module docstring).
UNDERFLOW_SLACK = 1e-30


def projection_error(m: int, d: int) -> float:
    """``eps`` of the module docstring: the float32 projection of ``d`` features onto
    ``m`` directions is off by at most ``eps |x~|`` (Euclidean norm)."""
    return 1.001 * np.sqrt(m) * (gamma(d) + 2 * U32)


def margin_constant(m: int, d: int) -> float:
    """The ``C`` of the module docstring for ``d`` features projected onto ``m`` directions."""
    return 2 * (gamma(m + 4) + 2 * U32) + 1e-7 + 1.5 * projection_error(m, d)


@dataclass
class PrunedIndex:
    """What ``fit`` builds once per training set and every query reuses."""

    train: ShardedMatrix
    mean: np.ndarray          # (d,) float64
    P: np.ndarray             # (m, d) float64, orthonormal rows; m = 0: brute force wins
    C: float
    info: dict[str, Any] = field(default_factory=dict)
    token: str = field(default_factory=new_token)  # keys worker caches for this index
    scale: float = 1.0        # power of two applied to centred data (module docstring)

    @property
    def m(self) -> int:
        return self.P.shape[0]

    @property
    def pruning(self) -> bool:
        """False when :func:`fit` found that brute force is cheaper for this data."""
        return self.m > 0


def _project(X: np.ndarray, mean: np.ndarray, P: np.ndarray, scale: float, rows: int = 256):
    """``(y^, r+, s, n)`` of the module docstring for every row of X, in scaled units.

    ``y^`` comes from a float32 GEMM (four times a float64 one's speed), the
    norms from float64. Works through X in row chunks small enough to stay in
    cache, in two reused buffers: float64 copies of a whole block are large fresh
    allocations, and first-touching memory is slow on virtual machines. Rows beyond
    :data:`WIDE` get non-finite values here and are made always-candidates by the
    callers.
    """
    m, d = P.shape
    P32T = np.ascontiguousarray(P.T, dtype=np.float32)
    y = np.empty((len(X), m), dtype=np.float32)
    n = np.empty(len(X))
    c64 = scratch((min(rows, max(len(X), 1)), d), np.float64, "project64")
    c32 = scratch((min(rows, max(len(X), 1)), d), np.float32, "project32")
    for i in range(0, len(X), rows):
        k = len(X[i:i + rows])
        xc, x32 = c64[:k], c32[:k]
        np.subtract(X[i:i + rows], mean, out=xc)
        xc *= scale
        n[i:i + k] = np.einsum("ij,ij->i", xc, xc)
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(x32, xc, casting="same_kind")
            np.matmul(x32, P32T, out=y[i:i + k])
    y64 = y.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.sqrt(np.maximum(n - sq_norms(y64), 0) + 3 * projection_error(m, d) * n)
    return y64, r, np.sqrt(n), n


def augment_query(X: np.ndarray, mean: np.ndarray, P: np.ndarray, C: float,
                   scale: float) -> np.ndarray:
    """``a_q`` of the module docstring for every row of X (float32)."""
    y, r, s, n = _project(X, mean, P, scale)
    a = np.empty((len(X), P.shape[0] + 4), dtype=np.float32)
    a[:, :-4] = -2 * y
    a[:, -4] = -2 * r
    a[:, -3] = -2 * C * s
    a[:, -2] = (1 - C) * n - UNDERFLOW_SLACK
    a[:, -1] = 1
    wide = ~(s <= WIDE)
    if wide.any():  # bound -inf against every row: all are candidates
        a[wide] = 0
        a[wide, -2] = -np.inf
        a[wide, -1] = 1
    return a


def augment_train(X: np.ndarray, mean: np.ndarray, P: np.ndarray, C: float,
                   scale: float) -> np.ndarray:
    """``b_x`` of the module docstring for every row of X (float32)."""
    y, r, s, n = _project(X, mean, P, scale)
    b = np.empty((len(X), P.shape[0] + 4), dtype=np.float32)
    b[:, :-4] = y
    b[:, -4] = r
    b[:, -3] = s
    b[:, -2] = 1
    b[:, -1] = (1 - C) * n
    wide = ~(s <= WIDE)
    if wide.any():  # bound -inf for every query: always a candidate
        b[wide] = 0
        b[wide, -2] = 1
        b[wide, -1] = -np.inf
    return b


# --- fit ------------------------------------------------------------------------------------


def _centred_extent(sample: np.ndarray, mean: np.ndarray) -> float:
    """``max |x - mean|`` over the sample (inf when that overflows float64)."""
    if not len(sample):
        return 0.0
    # max |x - mean| per column is at the column's max or min (subtracting a constant,
    # rounded, is monotonic): no full-size float64 temporaries, which cost first-touch
    # time on virtual machines.
    with np.errstate(over="ignore"):
        hi = np.subtract(sample.max(axis=0), mean, dtype=np.float64)
        lo = np.subtract(mean, sample.min(axis=0), dtype=np.float64)
    return float(max(hi.max(initial=0.0), lo.max(initial=0.0)))


def _column_means(X: np.ndarray) -> np.ndarray:
    """Column means in float64, summed at a power-of-two scale (exact) so that values
    near float64's largest do not overflow the sum."""
    if not X.size:
        return np.zeros(X.shape[1])
    big = max(float(np.abs(X.max(axis=0)).max()), float(np.abs(X.min(axis=0)).max()))
    if big * len(X) < np.finfo(np.float64).max / 4:  # no overflow: no float64 copy either
        return X.mean(axis=0, dtype=np.float64)
    s = power_of_two_scale(big)
    with np.errstate(under="ignore"):
        return np.multiply(X, s, dtype=np.float64).mean(axis=0) / s


def _scale_for(sample: np.ndarray, mean: np.ndarray) -> float:
    """A power of two bringing the sample's centred values into [-1, 1] (within 2**+-500,
    so that its square stays a finite float64)."""
    return power_of_two_scale(_centred_extent(sample, mean), -500, 500)


def _sample_rows(T: ShardedMatrix, rows: int, seed: int = 0) -> np.ndarray:
    """About ``rows`` training rows, in random order (an estimate's input): float32
    when the data converts to it exactly (float32, float16, 8- and 16-bit integers),
    float64 otherwise.

    Rows are gathered from (mapped) blocks spread over the matrix, so the only
    new memory is the sample itself.
    """
    g = T.grid[0]
    rng = np.random.default_rng(seed)
    # at least two blocks, so that data stored in some order still gives a fair sample
    take = max(1, min(g, max(2, -(-rows // T.shard_sizes[0]))))
    chosen = sorted(int(j) for j in rng.choice(g, take, replace=False))
    blocks = [T.get_block(j, 0, copy=False) for j in chosen]
    for j, b in zip(chosen, blocks):
        check_finite(b, j * T.shard_sizes[0], "the training set")
    total = sum(len(b) for b in blocks)
    pick = rng.permutation(total)[:rows]
    exact32 = np.can_cast(blocks[0].dtype, np.float32, "safe")
    out = np.empty((len(pick), T.shape[1]), dtype=np.float32 if exact32 else np.float64)
    start = 0
    for b in blocks:
        mine = np.flatnonzero((pick >= start) & (pick < start + len(b)))
        out[mine] = b[pick[mine] - start]
        start += len(b)
    return out


def m_choices(d: int) -> list[int]:
    """The projection sizes :func:`choose_m` weighs for ``d`` features (at most half of d:
    beyond that the bound costs as much as the distance)."""
    return [m for m in M_CHOICES if m <= d // 2] or [max(1, d // 4)]


def choose_m(sample: np.ndarray, mean: np.ndarray, P_full: np.ndarray, n_train: int, k: int,
             queries: int = 96, blocks: int = 1, gather_penalty: float = GATHER_PENALTY
             ) -> tuple[int | None, dict[str, Any]]:
    """Pick the projection size from a sample, or ``None`` when brute force is cheaper.

    The sample's first ``queries`` rows act as queries against the rest; their
    exact k-th neighbour distance there (an over-estimate of the one in the full
    set, so the estimate is conservative) gives each m's survivor rate. Per
    query, the modelled cost is the bound GEMM, the passes over its tiles, exact
    distances for the survivors and for up to k candidates per training block
    (``blocks`` of them; each costs ``gather_penalty`` GEMM units per feature),
    against brute force's GEMM.
    """
    d = sample.shape[1]
    # An estimate, not part of the exactness argument: float32 is plenty.
    sample = sample.astype(np.float32, copy=False)
    mean, P_full = mean.astype(np.float32), P_full.astype(np.float32)
    q, rest = sample[:queries], sample[queries:]
    if len(rest) < 4 * k:
        return None, {"reason": "training set too small to prune"}
    D = (sq_norms(q)[:, None] + sq_norms(rest)[None, :]
         - 2 * q @ rest.T)
    tau = np.partition(D, k - 1, axis=1)[:, k - 1]
    # A query task's tau comes from more rows than the sample has: the sample blocks of
    # the first phase (``effective_rows``). Nearest-neighbour
    # distances shrink as a power of the rows searched; the power is read off the
    # sample itself (tau over a quarter of it against the whole), so data whose
    # neighbours do not come closer (noise in high dimension) keeps its tau.
    quarter = np.partition(D[:, : max(k, len(rest) // 4)], k - 1, axis=1)[:, k - 1]
    lo, hi = float(np.median(tau)), float(np.median(quarter))
    power = float(np.clip(np.log(hi / lo) / np.log(4), 0.0, 1.0)) if lo > 0 and hi > lo else 0.0
    grow = max(1.0, effective_rows(n_train, blocks) / len(rest))
    tau = tau * grow ** -power
    brute = n_train * d
    costs, rates = {}, {}
    choices = m_choices(d)
    # Project once with the largest m; smaller projections are its first columns.
    qc, rc = q - mean, rest - mean
    yq, yr = qc @ P_full[:max(choices)].T, rc @ P_full[:max(choices)].T
    nq, nr = sq_norms(qc), sq_norms(rc)
    for m in choices:
        rq = np.sqrt(np.maximum(nq - sq_norms(yq[:, :m]), 0))
        rr = np.sqrt(np.maximum(nr - sq_norms(yr[:, :m]), 0))
        lb = nq[:, None] + nr[None, :] - 2 * (yq[:, :m] @ yr[:, :m].T + rq[:, None] * rr[None, :])
        rate = float(np.mean(lb <= tau[:, None]))
        rates[m] = rate
        costs[m] = (n_train * (m + 4) + PASS_COST * n_train
                    + (rate * n_train + k * blocks) * d * gather_penalty)
    best = min(costs, key=lambda m: costs[m])
    info: dict[str, Any] = {"survivor_rate": rates, "tau_power": power,
                            "cost_vs_brute": {m: c / brute for m, c in costs.items()}}
    info["beats_brute"] = costs[best] <= AUTO_THRESHOLD * brute
    if not info["beats_brute"]:
        info["reason"] = (f"bounds too weak on this data (best m={best} would cost "
                          f"{costs[best] / brute:.2f}x brute force)")
    return best, info


def _orthonormal(Y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of Y's columns: Cholesky QR (two small products),
    Householder QR when Y is too ill-conditioned for it."""
    try:
        L = np.linalg.cholesky(Y.T @ Y)
        Q = np.linalg.solve(L, Y.T).T
        # Near-singular Y can pass the factorisation and still lose orthogonality.
        if np.abs(Q.T @ Q - np.eye(Y.shape[1])).max() < 1e-8:
            return Q
    except np.linalg.LinAlgError:
        pass
    return np.linalg.qr(Y)[0]


def _principal(sample: np.ndarray, mean: np.ndarray, d: int, m: int | None,
               power_iters: int = 3) -> np.ndarray:
    """Top principal directions of the sample, largest variance first (rows).

    Randomized subspace iteration on the d x d covariance (Halko, Martinsson and
    Tropp 2011): a few products with a (top + 16)-column block, then a small
    eigenproblem. It captures within 0.1% of the variance the exact top
    directions do on MNIST and Fashion-MNIST (measured: 0.03% and 0.06% less),
    in a fraction of a dense eigensolver's time (which is slowest on the flat
    spectra of data that will not prune anyway).
    """
    top = min(d, max(m_choices(d)) if m is None else m)
    Xc32 = np.subtract(sample, mean.astype(np.float32), dtype=np.float32)
    G = (Xc32.T @ Xc32).astype(np.float64)
    width = top + 16
    if width >= d:
        _, V = np.linalg.eigh(G)
        V = V[:, ::-1][:, :top]
    else:
        Y = G @ np.random.default_rng(0).standard_normal((d, width))
        for _ in range(power_iters):
            Y = G @ _orthonormal(Y)
        Y = _orthonormal(Y)
        _, U = np.linalg.eigh(Y.T @ G @ Y)
        V = Y @ U[:, ::-1][:, :top]
    # Any orthonormal P keeps the bound valid; a float64 QR makes the rows
    # orthonormal to float64 precision, which is what the margin's derivation assumes.
    Q, _ = np.linalg.qr(V)
    return np.ascontiguousarray(Q.T)


def fit(T: ShardedMatrix, executor: Executor, k: int = 1, m: int | None = None,
        sample_rows: int = 8000, allow_brute: bool = False,
        progress: bool | None = None) -> PrunedIndex:
    """Build the projection (PCA of a sample) and the projected training set, once.

    With ``m=None`` the size is chosen from the data (a sampled survivor rate and
    a cost model). With ``allow_brute`` and no size that beats brute force, the
    index has ``pruning`` False and ``info["reason"]`` says why. Only a sample is
    read: queries project each training block as they read it (once per job).
    """
    t0 = time.perf_counter()
    n, d = T.shape
    sample = _sample_rows(T, sample_rows)
    # Exact distances take the integer path on data of small integers (when the
    # queries are such too, which the fit cannot know: it assumes they are like it).
    narrow = narrow_integers(sample).dtype
    penalty = GATHER_PENALTY_INT if takes_integer_path(narrow, narrow, d) else GATHER_PENALTY
    # Any shift keeps the bound valid; the sample's mean is as good as the full one.
    mean = _column_means(sample)
    scale = _scale_for(sample, mean)
    sample, smean = _for_estimates(sample, mean, scale)
    t_sample = time.perf_counter()
    info: dict[str, Any] = {}
    if m is None and allow_brute:
        # A quarter of the sample is enough to reject data where bounds are hopeless
        # (random data models at hundreds of times brute force), before the full fit.
        quick = sample[: max(len(sample) // 4, 4 * k + 256)]
        qmean = _column_means(quick)
        qm, qinfo = choose_m(quick, qmean, _principal(quick, qmean, d, None), n, k,
                             blocks=T.grid[0], gather_penalty=penalty)
        if qm is not None and min(qinfo["cost_vs_brute"].values()) > QUICK_REJECT:
            qinfo.update(fit_s=time.perf_counter() - t0, quick_reject=True)
            return PrunedIndex(T, mean, np.zeros((0, d)), 0.0, qinfo)
    P_full = _principal(sample, smean, d, m)
    t_pca = time.perf_counter()
    if m is None:
        m, info = choose_m(sample, smean, P_full, n, k, blocks=T.grid[0], gather_penalty=penalty)
    info.update(gather_penalty=penalty, sample_s=t_sample - t0, pca_s=t_pca - t_sample,
                choose_s=time.perf_counter() - t_pca)
    if m is not None and allow_brute and not info.get("beats_brute", True):
        m = None
    if m is None:
        info["fit_s"] = time.perf_counter() - t0
        return PrunedIndex(T, mean, P_full[:0], 0.0, info)
    P = np.ascontiguousarray(P_full[:m])
    info.update(m=m, fit_s=time.perf_counter() - t0)
    return PrunedIndex(T, mean, P, margin_constant(m, d), info, new_token(), scale)


def _for_estimates(sample: np.ndarray, mean: np.ndarray,
                   scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The sample as the float32 estimates (PCA, survivor rates) can use it, and its mean.

    Those estimates work in float32 on the sample minus its mean. Data that float32
    holds well is passed as it is (no fresh copy); float64 data, or data whose spread
    is extreme, is centred in float64 and scaled first, so float32 neither overflows
    nor loses the spread to a large offset. (Estimates only: exactness never depends
    on them.)
    """
    spread = 1.0 / scale
    if sample.dtype == np.float32 and 1e-10 < spread < 1e10:
        return sample, mean
    # Its own scale, not clipped like the bounds' one: values near float64's limits
    # (1e300) still come into float32's range. Scaled before the subtraction, which
    # could overflow otherwise.
    est = power_of_two_scale(_centred_extent(sample, mean))
    with np.errstate(under="ignore"):
        out = np.multiply(sample, est, dtype=np.float64)
        out -= mean * est
    return out.astype(np.float32), np.zeros_like(mean)


# --- queries --------------------------------------------------------------------------------
#
# Plan (one pass over the training data per query group, whatever N):
#
# 1. tau0: each query's exact k nearest among a few training blocks spread over the
#    set (the sample blocks), by the same kernel started with tau = inf. Their
#    k-th distance is an upper bound on the true k-th neighbour distance.
# 2. ranges: the other training blocks, in contiguous ranges, one task per (query
#    group, range). A task reads each of its blocks once, projects it (b_x), and for
#    every query of the group computes the bounds by one GEMM per query chunk; rows
#    whose bound is at most the query's running tau get exact distances, which
#    lower tau. Every true neighbour has bound <= distance <= tau at every moment,
#    so it is always a candidate; the task returns each query's k best (exact).
# 3. the driver merges the partial results as they arrive (ties to the smaller
#    index): its memory is the queries' k best, independent of N.

#: Rows per query chunk in a task's bound GEMM: the bound tile (chunk x block) stays
#: a few MB.
QUERY_CHUNK = 1024
#: Queries per group: every training block is read once per group.
GROUP_ROWS = 20000
#: Training blocks per range task (fewer when needed to keep the workers busy).
RANGE_BLOCKS = 16


def _queries(index: PrunedIndex, Q: ShardedMatrix, q0: int, q1: int):
    """Query rows q0:q1: their a_q (float32), raw rows, and the worker's cache of both."""
    def make():
        bq = Q.shard_sizes[0]
        raw = np.concatenate([Q.get_block(i, 0, copy=False)[max(q0 - i * bq, 0):q1 - i * bq]
                              for i in range(q0 // bq, -(-q1 // bq))])
        check_finite(raw, q0, "the query set")
        return (augment_query(raw, index.mean, index.P, index.C, index.scale),
                narrow_integers(raw))

    return CACHE.get(("pruned-q", index.token, Q.store.url, Q.key, q0, q1), make)


def _train_block(index: PrunedIndex, j: int):
    """Training block j: its b_x rows as columns (projected here, as it is read;
    transposed for the GEMM) and the raw block (as small integers when it holds
    only such: :func:`.kernels.narrow_integers`)."""
    def make():
        raw = index.train.get_block(j, 0, copy=False)
        check_finite(raw, j * index.train.shard_sizes[0], "the training set")
        z = augment_train(raw, index.mean, index.P, index.C, index.scale)
        return np.ascontiguousarray(z.T), narrow_integers(raw)

    return CACHE.get(("pruned-t", index.token, j), make)


def _range_task(index: PrunedIndex, Q: ShardedMatrix, q0: int, q1: int, blocks: list[int],
                k: int, tau0: np.ndarray | None, exclude_self: bool):
    """Exact k-NN of query rows q0:q1 among the training ``blocks`` (module notes above).

    Returns ``(q0, distances (n, k), indices (n, k), exact distances computed)``;
    queries with fewer than k neighbours within ``tau0`` get ``(inf, PAD_INDEX)`` pads.
    """
    a, q_raw = _queries(index, Q, q0, q1)
    n = q1 - q0
    s2 = index.scale ** 2  # bounds are in scaled units, exact distances are not
    # A row whose distance rounds (below float64's normals) to the k-th's may tie with it.
    slack = subnormal_slack(index.train.shape[1])
    tau = np.full(n, np.inf) if tau0 is None else np.array(tau0, dtype=np.float64)
    best_d = np.full((n, k), np.inf)
    best_i = np.full((n, k), PAD_INDEX, dtype=np.int64)
    bt = index.train.shard_sizes[0]
    exact = 0
    for j in blocks:
        zT, raw = _train_block(index, j)
        lo, nb = j * bt, zT.shape[1]
        for c0 in range(0, n, QUERY_CHUNK):
            c1 = min(n, c0 + QUERY_CHUNK)
            lb = gemm(a[c0:c1], zT)
            if exclude_self:
                own = np.arange(q0 + c0, q0 + c1)
                mine = (own >= lo) & (own < lo + nb)
                lb[np.flatnonzero(mine), own[mine] - lo] = np.inf
            gm = group_min(lb, 1)
            # First the block's most promising rows (k smallest group minima): their
            # exact distances lower tau before the threshold is applied.
            rows, cols = promising(lb, gm, k, ceil_f32((tau[c0:c1] + slack) * s2))
            exact += fold_exact(rows, cols, c0, lo, q_raw, raw, best_d, best_i, tau, k,
                             exclude_self, q0)
            done = rows * nb + cols
            # Then every row whose bound is at most the (lowered) tau.
            rows, cols = below(lb, ceil_f32((tau[c0:c1] + slack) * s2), gm=gm)
            if len(done):
                keep = ~np.isin(rows * nb + cols, done)
                rows, cols = rows[keep], cols[keep]
            exact += fold_exact(rows, cols, c0, lo, q_raw, raw, best_d, best_i, tau, k,
                             exclude_self, q0)
    return q0, best_d, best_i, exact


def promising(lb: np.ndarray, gm: tuple[np.ndarray, int], k: int,
               thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the entries behind its k smallest group minima that are under ``thr``:
    k distinct rows with small bounds, found without another pass over ``lb``."""
    g, W = gm
    if W == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    kk = min(k, W)
    if kk == 1:
        top = np.argmin(g, axis=1)[:, None]
    else:
        top = np.argpartition(g, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(g, top, 1)
    rows, j = np.nonzero(vals < thr[:, None])
    w = top[rows, j]
    members = w[:, None] + W * np.arange(GROUP)[None, :]
    cols = members[np.arange(len(w)), np.argmin(lb[rows[:, None], members], axis=1)]
    return rows, cols


def fold_exact(rows: np.ndarray, cols: np.ndarray, c0: int, lo: int, q_raw: np.ndarray,
            raw: np.ndarray, best_d: np.ndarray, best_i: np.ndarray, tau: np.ndarray, k: int,
            exclude_self: bool, q0: int) -> int:
    """Exact distances for the candidate pairs (chunk row, block row); fold them into
    each query's k best and lower its tau. Returns how many were computed."""
    if exclude_self:  # an infinite tau admits the infinite bounds of the own rows too
        keep = rows + (q0 + c0) != cols + lo
        rows, cols = rows[keep], cols[keep]
    if not len(rows):
        return 0
    ds = exact_sq_dist(q_raw, raw, rows + c0, cols)
    touched = np.unique(rows)
    local = np.searchsorted(touched, rows)
    t_glob = touched + c0
    qs = np.concatenate([np.repeat(np.arange(len(touched)), k), local])
    xs = np.concatenate([best_i[t_glob].ravel(), cols + lo])
    dd = np.concatenate([best_d[t_glob].ravel(), ds])
    best_d[t_glob], best_i[t_glob] = best_k(qs, xs, dd, len(touched), k)
    tau[t_glob] = np.minimum(tau[t_glob], best_d[t_glob, -1])
    return len(ds)


def sample_block_count(n_blocks: int) -> int:
    """Training blocks the first phase of a query reads (about half the square root)."""
    return min(n_blocks, max(1, round(n_blocks ** 0.5 / 2)))


def effective_rows(n_train: int, n_blocks: int) -> float:
    """How many training rows the tau a range task starts from comes from: the first
    phase's sample blocks. (Its tau falls as it goes, but the survivors of its first
    blocks, under the largest tau, are most of its exact distances.)"""
    return min(n_train, sample_block_count(n_blocks) * n_train / max(1, n_blocks))


def _spread(n_blocks: int, take: int) -> list[int]:
    """``take`` block indices spread evenly over ``range(n_blocks)``."""
    return sorted({int(round(x)) for x in np.linspace(0, n_blocks - 1, take)})


def plan_query(index: PrunedIndex, Q: ShardedMatrix, parallelism: int):
    """The two maps of a query: (sample-phase tasks, range-phase tasks), as
    ``(q0, q1, blocks)`` items, and the sample blocks. Pure: no I/O."""
    nt = index.train.grid[0]
    nq = Q.shape[0]
    groups = [(g, min(nq, g + GROUP_ROWS)) for g in range(0, nq, GROUP_ROWS)]
    sample = _spread(nt, sample_block_count(nt))
    rest = [j for j in range(nt) if j not in set(sample)]
    # Phase 1 is split over queries so that every worker has a share of it.
    splits = max(1, min(parallelism, -(-nq // 256)))
    phase1 = [(q0 + (q1 - q0) * s // splits, q0 + (q1 - q0) * (s + 1) // splits, sample)
              for q0, q1 in groups for s in range(splits)]
    per = max(1, min(RANGE_BLOCKS, -(-len(rest) // max(1, 2 * parallelism // len(groups)))))
    ranges = [rest[r:r + per] for r in range(0, len(rest), per)]
    phase2 = [(q0, q1, blocks) for q0, q1 in groups for blocks in ranges]
    return phase1, phase2, sample


def query(index: PrunedIndex, Q: ShardedMatrix, k: int, executor: Executor,
          exclude_self: bool = False, progress: bool | None = None, resume: bool = False,
          key: str | None = None):
    """Exact k-NN of every row of Q using the index (plan above).

    Returns (distances, indices, exact distances computed, tasks run). With
    ``resume``, each task's answer is kept under ``<key>/parts/`` and reused by a
    later call: the answers are exact, so they do not depend on the projection
    that found them.
    """
    phase1, phase2, _ = plan_query(index, Q, executor.parallelism)
    fingerprint = {"train": index.train, "query": Q, "k": k, "exclude_self": exclude_self,
                   "algorithm": "pruned-ranges-v1"}
    top = RunningTopK(Q.shape[0], k)
    exact = 0

    def fold(_: int, part) -> None:  # merged as it arrives: nothing kept per task
        nonlocal exact
        q0, d, x, e = part
        top.add(q0, d, x)
        exact += e

    _, ran1 = run_resumable(
        executor, lambda q0, q1, blocks: _range_task(index, Q, q0, q1, blocks, k, None,
                                                     exclude_self),
        phase1, key, "pruned-sample", resume, progress, fingerprint=fingerprint, fold=fold)
    tau0 = top.dist[:, -1].copy()
    _, ran2 = run_resumable(
        executor, lambda q0, q1, blocks: _range_task(index, Q, q0, q1, blocks, k,
                                                     tau0[q0:q1], exclude_self),
        phase2, key, "pruned-range", resume, progress, fingerprint=fingerprint, fold=fold)
    dist, ind = top.result("pruned k-NN")
    return dist, ind, exact, ran1 + ran2
