"""Every k-NN and distance path against the float64 reference, on data nobody centred.

Property-based (hypothesis): adversarial generators build large offsets (up to
1e6, and beyond 2**24 for integers), mixed scales per column, tiny distances next
to huge norms, duplicates and exact ties, near-ties closer than float32's epsilon,
every supported dtype, k in {1, 3, 10}, leave-one-out. The referee is float64
numpy (``tests/reference.py``): neighbours and distances must be identical.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shardwren
from shardwren.errors import NonFiniteInputError
from shardwren.linalg import argmin, knn, pairwise_sq_euclidean
from shardwren.linalg.kernels import gamma

from reference import reference_knn

DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]
KINDS = ["gauss", "ints", "cluster", "ties", "near-ties", "mixed-scales"]



def _make(rng: np.random.Generator, kind: str, dtype: str, n: int, d: int,
          offset: float) -> np.ndarray:
    """``n`` rows of adversarial data of one kind, as ``dtype``."""
    if kind == "gauss":
        X = rng.standard_normal((n, d))
    elif kind == "ints":
        X = rng.integers(0, 4, (n, d)).astype(np.float64)
    elif kind == "cluster":  # tiny distances next to huge norms
        X = rng.standard_normal((n, d)) * 1e-3 + rng.standard_normal(d) * 10
    elif kind == "ties":  # a grid: many rows at exactly equal distances, duplicates
        X = rng.integers(-2, 3, (n, d)).astype(np.float64)
        X[rng.integers(0, n, n // 3)] = X[0]
    elif kind == "near-ties":  # pairs of rows a hair (below float32's epsilon) apart
        base = rng.standard_normal((max(1, -(-n // 2)), d))
        X = np.repeat(base, 2, axis=0)[:n]
        X[1::2] += rng.standard_normal(X[1::2].shape) * 1e-9
    else:  # mixed-scales: columns from 1e-3 to 1e3
        X = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, d)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if dtype == "bool":
        return (X > np.median(X)) if X.size else X.astype(bool)
    if info is not None:
        # Integers: the pattern times a step, around an offset that can exceed 2**24.
        step = max(1, int(min(info.max, 2**20) // 64))
        centre = 0 if info.min == 0 else int(np.clip(offset, info.min // 2, info.max // 2))
        lo = 0 if info.min == 0 else info.min
        vals = np.clip(np.rint(X * (step if kind != "ints" else 1)) + centre, lo, info.max)
        return vals.astype(dtype)
    if dtype == "float16":
        return np.clip(X * 8 + np.clip(offset, -1e3, 1e3), -6e4, 6e4).astype(np.float16)
    return (X + offset).astype(dtype)


@st.composite
def problems(draw, min_train=1, max_train=50, max_query=15, ks=(1, 3, 10)):
    """(train, query, k, block) drawn adversarially."""
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(KINDS))
    n = draw(st.integers(min_train, max_train))
    m = draw(st.integers(1, max_query))
    d = draw(st.integers(1, 9))
    k = min(draw(st.sampled_from(ks)), n)
    offset = draw(st.sampled_from([0.0, 100.0, 1e4, 1e6, -3e5, float(2**30)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    both = _make(rng, kind, dtype, n + m, d, offset)
    train, query = both[:n], both[n:]
    if draw(st.booleans()) and m and n:  # queries on top of training rows: exact zeros, ties
        query[: m // 2] = train[rng.integers(0, n, m // 2)]
    block = draw(st.integers(1, max(1, n)))
    return train, query, k, block


def assert_exact(got, train, query, k, exclude_self=False):
    d, i = got
    rd, ri = reference_knn(train, query, k, exclude_self)
    assert d.dtype == np.float64
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


# --- the reproductions (kept as plain regression tests) ----------------------------


@pytest.mark.parametrize("offset", [100.0, 1e4])
def test_uncentred_float64_brute_force_is_exact(executor, offset):
    rng = np.random.default_rng(7)
    Xtr = rng.standard_normal((3000, 64)) + offset
    Xq = rng.standard_normal((300, 64)) + offset
    assert_exact(knn(Xtr, Xq, k=3, executor=executor), Xtr, Xq, 3)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integers_beyond_2_24_are_exact(executor, dtype):
    rng = np.random.default_rng(3)
    Xtr = (rng.integers(0, 1000, (2000, 16)) + 2**27).astype(dtype)
    Xq = (rng.integers(0, 1000, (100, 16)) + 2**27).astype(dtype)
    for method in ("brute", "pruned", "auto"):
        assert_exact(knn(Xtr, Xq, k=3, executor=executor, method=method), Xtr, Xq, 3)


@pytest.mark.parametrize("offset", [100.0, 1e4])
def test_tutorial_path_is_accurate_on_uncentred_data(executor, offset):
    rng = np.random.default_rng(7)
    Xtr = rng.standard_normal((700, 64)) + offset
    Xq = rng.standard_normal((90, 64)) + offset
    D = pairwise_sq_euclidean(Xtr, Xq, executor=executor, block_size=256)
    assert D.dtype == np.float64
    ref = reference_knn(Xq, Xtr, 1)[0]  # any float64 reference entry: check them all
    exact = np.array([[float(sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x, q)))
                       for q in Xq[:5]] for x in Xtr[:40]])
    got = D.numpy()
    assert np.all(np.abs(got[:40, :5] - exact) <= gamma(66, 2.0**-53) * exact)
    idx, mins = argmin(D, axis=0, executor=executor)
    np.testing.assert_array_equal(idx, reference_knn(Xtr, Xq, 1)[1][:, 0])
    assert ref.shape == (700, 1)
    D.delete()


# --- property-based: every path, every dtype ----------------------------------------------


@given(problems())
def test_brute_query_tiles_exact(executor, p):
    train, query, k, block = p
    assert_exact(knn(train, query, k, executor=executor, block_size=block), train, query, k)


@given(problems(min_train=2), st.booleans())
def test_brute_train_vs_train_exact(executor, p, loo):
    train, _, k, block = p
    k = min(k, len(train) - 1) if loo else k
    assert_exact(knn(train, None, k, executor=executor, block_size=block, exclude_self=loo),
                 train, train, k, exclude_self=loo)


@given(problems(min_train=150, max_train=300, max_query=20), st.sampled_from(["pruned", "auto"]))
def test_pruned_and_auto_exact(executor, p, method):
    train, query, k, block = p
    block = max(block, 60)
    assert_exact(knn(train, query, k, executor=executor, block_size=block, method=method),
                 train, query, k)


@given(problems(min_train=150, max_train=300))
def test_pruned_leave_one_out_exact(executor, p):
    train, _, k, block = p
    k = min(k, len(train) - 1)
    assert_exact(knn(train, None, k, executor=executor, block_size=max(block, 60),
                     method="pruned", exclude_self=True), train, train, k, exclude_self=True)


def _exact_sq(x: np.ndarray, q: np.ndarray) -> Fraction:
    return sum(((Fraction(float(a)) - Fraction(float(b))) ** 2 for a, b in zip(x, q)),
               Fraction(0))


@given(problems(max_train=25, max_query=8))
@settings(max_examples=25)
def test_distance_matrix_within_direct_summation_error(executor, p):
    """Every entry of D within gamma_{d+2} of D's dtype of the exact (rational) value,
    and argmin over D a true nearest neighbour up to D's own rounding."""
    train, query, _, block = p
    D = pairwise_sq_euclidean(train, query, executor=executor, block_size=block)
    want = np.result_type(train.dtype, np.float32)
    assert D.dtype == want
    got = D.numpy().astype(np.float64)
    u = float(np.finfo(want).eps) / 2
    tol = gamma(train.shape[1] + 2, u)
    exact = [[_exact_sq(x, q) for q in query] for x in train]
    for r, row in enumerate(exact):
        for c, e in enumerate(row):
            assert abs(Fraction(got[r, c]) - e) <= Fraction(tol) * e, (r, c, got[r, c], float(e))
    idx, _ = argmin(D, axis=0, executor=executor)
    for c, r in enumerate(idx):
        best = min(row[c] for row in exact)
        assert exact[r][c] <= best * Fraction((1 + tol) / (1 - tol))
    D.delete()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["brute", "pruned", "auto"])
@pytest.mark.parametrize("where", ["train", "query"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_names_row_and_column(executor, method, where, value):
    rng = np.random.default_rng(0)
    train, query = rng.standard_normal((400, 8)), rng.standard_normal((30, 8))
    (train if where == "train" else query)[217 if where == "train" else 17, 5] = value
    row = 217 if where == "train" else 17
    with pytest.raises(NonFiniteInputError, match=f"row {row}, column 5"):
        knn(train, query, 1, executor=executor, method=method, block_size=100)


@pytest.mark.parametrize("k", [1.5, "3", True, None, 2.0])
def test_k_must_be_an_integer(executor, k):
    with pytest.raises(TypeError, match="k must be an integer"):
        knn(np.ones((5, 2)), np.ones((2, 2)), k=k, executor=executor)


def test_numpy_integer_k_is_fine(executor):
    d, i = knn(np.arange(10.0)[:, None], np.array([[3.2]]), k=np.int64(2), executor=executor)
    np.testing.assert_array_equal(i, [[3, 4]])


# --- both backends, threaded Dask workers ---------------------------------------------------


@pytest.fixture(scope="module")
def dask_threaded_ex(dask_cluster_threaded, tmp_path_factory):
    store = f"file://{tmp_path_factory.mktemp('dask-threaded-store')}"
    ex = shardwren.default_executor(backend="dask", address=dask_cluster_threaded, store=store,
                                    progress=False)
    yield ex
    ex.shutdown()


@given(problems(max_train=40))
@settings(max_examples=12)
def test_brute_exact_on_threaded_dask(dask_threaded_ex, p):
    train, query, k, block = p
    assert_exact(knn(train, query, k, executor=dask_threaded_ex, block_size=block),
                 train, query, k)


def test_threaded_dask_worker_knn_pruned_matmul(dask_threaded_ex, mnist):
    """Four tile tasks at once in one worker process share its caches: every answer
    must still equal the float64 reference (the scratch buffer once was shared)."""
    from shardwren.linalg import matmul

    X, _, Xt, _ = mnist
    train, query = X[:6000], Xt[:400]
    rd, ri = reference_knn(train, query, 3)
    for method in ("brute", "pruned"):
        d, i = knn(train, query, 3, executor=dask_threaded_ex, block_size=500, method=method)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(d, rd)
    loo = train[:2000]
    assert_exact(knn(loo, None, 1, executor=dask_threaded_ex, block_size=200,
                     exclude_self=True), loo, loo, 1, exclude_self=True)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((900, 700)), rng.standard_normal((700, 800))
    C = matmul(A, B, executor=dask_threaded_ex, block_size=128)
    np.testing.assert_allclose(C.numpy(), A @ B, rtol=1e-10, atol=1e-10)
    C.delete()


# --- the integer path of exact distances ----------------------------------------------------

SMALL_INTS = ["uint8", "int8", "int16", "uint16"]


@st.composite
def integer_rows(draw):
    """Two matrices of small integers (dtypes drawn separately), values pushed to the
    dtypes' extremes, and row pairs between them."""
    da, db = draw(st.sampled_from(SMALL_INTS)), draw(st.sampled_from(SMALL_INTS))
    d = draw(st.sampled_from([1, 2, 7, 16, 129, 784]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    def rows(dtype: str, n: int) -> np.ndarray:
        info = np.iinfo(dtype)
        edges = np.array([info.min, info.max, 0 if info.min < 0 else info.min, info.max // 2])
        X = rng.integers(info.min, int(info.max) + 1, (n, d))
        ends = rng.random((n, d)) < draw(st.sampled_from([0.0, 0.5, 1.0]))
        X[ends] = rng.choice(edges, ends.sum())
        return X.astype(dtype)

    A, B = rows(da, draw(st.integers(1, 30))), rows(db, draw(st.integers(1, 30)))
    pairs = draw(st.integers(0, 300))
    return A, B, rng.integers(0, len(A), pairs), rng.integers(0, len(B), pairs)


@given(integer_rows())
@settings(max_examples=150)
def test_integer_exact_distances_are_bitwise_the_float64_reference(p):
    from shardwren.linalg.kernels import exact_sq_dist

    A, B, ia, ib = p
    want = ((A[ia].astype(np.float64) - B[ib].astype(np.float64)) ** 2).sum(axis=1)
    got = exact_sq_dist(A, B, ia, ib, chunk_bytes=4096)  # several chunks
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_integer_plan_takes_only_sums_that_stay_exact():
    from shardwren.linalg.kernels import _integer_plan

    u8, i8, i16, u16 = (np.dtype(t) for t in SMALL_INTS)
    assert _integer_plan(u8, u8, 784) == (np.dtype("int16"), np.dtype("uint16"),
                                          np.dtype("uint32"))
    # uint8 against int8: differences up to 383, whose squares need 32 bits
    assert _integer_plan(u8, i8, 784)[:2] == (np.dtype("int32"), np.dtype("uint32"))
    # 65535**2 * 784 passes 2**32: the sum goes to 64 bits
    assert _integer_plan(u16, u16, 784)[2] == np.dtype("uint64")
    assert _integer_plan(u16, u16, 2**53 // 65535**2 + 1) is None  # past 2**53
    assert _integer_plan(u16, u16, (2**53 - 1) // 65535**2) is not None  # the largest allowed
    assert _integer_plan(u16, i16, 4) is None  # differences up to 98303: squares pass 2**32
    for other in ("int32", "int64", "float32", "float64", "bool"):
        assert _integer_plan(u8, np.dtype(other), 4) is None


@pytest.mark.parametrize("values, dtype", [
    ([[0.0, 255.0], [17.0, -0.0]], "uint8"),
    ([[-128.0, 127.0], [0.0, 3.0]], "int8"),
    ([[-129.0, 0.0], [1.0, 2.0]], "int16"),
    ([[65535.0, 0.0], [1.0, 2.0]], "uint16"),
])
@pytest.mark.parametrize("float_dtype", ["float16", "float32", "float64"])
def test_narrow_integers_converts_integral_floats_exactly(values, dtype, float_dtype):
    from shardwren.linalg.kernels import narrow_integers

    X = np.array(values, dtype=np.float64)
    if float_dtype == "float16" and np.abs(X).max() > 2048:
        pytest.skip("float16 does not hold these integers")
    X = X.astype(float_dtype)
    Y = narrow_integers(X)
    assert Y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(Y.astype(np.float64), X.astype(np.float64))


@pytest.mark.parametrize("values", [
    [[0.0, 1.0], [2.0, 2.5]],          # a fraction after an integral first row
    [[0.5, 1.0], [2.0, 3.0]],          # a fraction in the first row
    [[0.0, 70000.0], [1.0, 2.0]],      # beyond 16 bits
    [[-40000.0, 0.0], [1.0, 2.0]],
    [[1e6 + 1, 1e6], [1e6, 1e6]],      # integral, but a large offset
])
def test_narrow_integers_leaves_other_data_alone(values):
    from shardwren.linalg.kernels import narrow_integers

    X = np.array(values, dtype=np.float32)
    assert narrow_integers(X) is X
    if np.all(X == np.rint(X)):
        wide = X.astype(np.int64)
        assert narrow_integers(wide) is wide
    for small in (np.array([[1, 2]], dtype=np.uint8), np.array([[-1, 2]], dtype=np.int16)):
        assert narrow_integers(small) is small


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32", "uint64", "bool"])
def test_narrow_integers_narrows_wide_integers_with_small_values(dtype):
    from shardwren.linalg.kernels import narrow_integers

    X = np.array([[0, 1], [1, 0]] if dtype == "bool" else [[0, 255], [7, 3]]).astype(dtype)
    Y = narrow_integers(X)
    assert Y.dtype == np.uint8
    np.testing.assert_array_equal(Y.astype(np.float64), X.astype(np.float64))


def test_narrow_integers_does_not_overflow_float16():
    """float16 cannot hold uint16's maximum: the range check must not cast it there."""
    from shardwren.linalg.kernels import narrow_integers

    X = np.array([[40000.0, 1.0], [65504.0, 0.0]], dtype=np.float16)
    with np.errstate(all="raise"):
        Y = narrow_integers(X)
    assert Y.dtype == np.uint16
    np.testing.assert_array_equal(Y.astype(np.float64), X.astype(np.float64))


def test_knn_on_integral_float_pixels_is_exact_both_ways(executor, mnist):
    """MNIST as float32 pixels takes the integer path; its answers stay the reference's,
    also against queries that are not integral (which cannot take it)."""
    from shardwren.linalg.kernels import narrow_integers, takes_integer_path

    X, _, Xt, _ = mnist
    train, pixels = X[:3000], Xt[:200]
    fractional = pixels + np.float32(0.25)
    narrow = narrow_integers(pixels).dtype
    assert takes_integer_path(narrow, narrow_integers(train).dtype, 784)
    assert not takes_integer_path(narrow_integers(fractional).dtype, narrow, 784)
    for query in (pixels, fractional):
        for method in ("brute", "pruned"):
            assert_exact(knn(train, query, 3, executor=executor, block_size=1000,
                             method=method), train, query, 3)


@pytest.mark.parametrize("magnitude", [1e-320, 1e-300, 1e-160, 1e154, 1e200, 1e300, "max"])
@pytest.mark.parametrize("method", ["brute", "pruned", "auto"])
def test_values_near_float64s_limits(executor, magnitude, method):
    """Spreads below 2**-500 overflowed a Python float (OverflowError); values near 1e200
    and subnormal ones broke the pruned fit (LinAlgError), and so did columns whose sum
    overflows; distances that overflow tie at inf, and subnormal ones round into ties,
    which the reference breaks by index."""
    rng = np.random.default_rng(7)
    if magnitude == "max":
        values = np.array([-1.7e308, 0.0, 1.7e308])
        train, query = rng.choice(values, (1200, 3)), rng.choice(values, (40, 3))
    else:
        train = rng.standard_normal((1200, 12)) * magnitude
        query = rng.standard_normal((40, 12)) * magnitude
    with np.errstate(over="ignore", invalid="ignore"):
        assert_exact(knn(train, query, 3, executor=executor, method=method, block_size=400),
                     train, query, 3)
        assert_exact(knn(train[:600], None, 2, executor=executor, method=method,
                         block_size=200, exclude_self=True),
                     train[:600], train[:600], 2, exclude_self=True)


def test_distances_that_round_together_below_float64s_normals_tie(executor):
    train = np.array([[1.0001e-160], [1e-160], [5e-160]])  # 1e-320 both: a tie
    query = np.zeros((1, 1))
    for method in ("brute", "pruned"):
        d, i = knn(train, query, 1, executor=executor, method=method)
        assert d.tolist() == [[1e-320]] and i.tolist() == [[0]]


def test_distances_that_overflow_tie_to_the_smaller_index(executor):
    train = np.array([[3e154], [1.5e154], [2e154]])  # squared distances to 0 all overflow
    query = np.zeros((1, 1))
    for method in ("brute", "pruned"):
        d, i = knn(train, query, 2, executor=executor, method=method)
        assert np.isinf(d).all() and i.tolist() == [[0, 1]]


def test_parameters_and_inputs_the_kernels_cannot_take_are_refused(executor):
    """block_size=0 silently meant the default and -1 or True one-row blocks; extended
    precision (1e400 is finite there, inf in float64) and masked entries were accepted."""
    from shardwren.errors import DTypeMismatchError, InvalidParameterError, ShardwrenError

    X = np.random.default_rng(0).random((30, 3))
    for bad in (0, -1, True, "3", 2.5):
        with pytest.raises(InvalidParameterError, match="block_size"):
            knn(X, X[:2], 1, executor=executor, block_size=bad)
    for kw in ({"k": 0}, {"k": 31}, {"k": 1.0}, {"method": "fast"}):
        with pytest.raises(InvalidParameterError):
            knn(X, X[:2], **{"k": 1, **kw}, executor=executor)
    with pytest.raises(InvalidParameterError, match="exclude_self"):
        knn(X, X[:2], 1, executor=executor, exclude_self=True)
    with pytest.raises(ShardwrenError, match="empty input"):
        knn(X[:0], X[:2], 1, executor=executor)
    with pytest.raises(DTypeMismatchError, match="extended precision"):
        knn(X.astype(np.longdouble), X[:2], 1, executor=executor)
    masked = np.ma.masked_array(X, mask=np.zeros_like(X, bool))
    masked.mask[3, 1] = True
    with pytest.raises(NonFiniteInputError, match="masked"):
        knn(masked, X[:2], 1, executor=executor)
    # a mask with nothing masked is just an array
    assert_exact(knn(np.ma.masked_array(X), X[:2], 1, executor=executor), X, X[:2], 1)
