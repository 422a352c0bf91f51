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
* exact distances are computed in float64 as ``sum((q - x)^2)``, the same
  arithmetic as the float64 brute force the tests compare against (exact for
  integer data such as MNIST pixels), and ties go to the smaller index.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..executor import Executor
from ..futures import get_all_results
from ..matrix import ShardedMatrix, scratch_matrix
from ._common import new_token, run_resumable, sq_norms
from .knn import _cached, _gemm_nt

U32 = float(np.finfo(np.float32).eps) / 2
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
_RAW = None


def _gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def projection_error(m: int, d: int) -> float:
    """``eps`` of the module docstring: the float32 projection of ``d`` features onto
    ``m`` directions is off by at most ``eps |x~|`` (Euclidean norm)."""
    return 1.001 * np.sqrt(m) * (_gamma(d) + 2 * U32)


def margin_constant(m: int, d: int) -> float:
    """The ``C`` of the module docstring for ``d`` features projected onto ``m`` directions."""
    return 2 * (_gamma(m + 4) + 2 * U32) + 1e-7 + 1.5 * projection_error(m, d)


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

    @property
    def m(self) -> int:
        return self.P.shape[0]


def _project(X: np.ndarray, mean: np.ndarray, P: np.ndarray, rows: int = 1024):
    """``(y^, r+, s, n)`` of the module docstring for every row of X.

    ``y^`` comes from a float32 GEMM (four times a float64 one's speed), the
    norms from float64. Works through X in row chunks: float64 copies of a whole
    block are large fresh allocations, and first-touching memory is slow on
    virtual machines.
    """
    m, d = P.shape
    P32 = P.astype(np.float32)
    y = np.empty((len(X), m), dtype=np.float32)
    n = np.empty(len(X))
    for i in range(0, len(X), rows):
        Xc = np.subtract(X[i:i + rows], mean, dtype=np.float64)
        n[i:i + rows] = sq_norms(Xc)
        np.matmul(Xc.astype(np.float32), P32.T, out=y[i:i + rows])
    y64 = y.astype(np.float64)
    r = np.sqrt(np.maximum(n - sq_norms(y64), 0) + 3 * projection_error(m, d) * n)
    return y64, r, np.sqrt(n), n


def _augment_query(X: np.ndarray, mean: np.ndarray, P: np.ndarray, C: float) -> np.ndarray:
    """``a_q`` of the module docstring for every row of X (float32)."""
    y, r, s, n = _project(X, mean, P)
    a = np.empty((len(X), P.shape[0] + 4), dtype=np.float32)
    a[:, :-4] = -2 * y
    a[:, -4] = -2 * r
    a[:, -3] = -2 * C * s
    a[:, -2] = (1 - C) * n
    a[:, -1] = 1
    return a


def _augment_train(X: np.ndarray, mean: np.ndarray, P: np.ndarray, C: float) -> np.ndarray:
    """``b_x`` of the module docstring for every row of X (float32)."""
    y, r, s, n = _project(X, mean, P)
    b = np.empty((len(X), P.shape[0] + 4), dtype=np.float32)
    b[:, :-4] = y
    b[:, -4] = r
    b[:, -3] = s
    b[:, -2] = 1
    b[:, -1] = (1 - C) * n
    return b


def exact_sq_dist(Q64: np.ndarray, X: np.ndarray, qs: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``sum((Q64[qs] - X[xs])**2, axis=1)`` in float64 (X's rows converted to it
    first), in pair chunks of a few MB so that temporaries stay in cache."""
    out = np.empty(len(qs), dtype=np.float64)
    step = max(1, (4 << 20) // (8 * max(1, Q64.shape[1])))
    for s in range(0, len(qs), step):
        diff = Q64[qs[s:s + step]] - X[xs[s:s + step]]
        out[s:s + step] = sq_norms(diff)
    return out


# --- fit ------------------------------------------------------------------------------------


def _project_block(T: ShardedMatrix, Z: ShardedMatrix, j: int, mean, P, C, token: str) -> int:
    """Project training block j; the worker keeps the raw and projected blocks cached
    for the queries that follow (they are read here anyway)."""
    raw = T.get_block(j, 0, copy=False)
    z = _augment_train(raw, mean, P, C)
    Z.put_block(j, 0, z)
    _raw_cache().get((token, j), lambda: raw)
    _z_put((token, j), z)
    return 0


def _sample_rows(T: ShardedMatrix, rows: int, seed: int = 0) -> np.ndarray:
    """About ``rows`` training rows, in random order, as float32 (an estimate's input).

    Rows are gathered from (mapped) blocks spread over the matrix, so the only
    new memory is the sample itself.
    """
    g = T.grid[0]
    rng = np.random.default_rng(seed)
    # at least two blocks, so that data stored in some order still gives a fair sample
    take = max(1, min(g, max(2, -(-rows // T.shard_sizes[0]))))
    blocks = [T.get_block(int(j), 0, copy=False) for j in sorted(rng.choice(g, take, replace=False))]
    total = sum(len(b) for b in blocks)
    pick = rng.permutation(total)[:rows]
    out = np.empty((len(pick), T.shape[1]), dtype=np.float32)
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
            return PrunedIndex(T, qmean, np.zeros((0, d)), None, 0.0, qinfo)
    # Any shift keeps the bound valid; the sample's mean is as good as the full one.
    mean = sample.mean(axis=0, dtype=np.float64)
    P_full = _principal(sample, mean, d, m)
    t_pca = time.perf_counter()
    if m is None:
        m, info = choose_m(sample, mean, P_full, n, k, blocks=T.grid[0])
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
    Z = scratch_matrix(T.store, "pruned", (n, m + 4), (T.shard_sizes[0], m + 4), np.float32)
    token = new_token()
    get_all_results(executor.map(lambda j: _project_block(T, Z, j, mean, P, C, token),
                                 range(T.grid[0])), progress=progress)
    info.update(m=m, fit_s=time.perf_counter() - t0, project_s=time.perf_counter() - t1)
    return PrunedIndex(T, mean, P, Z, C, info, token)


# --- queries --------------------------------------------------------------------------------


_Z_CACHE: OrderedDict = OrderedDict()


def _z_put(key: tuple, block: np.ndarray) -> None:
    _Z_CACHE[key] = block
    _Z_CACHE.move_to_end(key)
    while sum(b.nbytes for b in _Z_CACHE.values()) > 256 << 20:
        _Z_CACHE.popitem(last=False)


def _z_block(index: PrunedIndex, j: int) -> np.ndarray:
    """Projected training block j; these are small (m + 4 columns), so a worker keeps
    up to 256 MiB of them across tasks."""
    key = (index.token, j)
    if key in _Z_CACHE:
        _Z_CACHE.move_to_end(key)
        return _Z_CACHE[key]
    block = index.Z.get_block(j, 0, copy=False)
    _z_put(key, block)
    return block


def _raw_cache():
    global _RAW
    if _RAW is None:
        from ._common import BlockCache

        _RAW = BlockCache(512 << 20)
    return _RAW


def _raw_block(index: PrunedIndex, j: int) -> np.ndarray:
    """Raw training block j, kept by the worker (bounded) for the call's other tasks."""
    return _raw_cache().get((index.token, j), lambda: index.train.get_block(j, 0, copy=False))


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
    block = _cached(("query", index.token, Q.key, i), lambda: Q.get_block(i, 0, copy=False))
    Q64 = block[r0:r1].astype(np.float64)
    nq = len(Q64)
    a = _augment_query(Q64, index.mean, index.P, index.C)
    T = index.train
    bt = T.shard_sizes[0]
    q_global = i * Q.shard_sizes[0] + r0 + np.arange(nq)
    rows = np.arange(nq)
    best_d = np.full((nq, k), np.inf)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    got_q, got_x, got_lb = [], [], []
    for j in range(T.grid[0]):
        lb = _gemm_nt(a, _z_block(index, j))
        lo, nb = j * bt, lb.shape[1]
        if exclude_self:
            own = (q_global >= lo) & (q_global < lo + nb)
            lb[rows[own], q_global[own] - lo] = np.inf
        kk = min(k, nb)
        idx = np.argmin(lb, axis=1)[:, None] if kk == 1 else np.argpartition(lb, kk - 1, axis=1)[:, :kk]
        # Only candidates whose bound is under the running tau can lower it (their
        # distance is at least their bound): exact distances for those alone.
        cand = np.take_along_axis(lb, idx, 1)
        qs, cols = np.nonzero(cand < _as_f32_ceiling(best_d[:, -1])[:, None])
        if len(qs):
            d = np.full(idx.shape, np.inf)
            d[qs, cols] = exact_sq_dist(Q64, _raw_block(index, j), qs, idx[qs, cols])
            best_d, best_i = _keep_best(np.concatenate([best_d, d], 1),
                                        np.concatenate([best_i, idx + lo], 1), k)
        tau32 = _as_f32_ceiling(best_d[:, -1])
        # One compare and a flat scan: far cheaper than a 2-D nonzero or row gathers.
        flat = np.flatnonzero(lb <= tau32[:, None])
        got_q.append(flat // nb)
        got_x.append(flat % nb + lo)
        got_lb.append(lb.ravel()[flat])
    qs, xs, lbs = (np.concatenate(v) for v in (got_q, got_x, got_lb))
    keep = lbs <= _as_f32_ceiling(best_d[:, -1])[qs]
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


def _as_f32_ceiling(tau: np.ndarray) -> np.ndarray:
    """The smallest float32 values not below ``tau``: comparing a float32 bound
    against them never drops a row whose bound is at most tau."""
    t = tau.astype(np.float32)
    return np.where(t.astype(np.float64) < tau, np.nextafter(t, np.float32(np.inf)), t)


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
        pieces, key, "pruned", resume, progress,
        fingerprint={"train": index.train, "query": Q, "k": k, "exclude_self": exclude_self})
    dist = np.empty((Q.shape[0], k), dtype=np.float64)
    ind = np.empty((Q.shape[0], k), dtype=np.int64)
    survivors = 0
    for start, d, x, s in results:
        dist[start:start + len(d)] = d
        ind[start:start + len(d)] = x
        survivors += s
    return dist, ind, survivors, ran
