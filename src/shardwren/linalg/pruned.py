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
from ..futures import get_all_results
from ..matrix import ShardedMatrix
from ._cache import CACHE
from ._common import new_token, run_resumable
from .kernels import U32, ceil_f32, exact_sq_dist, gamma, gemm_nt, sq_norms
from .knn import check_finite

M_CHOICES = (16, 32, 64, 128)
#: Costs in float32 GEMM multiply-add equivalents (8 ps each at the sgemm limit),
#: measured per phase on the development machine: an exact float64 distance (a
#: gather of two rows) costs about 120 per feature (1 ns); the passes over a bound
#: tile (argmin, compare, flat scan) about 40 per element (0.3 ns).
GATHER_PENALTY = 120.0
PASS_COST = 40.0
#: "auto" prunes when the model's cost is at most this fraction of brute force's.
#: The model tracks the query phase (MNIST: 0.31 modelled, 0.31 measured; Fashion-
#: MNIST: 0.52 modelled from a pessimistic sample, 0.43 measured); the margin
#: covers the fit, which it leaves out.
AUTO_THRESHOLD = 0.8
#: ... and gives up after the quick look at a quarter of the sample above this.
QUICK_REJECT = 3.0
#: Query rows per task: small enough to balance the workers, large enough for GEMMs.
QUERY_ROWS = 1000
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
    P: np.ndarray             # (m, d) float64, orthonormal rows
    Z: ShardedMatrix | None   # (n, m + 4) float32: b_x for every training row
    C: float
    info: dict[str, Any] = field(default_factory=dict)
    token: str = field(default_factory=new_token)  # keys worker caches for this index
    scale: float = 1.0        # power of two applied to centred data (module docstring)

    @property
    def m(self) -> int:
        return self.P.shape[0]


def _project(X: np.ndarray, mean: np.ndarray, P: np.ndarray, scale: float, rows: int = 1024):
    """``(y^, r+, s, n)`` of the module docstring for every row of X, in scaled units.

    ``y^`` comes from a float32 GEMM (four times a float64 one's speed), the
    norms from float64. Works through X in row chunks: float64 copies of a whole
    block are large fresh allocations, and first-touching memory is slow on
    virtual machines. Rows beyond :data:`WIDE` get non-finite values here and are
    made always-candidates by the callers.
    """
    m, d = P.shape
    P32 = P.astype(np.float32)
    y = np.empty((len(X), m), dtype=np.float32)
    n = np.empty(len(X))
    for i in range(0, len(X), rows):
        Xc = np.subtract(X[i:i + rows], mean, dtype=np.float64)
        Xc *= scale
        n[i:i + rows] = sq_norms(Xc)
        with np.errstate(over="ignore", invalid="ignore"):
            np.matmul(Xc.astype(np.float32), P32.T, out=y[i:i + rows])
    y64 = y.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.sqrt(np.maximum(n - sq_norms(y64), 0) + 3 * projection_error(m, d) * n)
    return y64, r, np.sqrt(n), n


def _augment_query(X: np.ndarray, mean: np.ndarray, P: np.ndarray, C: float,
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


def _augment_train(X: np.ndarray, mean: np.ndarray, P: np.ndarray, C: float,
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


def _project_block(T: ShardedMatrix, Z: ShardedMatrix, j: int, mean, P, C, scale,
                   token: str) -> int:
    """Project training block j; the worker keeps the raw and projected blocks cached
    for the queries that follow (they are read here anyway)."""
    raw = T.get_block(j, 0, copy=False)
    check_finite(raw, j * T.shard_sizes[0], "the training set")
    z = _augment_train(raw, mean, P, C, scale)
    Z.put_block(j, 0, z)
    CACHE.put(("pruned-raw", token, j), raw)
    CACHE.put(("pruned-z", token, j), z)
    return 0


def _scale_for(sample: np.ndarray, mean: np.ndarray) -> float:
    """A power of two bringing the sample's centred values into [-1, 1] (within 2**+-500,
    so that its square stays a finite float64)."""
    spread = float(np.max(np.abs(sample - mean), initial=0.0))
    if not spread > 0:
        return 1.0
    return float(np.ldexp(1.0, int(np.clip(-np.frexp(spread)[1], -500, 500))))


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


def choose_m(sample: np.ndarray, mean: np.ndarray, P_full: np.ndarray, n_train: int, k: int,
             queries: int = 96, blocks: int = 1) -> tuple[int | None, dict[str, Any]]:
    """Pick the projection size from a sample, or ``None`` when brute force is cheaper.

    The sample's first ``queries`` rows act as queries against the rest; their
    exact k-th neighbour distance there (an over-estimate of the one in the full
    set, so the estimate is conservative) gives each m's survivor rate. Per
    query, the modelled cost is the bound GEMM, the passes over its tiles, exact
    distances for the survivors and for up to k candidates per training block
    (``blocks`` of them), against brute force's GEMM.
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
    brute = n_train * d
    costs, rates = {}, {}
    choices = [m for m in M_CHOICES if m <= d // 2] or [max(1, d // 4)]
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
                    + (rate * n_train + k * blocks) * d * GATHER_PENALTY)
    best = min(costs, key=costs.get)
    info = {"survivor_rate": rates, "cost_vs_brute": {m: c / brute for m, c in costs.items()}}
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
    top = min(d, max(M_CHOICES) if m is None else m)
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
    index has ``Z=None`` and ``info["reason"]`` says why.
    """
    t0 = time.perf_counter()
    n, d = T.shape
    sample = _sample_rows(T, sample_rows)
    # Any shift keeps the bound valid; the sample's mean is as good as the full one.
    mean = sample.mean(axis=0, dtype=np.float64)
    scale = _scale_for(sample, mean)
    sample, smean = _for_estimates(sample, mean, scale)
    t_sample = time.perf_counter()
    info: dict[str, Any] = {}
    if m is None and allow_brute:
        # A quarter of the sample is enough to reject data where bounds are hopeless
        # (random data models at hundreds of times brute force), before the full fit.
        quick = sample[: max(len(sample) // 4, 4 * k + 256)]
        qmean = quick.mean(axis=0, dtype=np.float64)
        qm, qinfo = choose_m(quick, qmean, _principal(quick, qmean, d, None), n, k,
                             blocks=T.grid[0])
        if qm is not None and min(qinfo["cost_vs_brute"].values()) > QUICK_REJECT:
            qinfo.update(fit_s=time.perf_counter() - t0, quick_reject=True)
            return PrunedIndex(T, mean, np.zeros((0, d)), None, 0.0, qinfo)
    P_full = _principal(sample, smean, d, m)
    t_pca = time.perf_counter()
    if m is None:
        m, info = choose_m(sample, smean, P_full, n, k, blocks=T.grid[0])
    info.update(sample_s=t_sample - t0, pca_s=t_pca - t_sample,
                choose_s=time.perf_counter() - t_pca)
    if m is not None and allow_brute and not info.get("beats_brute", True):
        m = None
    t1 = time.perf_counter()
    if m is None:
        info["fit_s"] = t1 - t0
        return PrunedIndex(T, mean, P_full[:0], None, 0.0, info)
    P = np.ascontiguousarray(P_full[:m])
    C = margin_constant(m, d)
    Z = ShardedMatrix(f"tmp/pruned-{new_token()[:12]}", shape=(n, m + 4),
                      shard_sizes=(T.shard_sizes[0], m + 4), dtype=np.float32, store=T.store)
    token = new_token()
    get_all_results(executor.map(lambda j: _project_block(T, Z, j, mean, P, C, scale, token),
                                 range(T.grid[0])), progress=progress)
    info.update(m=m, fit_s=time.perf_counter() - t0, project_s=time.perf_counter() - t1)
    return PrunedIndex(T, mean, P, Z, C, info, token, scale)


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
    out = np.subtract(sample, mean, dtype=np.float64)
    out *= scale
    return out.astype(np.float32), np.zeros_like(mean)


# --- queries --------------------------------------------------------------------------------


def _z_block(index: PrunedIndex, j: int) -> np.ndarray:
    """Projected training block j (small: m + 4 columns), kept by the worker across tasks."""
    return CACHE.get(("pruned-z", index.token, j), lambda: index.Z.get_block(j, 0, copy=False))


def _raw_block(index: PrunedIndex, j: int) -> np.ndarray:
    """Raw training block j, kept by the worker (bounded) for the call's other tasks."""
    return CACHE.get(("pruned-raw", index.token, j),
                     lambda: index.train.get_block(j, 0, copy=False))


def _keep_best(vals: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((idx, vals), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


def _pruned_block(index: PrunedIndex, Q: ShardedMatrix, i: int, r0: int, r1: int, k: int,
                  exclude_self: bool):
    """Rows r0:r1 of query block i against the training set, in one pass.

    Per training block: bounds by one GEMM; the block's k smallest-bound rows
    whose bound is under the running tau (the k-th smallest exact distance
    seen, an upper bound on the true k-th neighbour distance) get exact
    distances, which lower tau; rows whose bound is at most tau are collected.
    Since tau only falls, the collection holds every row whose bound is at most
    the final tau, and so every true neighbour (bound <= distance <= tau). The
    collected rows with bound <= final tau (the survivors) get exact distances;
    their k best, ties to the smaller index, are the answer.
    """
    block = CACHE.get(("pruned-query", index.token, Q.store.url, Q.key, i),
                      lambda: Q.get_block(i, 0, copy=False))
    check_finite(block[r0:r1], i * Q.shard_sizes[0] + r0, "the query set")
    Q64 = block[r0:r1].astype(np.float64)
    nq = len(Q64)
    a = _augment_query(Q64, index.mean, index.P, index.C, index.scale)
    s2 = index.scale ** 2  # bounds are in scaled units, exact distances are not
    T = index.train
    bt = T.shard_sizes[0]
    q_global = i * Q.shard_sizes[0] + r0 + np.arange(nq)
    rows = np.arange(nq)
    best_d = np.full((nq, k), np.inf)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    got_q, got_x, got_lb = [], [], []
    for j in range(T.grid[0]):
        lb = gemm_nt(a, _z_block(index, j))
        lo, nb = j * bt, lb.shape[1]
        if exclude_self:
            own = (q_global >= lo) & (q_global < lo + nb)
            lb[rows[own], q_global[own] - lo] = np.inf
        kk = min(k, nb)
        idx = np.argmin(lb, axis=1)[:, None] if kk == 1 else np.argpartition(lb, kk - 1, axis=1)[:, :kk]
        # Only candidates whose bound is under the running tau can lower it (their
        # distance is at least their bound): exact distances for those alone.
        cand = np.take_along_axis(lb, idx, 1)
        qs, cols = np.nonzero(cand < ceil_f32(best_d[:, -1] * s2)[:, None])
        if len(qs):
            d = np.full(idx.shape, np.inf)
            d[qs, cols] = exact_sq_dist(Q64, _raw_block(index, j), qs, idx[qs, cols])
            best_d, best_i = _keep_best(np.concatenate([best_d, d], 1),
                                        np.concatenate([best_i, idx + lo], 1), k)
        tau32 = ceil_f32(best_d[:, -1] * s2)
        # One compare and a flat scan: far cheaper than a 2-D nonzero or row gathers.
        flat = np.flatnonzero(lb <= tau32[:, None])
        got_q.append(flat // nb)
        got_x.append(flat % nb + lo)
        got_lb.append(lb.ravel()[flat])
    qs, xs, lbs = (np.concatenate(v) for v in (got_q, got_x, got_lb))
    keep = lbs <= ceil_f32(best_d[:, -1] * s2)[qs]
    qs, xs = qs[keep], xs[keep]
    ds = np.empty(len(qs))
    blocks = xs // bt
    for j in np.unique(blocks):
        sel = np.flatnonzero(blocks == j)
        ds[sel] = exact_sq_dist(Q64, _raw_block(index, int(j)), qs[sel], xs[sel] - j * bt)
    order = np.lexsort((xs, ds, qs))
    qs, xs, ds = qs[order], xs[order], ds[order]
    pos = np.searchsorted(qs, rows)[:, None] + np.arange(k)[None, :]
    return i * Q.shard_sizes[0] + r0, ds[pos], xs[pos], len(qs)


def query(index: PrunedIndex, Q: ShardedMatrix, k: int, executor: Executor,
          exclude_self: bool = False, progress: bool | None = None, resume: bool = False,
          key: str | None = None):
    """Exact k-NN of every row of Q using the index.

    Returns (distances, indices, survivors, tasks run). With ``resume``, each query
    slice's answer is kept under ``<key>/parts/`` and reused by a later call: the
    answers are exact, so they do not depend on the projection that found them.
    """
    pieces = [(i, r, min(r + QUERY_ROWS, Q.block_shape(i, 0)[0]))
              for i in range(Q.grid[0]) for r in range(0, Q.block_shape(i, 0)[0], QUERY_ROWS)]
    results, ran = run_resumable(
        executor, lambda i, r0, r1: _pruned_block(index, Q, i, r0, r1, k, exclude_self),
        pieces, key, "pruned", resume, progress)
    dist = np.empty((Q.shape[0], k), dtype=np.float64)
    ind = np.empty((Q.shape[0], k), dtype=np.int64)
    survivors = 0
    for start, d, x, s in results:
        dist[start:start + len(d)] = d
        ind[start:start + len(d)] = x
        survivors += s
    return dist, ind, survivors, ran
