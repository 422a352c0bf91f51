"""Numeric kernels shared by the block algorithms (pure functions: no I/O, no executor).

* exact distances: :func:`exact_sq_dist` evaluates ``sum((q - x)**2)`` in float64 with
  the same arithmetic as the float64 reference ``((Q[:, None] - X[None]) ** 2).sum(-1)``
  (numpy's pairwise summation along the contiguous feature axis), so the distances
  every k-NN path returns are bitwise those of the reference;
* selection and merging of top-k partial results (ties to the smaller index);
* neighbour votes (:func:`vote`, :func:`class_scores`) with scikit-learn's arithmetic
  and tie rule, or the nearest-label rule;
* the float32 GEMM into a per-thread buffer, and rounding-error constants for
  the certified bounds (Higham, *Accuracy and Stability of Numerical Algorithms*,
  ch. 3: a length-n dot product in any summation order, with or without FMA, is off
  by at most ``gamma_n sum |x_i y_i|``, ``gamma_n = n u / (1 - n u)``).
"""

from __future__ import annotations

import numpy as np

from ._cache import scratch

Partial = tuple[np.ndarray, np.ndarray]  # (squared distances, indices), each (n, k)

#: Unit roundoffs.
U32 = float(np.finfo(np.float32).eps) / 2
U64 = float(np.finfo(np.float64).eps) / 2
#: Spacing of float32's subnormals: the largest absolute error of an underflowing
#: float32 result is half of it.
TINY32 = float(np.finfo(np.float32).smallest_subnormal)
#: Index used to pad partial results that hold fewer than k real neighbours; it
#: sorts after every real index, so a pad never wins a tie.
PAD_INDEX = np.iinfo(np.int64).max


def gamma(n: int, u: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)``: relative error bound of a length-n dot product."""
    return n * u / (1 - n * u)


def power_of_two_scale(extent: float, lowest: int = -1074, highest: int = 1023) -> float:
    """``2**e`` with ``extent * 2**e`` in [0.5, 1): scaling by it is exact. ``e`` is kept
    within ``[lowest, highest]`` (float64 holds 2**-1074 to 2**1023); an infinite extent
    (an overflowed spread) counts as 2**1025, 1.0 is returned for no extent at all."""
    if not extent > 0:
        return 1.0
    e = -int(np.frexp(extent)[1]) if np.isfinite(extent) else -1025
    return float(np.ldexp(1.0, int(np.clip(e, max(lowest, -1074), min(highest, 1023)))))


def subnormal_slack(d: int) -> float:
    """How far apart (absolutely, in float64's units) two exact distances over ``d``
    features may be and still come out equal: below float64's normal range every
    square and every sum rounds to a multiple of 2**-1074 (half of that off at most),
    which relative error bounds miss. A candidate within it of the k-th may tie."""
    return (2 * d + 2) * 2.0 ** -1074


def ceil_f32(x: np.ndarray) -> np.ndarray:
    """The smallest float32 values not below ``x`` (float64): comparing a float32
    quantity against them never drops one that is at most ``x``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        t = x.astype(np.float32)
    return np.where(t.astype(np.float64) < x, np.nextafter(t, np.float32(np.inf)), t)


def gemm_nt(a: np.ndarray, b: np.ndarray, slot: str = "gemm") -> np.ndarray:
    """``a @ b.T`` into this thread's reusable buffer (see :func:`._cache.scratch`).

    The result is overwritten by the thread's next call with the same ``slot``.
    """
    out = scratch((a.shape[0], b.shape[0]), np.result_type(a.dtype, b.dtype), slot)
    return np.matmul(a, b.T, out=out)


def gemm(a: np.ndarray, b: np.ndarray, slot: str = "gemm") -> np.ndarray:
    """``a @ b`` into this thread's reusable buffer (``b`` already transposed: with a
    short inner dimension, sgemm runs up to twice as fast on a contiguous ``(k, n)``
    right operand as on the transposed view of an ``(n, k)`` one)."""
    out = scratch((a.shape[0], b.shape[1]), np.result_type(a.dtype, b.dtype), slot)
    return np.matmul(a, b, out=out)


def exact_sq_dist(A: np.ndarray, B: np.ndarray, ia: np.ndarray, ib: np.ndarray,
                  chunk_bytes: int = 256 << 10) -> np.ndarray:
    """``sum((A[ia] - B[ib]) ** 2, axis=1)`` in float64, for row pairs ``(ia, ib)``.

    Rows of any numeric dtype are converted to float64 (exactly, up to int64
    values beyond 2**53, which round as in the reference), subtracted, squared and
    summed with numpy's pairwise summation: bitwise the float64 reference.
    Works through the pairs in chunks small enough to stay in cache, in two
    reused buffers (converting on assignment is several times faster than a
    mixed-type subtraction).

    Rows of small integers (8- and 16-bit, see :func:`narrow_integers`) take an
    integer path, about 2.8x faster: every partial sum of their squared
    differences is an integer below 2**53, which float64 holds exactly, so the
    reference's float64 sum is that integer whatever its order, and so is ours.
    """
    ia, ib = np.asarray(ia), np.asarray(ib)
    out = np.empty(len(ia), dtype=np.float64)
    d = A.shape[1]
    if d == 0 or len(ia) == 0:
        out[:] = 0
        return out
    plan = _integer_plan(A.dtype, B.dtype, d)
    work = np.dtype(np.float64) if plan is None else plan[0]
    step = max(1, chunk_bytes // (work.itemsize * d))
    abuf = np.empty((min(step, len(ia)), d), dtype=work)
    bbuf = np.empty_like(abuf)
    for s in range(0, len(ia), step):
        sa, sb = ia[s:s + step], ib[s:s + step]
        a, b = abuf[:len(sa)], bbuf[:len(sa)]
        a[...] = A[sa]
        b[...] = B[sb]
        np.subtract(a, b, out=a)
        if plan is None:
            np.square(a, out=a)
            out[s:s + len(sa)] = a.sum(axis=1)
        else:
            # The square wraps modulo 2**bits in the signed type; it is below
            # 2**bits, so the unsigned view of the same bits is the square.
            np.multiply(a, a, out=a)
            out[s:s + len(sa)] = a.view(plan[1]).sum(axis=1, dtype=plan[2])
    return out


def takes_integer_path(a: np.dtype, b: np.dtype, d: int) -> bool:
    """Whether :func:`exact_sq_dist` between rows of dtypes ``a`` and ``b`` with ``d``
    features takes its integer path (what its cost depends on)."""
    return _integer_plan(np.dtype(a), np.dtype(b), d) is not None


def _integer_plan(a: np.dtype, b: np.dtype, d: int
                  ) -> tuple[np.dtype, np.dtype, np.dtype] | None:
    """``(difference dtype, square dtype, sum dtype)`` for the exact integer path of
    :func:`exact_sq_dist`, or None when the dtypes or ``d`` do not allow it."""
    if a.kind not in "iu" or b.kind not in "iu" or max(a.itemsize, b.itemsize) > 2:
        return None
    lo = min(int(np.iinfo(a).min), int(np.iinfo(b).min))
    span = max(int(np.iinfo(a).max), int(np.iinfo(b).max)) - lo
    bits = 16 if span ** 2 < 2 ** 16 else 32 if span ** 2 < 2 ** 32 else 0
    total = d * span ** 2  # the largest possible sum
    if not bits or total >= 2 ** 53:
        return None
    return (np.dtype(f"int{bits}"), np.dtype(f"uint{bits}"),
            np.dtype(np.uint32 if total < 2 ** 32 else np.uint64))


def narrow_integers(X: np.ndarray) -> np.ndarray:
    """``X`` as 8- or 16-bit integers when every value is an integer in that range
    (pixels stored as float32 or int32, booleans); ``X`` itself otherwise, and when it
    is 8- or 16-bit integers already.

    Exact distances between rows are the same either way (the conversion is exact),
    and :func:`exact_sq_dist` takes its faster integer path on the narrow copy,
    which is also a quarter of float32's memory. ``X`` must be finite.
    """
    if X.dtype.kind not in "fiub" or X.size == 0 or (X.dtype.kind in "iu" and X.itemsize <= 2):
        return X
    if X.dtype.kind == "b":
        return X.view(np.uint8)
    first = X[:1]
    if X.dtype.kind == "f" and not np.array_equal(first, np.rint(first)):
        return X  # cheap early exit for real-valued data
    lo, hi = float(X.min()), float(X.max())  # as Python floats: float16 cannot hold 65535
    for t in (np.uint8, np.int8, np.int16, np.uint16):
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            Y = X.astype(t)
            return Y if np.array_equal(Y, X) else X
    return X


def best_k(qs: np.ndarray, xs: np.ndarray, ds: np.ndarray, n: int, k: int) -> Partial:
    """Each of ``n`` queries' k best ``(distance, index)`` among the pairs given.

    ``qs`` are query rows in ``range(n)``, ``xs`` the candidates' (global) indices,
    ``ds`` their distances. Ties go to the smaller index. Queries with fewer than
    k pairs are padded with ``(inf, PAD_INDEX)``.
    """
    order = np.lexsort((xs, ds, qs))
    qs, xs, ds = qs[order], xs[order], ds[order]
    start = np.searchsorted(qs, np.arange(n))
    count = np.diff(np.append(start, len(qs)))
    pos = start[:, None] + np.arange(k)[None, :]
    ok = np.arange(k)[None, :] < count[:, None]
    pos = np.where(ok, pos, 0)
    if len(qs) == 0:
        return np.full((n, k), np.inf), np.full((n, k), PAD_INDEX, dtype=np.int64)
    vals = np.where(ok, ds[pos], np.inf)
    idx = np.where(ok, xs[pos], PAD_INDEX).astype(np.int64)
    return vals, idx


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
    """Merge two partial top-k results for the same queries (ties to the smaller index)."""
    vals = np.concatenate([a[0], b[0]], axis=1)
    idx = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((idx, vals), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


class RunningTopK:
    """Each query's k best ``(distance, index)`` so far, merged one partial at a time.

    Partials can arrive in any order: :func:`merge` orders by distance, then index,
    so the final answer does not depend on the order. Memory is the answer's
    (``n x k``), whatever the number of partials folded in.
    """

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.dist = np.full((n, k), np.inf)
        self.ind = np.full((n, k), PAD_INDEX, dtype=np.int64)

    def add(self, row0: int, vals: np.ndarray, idx: np.ndarray) -> None:
        """Fold in the partial of rows ``row0:row0 + len(vals)``."""
        sl = slice(row0, row0 + len(vals))
        self.dist[sl], self.ind[sl] = merge((self.dist[sl], self.ind[sl]), (vals, idx), self.k)

    def result(self, what: str = "k-NN") -> Partial:
        """The answer; every query must have k real neighbours by now."""
        if (self.ind == PAD_INDEX).any():  # k <= rows was checked before any task ran
            raise AssertionError(f"{what} merge lost neighbours; please report this bug")
        return self.dist, self.ind


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


def vote(labels: np.ndarray, weights: np.ndarray | None = None,
         ties: str = "nearest", fallback: object = None) -> np.ndarray:
    """Majority (or weighted) vote over each row of neighbour labels (nearest first).

    Parameters
    ----------
    labels : array (n, k)
        The neighbours' labels, any sortable dtype, nearest neighbour first.
    weights : float array (n, k), optional
        Each neighbour's vote; default one each. A label's score is the sum along the
        row of its neighbours' weights with zeros elsewhere, scikit-learn's
        ``weighted_mode`` arithmetic, so scores are bitwise scikit-learn's.
    ties : {"nearest", "smallest"}
        Which of the labels with the best score wins. ``"smallest"``: the smallest
        label, scikit-learn's rule (its ``weighted_mode``: labels in ascending order,
        a later one wins only with a strictly larger score, starting from score 0).
        ``"nearest"``: the label whose first occurrence is nearest (for k=1 and
        for k=2 this is plain 1-NN).
    fallback : label, optional
        ``"smallest"`` only: the answer for a row where no label scores above 0
        (possible only with weights that are not positive). ``weighted_mode`` answers
        the value 0 (for scikit-learn's class codes, the first class); default: the
        smallest label in ``labels``.

    Returns
    -------
    array (n,)
        One label per row, of ``labels``' dtype.
    """
    if ties not in ("nearest", "smallest"):
        raise ValueError(f"ties must be 'nearest' or 'smallest', got {ties!r}")
    labels = np.asarray(labels)
    n, k = labels.shape
    values, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(n, k)
    w = np.ones((n, k)) if weights is None else np.asarray(weights)
    if ties == "smallest":
        # weighted_mode's loop, operation for operation (NaN scores included).
        best = np.full(n, values[0] if fallback is None else fallback, dtype=values.dtype)
        best_score = np.zeros(n)
        for c in range(len(values)):
            template = np.zeros((n, k))
            mine = codes == c
            template[mine] = w[mine]
            score = np.sum(template, axis=1)
            best = np.where(score > best_score, values[c], best)
            best_score = np.maximum(score, best_score)
        return best
    scores = np.stack([np.sum(np.where(codes == c, w, 0.0), axis=1) for c in range(len(values))],
                      axis=1)
    top = scores == scores.max(axis=1, keepdims=True)
    # Among the best-scoring labels, the one met first in nearest-first order.
    first_top = np.argmax(top[np.arange(n)[:, None], codes], axis=1)
    return values[codes[np.arange(n), first_top]]


def class_scores(codes: np.ndarray, n_classes: int, weights: np.ndarray | None = None,
                 normalise: bool = True) -> np.ndarray:
    """Per-class vote totals of each row of neighbour class codes (0 <= code < n_classes).

    Votes are added one neighbour rank at a time, nearest first, then divided by
    their row sum: scikit-learn's ``predict_proba`` arithmetic, so probabilities are
    bitwise scikit-learn's when the neighbours and weights are (with uniform weights
    they are ``count / k``).
    """
    codes = np.asarray(codes)
    n, k = codes.shape
    out = np.zeros((n, n_classes))
    rows = np.arange(n)
    for i in range(k):
        out[rows, codes[:, i]] += 1.0 if weights is None else weights[:, i]
    if normalise:
        out /= out.sum(axis=1)[:, np.newaxis]
    return out


def sq_norms(X: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each row (in X's dtype)."""
    return np.einsum("ij,ij->i", X, X)


# --- certified distance tiles (the tutorial's materialised D) ------------------------------

#: Long double's unit roundoff (2**-64 on x86; float64's where the type is an alias).
ULD = float(np.finfo(np.longdouble).eps) / 2
#: Rows per chunk of a distance tile: a chunk's float64 temporaries stay in cache.
TILE_ROWS = 512


def _norms_ld(X: np.ndarray) -> np.ndarray:
    """Squared row norms of float64 X summed in long double, rounded to float64."""
    Xl = X.astype(np.longdouble)
    return np.einsum("ij,ij->i", Xl, Xl).astype(np.float64)


def _split(X: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``X = hi + lo`` exactly, where each row of ``hi`` holds integers of at most
    ``bits`` bits times one power of two (``2**e``, ``e >= -500``): products of two such
    rows, and their sums over up to ``2**(53 - 2 bits)`` columns, are exact in float64."""
    top = np.abs(X).max(axis=1, initial=0.0)
    e = np.maximum(np.frexp(top)[1] - bits, -500)
    unit = np.ldexp(1.0, e)[:, None]
    hi = np.rint(X / unit) * unit
    return hi, X - hi


def sq_dist_tile(a: np.ndarray, b: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b``, certified.

    Every entry's relative error is at most ``gamma_{d+2}`` of ``out_dtype``, what
    summing ``sum((a_i - b_j)**2)`` directly in that type can promise, for any finite
    input: no cancellation on uncentred data.

    How: both blocks are centred on ``a``'s mean and scaled by a power of two in
    float64; distances come from ``|a|**2 + |b|**2 - 2 a.b`` with the norms summed in
    long double. For a float32 result one float64 GEMM suffices (its error,
    ``gamma_d |a||b|`` in float64, is far below float32's rounding except for
    near-duplicate pairs). For a float64 result the GEMM is split (Ozaki's scheme):
    ``a = hi + lo`` with ``hi`` short enough that ``hi_a . hi_b`` is computed exactly,
    and ``hi_a . lo_b + lo_a . b`` carries a 2**-20 smaller error. Each entry then
    gets a rigorous error bound ``E`` (centring, norms, GEMM, the final sum, underflow);
    entries whose bound is not within the promise (near-duplicates, mostly) are
    recomputed directly from the raw rows in float64 (:func:`exact_sq_dist`).
    """
    out_dtype = np.dtype(out_dtype)
    n, d = a.shape
    m = b.shape[0]
    out = np.empty((n, m), dtype=out_dtype)
    if n == 0 or m == 0:
        return out
    mu = a.mean(axis=0, dtype=np.float64)
    ac = np.subtract(a, mu, dtype=np.float64)
    bc = np.subtract(b, mu, dtype=np.float64)
    top = max(float(np.abs(ac).max(initial=0.0)), float(np.abs(bc).max(initial=0.0)))
    s = float(np.ldexp(1.0, -int(np.frexp(top)[1]))) if top > 0 else 1.0
    s = min(max(s, 2.0 ** -500), 2.0 ** 500)
    ac *= s
    bc *= s
    na, nb = _norms_ld(ac), _norms_ld(bc)
    an, bn = np.sqrt(na), np.sqrt(nb)
    u_out = float(np.finfo(out_dtype).eps) / 2
    # Allowed relative error before the final rounding to out_dtype.
    allowed = gamma(d + 2, u_out) - (u_out if out_dtype != np.float64 else 0.0)
    e = U64 * 1.01  # centring: |fl(x - mu) - (x - mu)| <= u64 |x - mu|
    rest = 1.02 * (2 * e + e * e + 6 * U64 + d * ULD + U64) + 1e-300
    tiny = 4 * (2 * d + 10) * 2.0 ** -1074
    split = out_dtype == np.float64
    if split:
        bits = max(1, (53 - int(np.ceil(np.log2(max(d, 2))))) // 2)
        a_hi, a_lo = _split(ac, bits)
        b_hi, b_lo = _split(bc, bits)
        a_pair = np.concatenate([a_hi, a_lo], axis=1)
        b_pair = np.concatenate([b_lo, bc], axis=1)
        a_hn, a_ln = np.linalg.norm(a_hi, axis=1), np.linalg.norm(a_lo, axis=1)
        b_ln = np.linalg.norm(b_lo, axis=1)
        g2 = gamma(2 * d, U64) * 1.01
    for r0 in range(0, n, TILE_ROWS):
        r1 = min(n, r0 + TILE_ROWS)
        if split:
            G = a_hi[r0:r1] @ b_hi.T
            G += a_pair[r0:r1] @ b_pair.T
            E = g2 * (np.multiply.outer(a_hn[r0:r1], b_ln) + np.multiply.outer(a_ln[r0:r1], bn))
            E *= 2
            E += 2.02 * U64 * np.abs(G)  # the rounding of hi.hi + rest
        else:
            G = ac[r0:r1] @ bc.T
            E = np.multiply.outer(an[r0:r1], bn)
            E *= 2 * gamma(d, U64) * 1.01
        S = np.add.outer(an[r0:r1], bn)
        np.square(S, out=S)
        E += rest * S + tiny * (1 + S)
        Dh = np.add.outer(na[r0:r1], nb)
        Dh -= 2 * G
        bad = np.flatnonzero(~(E <= allowed * (Dh - E)))
        Dh /= s * s
        chunk = out[r0:r1]
        chunk[...] = Dh
        if len(bad):
            rows, cols = bad // m, bad % m
            chunk.reshape(-1)[bad] = exact_sq_dist(a, b, rows + r0, cols)
    return out


# --- candidate selection ------------------------------------------------------------------

#: Elements per group in :func:`window_candidates`' first pass.
GROUP = 16


def group_min(S: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Minima over groups of ``GROUP`` strided entries along ``axis`` (no copy of S).

    For rows (axis 1) with ``W = n // GROUP``: ``gm[r, w] = min_g S[r, w + g W]``;
    for columns (axis 0) likewise over rows. Entries past ``GROUP * W`` are left out
    (the caller handles that short tail directly). Returns ``(gm, W)``.
    """
    n = S.shape[axis]
    W = n // GROUP
    if W == 0:
        return (S[:, :0] if axis == 1 else S[:0]), 0
    if axis == 1:
        main = S[:, :GROUP * W]
        if S.flags.c_contiguous and n == GROUP * W:
            return main.reshape(S.shape[0], GROUP, W).min(axis=1), W
        return np.minimum.reduce([main[:, g * W:(g + 1) * W] for g in range(GROUP)]), W
    # Rows of a C-ordered S: GROUP contiguous slabs of W rows each.
    return S[:GROUP * W].reshape(GROUP, W, S.shape[1]).min(axis=0), W


def below(S: np.ndarray, thr: np.ndarray, axis: int = 1,
          gm: tuple[np.ndarray, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the entries of ``S`` at most their row's (``axis=1``) or
    column's (``axis=0``) threshold ``thr``.

    One pass computes minima over groups of :data:`GROUP` entries (or takes them
    from ``gm``); only the few groups whose minimum is under the threshold are
    looked into. About half the cost of a compare over all of S, and no pass at
    all over S's entries beyond that when nothing is under the threshold.
    """
    if gm is None:
        gm = group_min(S, axis)
    g, W = gm
    n = S.shape[axis]
    if W == 0:
        full = S if axis == 1 else S.T
        lines, others = np.nonzero(full <= thr[:, None])
        return (lines, others) if axis == 1 else (others, lines)
    gm_lines = g if axis == 1 else g.T  # (lines, W)
    gl, gw = np.nonzero(gm_lines <= thr[:, None])
    members = gw[:, None] + W * np.arange(GROUP)[None, :]        # (hits, GROUP)
    vals = S[gl[:, None], members] if axis == 1 else S[members, gl[:, None]]
    hit = vals <= thr[gl][:, None]
    lines, others = np.broadcast_to(gl[:, None], hit.shape)[hit], members[hit]
    if n > GROUP * W:  # the short tail the groups leave out
        tail = S[:, GROUP * W:] if axis == 1 else S[GROUP * W:].T
        tl, tc = np.nonzero(tail <= thr[:, None])
        lines = np.concatenate([lines, tl])
        others = np.concatenate([others, tc + GROUP * W])
    return (lines, others) if axis == 1 else (others, lines)


def window_candidates(S: np.ndarray, k: int, threshold, axis: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Entries of ``S`` (float32) within each row's (``axis=1``) or column's window.

    ``threshold(kth)`` maps an upper bound on each line's k-th smallest entry to
    the float32 threshold of that line; every entry at most its line's threshold
    is returned, as ``(rows, cols)`` index arrays (a superset is never wrong for
    the callers: they re-rank exactly). The group minima of :func:`below` give the
    bound: the k-th smallest group minimum is at least the line's k-th smallest entry.
    """
    n_lines, n = (S.shape[0], S.shape[1]) if axis == 1 else (S.shape[1], S.shape[0])
    g, W = group_min(S, axis)
    if k > W // 4 or n <= GROUP:
        # Few groups: the plain way (partition over the whole line).
        full = S if axis == 1 else S.T
        kth = np.full(n_lines, np.inf, dtype=np.float32) if k > n else (
            full.min(axis=1) if k == 1 else np.partition(full, k - 1, axis=1)[:, k - 1])
        lines, others = np.nonzero(full <= threshold(kth)[:, None])
        return (lines, others) if axis == 1 else (others, lines)
    gm_lines = g if axis == 1 else g.T
    tail = S[:, GROUP * W:] if axis == 1 else S[GROUP * W:].T
    both = np.concatenate([gm_lines, tail], axis=1) if tail.shape[1] else gm_lines
    kth = both.min(axis=1) if k == 1 else np.partition(both, k - 1, axis=1)[:, k - 1]
    return below(S, threshold(kth), axis, (g, W))
