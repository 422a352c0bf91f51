"""Property-based round trips (hypothesis): data and geometry we did not choose.

numpy is the referee: every block, slice and transposed view must equal the same
selection of the array that was stored, for random shapes (empty and 1-wide included),
block sizes (larger than the matrix included), dtypes and compressors.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import shardwren  # noqa: E402
from shardwren.matrix import ShardedMatrix  # noqa: E402
from shardwren.matrix._geometry import count, span  # noqa: E402

DTYPES = st.sampled_from(["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                          "uint64", "float16", "float32", "float64", "complex64", "complex128",
                          ">f8", ">i2"])
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def stored(draw):
    shape = draw(st.tuples(st.integers(0, 23), st.integers(0, 23)))
    blocks = draw(st.tuples(st.integers(1, 30), st.integers(1, 30)))
    dtype = np.dtype(draw(DTYPES))
    data = draw(hnp.arrays(dtype, shape, elements={"allow_nan": False} if dtype.kind in "fc" else None))
    compressor = draw(st.sampled_from(["none", "zstd", "lz4"]))
    return data, blocks, compressor


def _store(kind, tmp_path_factory):
    if kind == "memory":
        return shardwren.open_store(f"memory://prop-{uuid.uuid4().hex[:8]}")
    return shardwren.open_store(f"file://{tmp_path_factory.mktemp('prop')}")


@pytest.mark.parametrize("kind", ["file", "memory"])
@SETTINGS
@given(case=stored(), picks=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)),
                                     max_size=4))
def test_round_trip_blocks_and_views(tmp_path_factory, kind, case, picks):
    data, blocks, compressor = case
    store = _store(kind, tmp_path_factory)
    m = ShardedMatrix.from_numpy(data, "m", blocks, store=store, compressor=compressor, n_jobs=1)
    expect = data.astype(data.dtype.newbyteorder("="))
    got = ShardedMatrix("m", store=store)
    assert got.shape == data.shape and got.dtype == expect.dtype
    np.testing.assert_array_equal(got.numpy(), expect)
    np.testing.assert_array_equal(got.T.numpy(), expect.T)
    g0, g1 = got.grid
    assert got.block_idxs_exist == got.block_idxs  # every block written, none extra
    for a, b in picks:
        i, j = a % g0, b % g1
        (r0, r1), (c0, c1) = got.block_range(i, j)
        np.testing.assert_array_equal(got.get_block(i, j), expect[r0:r1, c0:c1])
        np.testing.assert_array_equal(got.get_block(i, j, copy=False), expect[r0:r1, c0:c1])
        np.testing.assert_array_equal(got.T.get_block(j, i), expect[r0:r1, c0:c1].T)
    m.delete()
    assert store.list("m") == []


@st.composite
def index(draw, n):
    if n and draw(st.booleans()):
        return draw(st.integers(-n, n - 1))
    start = draw(st.none() | st.integers(-n - 3, n + 3))
    stop = draw(st.none() | st.integers(-n - 3, n + 3))
    step = draw(st.none() | st.integers(-4, 4).filter(bool))
    return slice(start, stop, step)


@SETTINGS
@given(shape=st.tuples(st.integers(1, 30), st.integers(1, 30)),
       blocks=st.tuples(st.integers(1, 12), st.integers(1, 12)), data=st.data())
def test_slices_match_numpy(tmp_path_factory, shape, blocks, data):
    X = np.arange(shape[0] * shape[1], dtype=np.int32).reshape(shape)
    store = shardwren.open_store(f"memory://slices-{uuid.uuid4().hex[:8]}")
    m = ShardedMatrix.from_numpy(X, "s", blocks, store=store, n_jobs=1)
    for view, ref in ((m, X), (m.T, X.T)):
        key = (data.draw(index(ref.shape[0])), data.draw(index(ref.shape[1])))
        np.testing.assert_array_equal(view[key], ref[key])


@given(n=st.integers(0, 10**18), c=st.integers(1, 10**12), i=st.integers(0, 10**6))
def test_geometry_arithmetic_matches_the_list_it_replaces(n, c, i):
    blocks = count(n, c)
    assert blocks == max(1, len(range(0, n, c)))
    if i < blocks:
        start, end = span(i, n, c)
        assert start == i * c and end == min(n, (i + 1) * c) and (n == 0 or start < end)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=stored())
def test_round_trip_on_s3(s3_url, case):
    """The same round trip through moto's S3 server (one code path for every store)."""
    data, blocks, compressor = case
    store = shardwren.open_store(s3_url)
    key = f"m{uuid.uuid4().hex[:6]}"
    m = ShardedMatrix.from_numpy(data, key, blocks, store=store, compressor=compressor)
    np.testing.assert_array_equal(ShardedMatrix(key, store=store).numpy(),
                                  data.astype(data.dtype.newbyteorder("=")))
    m.delete()
    assert store.list(key) == []
