from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

import shardwren
from shardwren.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    DTypeMismatchError,
    KeyNotFoundError,
    MatrixExistsError,
    ShapeMismatchError,
)
from shardwren.matrix import ShardedMatrix


def rand(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(-100, 100, shape).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "uint8", "int64", "bool"])
@pytest.mark.parametrize("shape,blocks", [((100, 30), (7, 8)), ((13, 1), (5, 5)), ((64, 64), (64, 64))])
def test_round_trip_ragged(store, dtype, shape, blocks):
    X = rand(shape, dtype)
    m = ShardedMatrix.from_numpy(X, "m", blocks, store=store)
    assert m.dtype == np.dtype(dtype) and m.shape == shape
    np.testing.assert_array_equal(m.numpy(), X)
    opened = ShardedMatrix("m", store=store)
    assert (opened.shape, opened.shard_sizes, opened.dtype) == (m.shape, m.shard_sizes, m.dtype)
    np.testing.assert_array_equal(opened.to_numpy(), X)


def test_geometry_and_edges(store):
    m = ShardedMatrix("g", shape=(60000, 784), shard_sizes=[7000, 784], store=store)
    assert m.grid == (9, 1) and m.num_blocks == 9
    assert m.blocks[-1] == ((56000, 60000), (0, 784))
    assert m.block_shape(8, 0) == (4000, 784)
    assert m.block_idxs == [(i, 0) for i in range(9)]
    assert m.block_idxs_exist == [] and len(m.block_idxs_not_exist) == 9


def test_tutorial_sequence(store):
    """The tutorial's calls: create, shard_matrix, get_block, put_block, block_idxs."""
    X_train = rand((1000, 78), "float32")
    X_train_sharded = ShardedMatrix("x_train", shape=X_train.shape, bucket=store,
                                    shard_sizes=[400, 78])
    X_train_sharded.shard_matrix(X_train, n_jobs=16)
    D = ShardedMatrix("D", shape=(1000, 300), shard_sizes=[400, 400], bucket=store)
    assert D.dtype is None  # the tutorial never names one
    for b0, b1 in D.block_idxs:
        blk = X_train_sharded.get_block(b0, 0)
        D.put_block(b0, b1, blk @ X_train[b1 * 400:(b1 + 1) * 400][:300].T)
    assert D.dtype == np.float32
    offset = 1 * D.shard_sizes[0]
    assert offset == 400
    np.testing.assert_allclose(D.get_block(1, 0), X_train[400:800] @ X_train[0:300].T, rtol=1e-4, atol=1e-4)
    assert sorted(D.block_idxs) == D.block_idxs_exist


def test_first_write_fixes_dtype_and_later_blocks_cast_safely(store):
    m = ShardedMatrix("d", shape=(4, 4), shard_sizes=[2, 2], store=store)
    m.put_block(0, 0, np.ones((2, 2), np.float32))
    assert m.dtype == np.float32
    m.put_block(0, 1, np.ones((2, 2), np.int8))  # safe: int8 -> float32
    assert m.get_block(0, 1).dtype == np.float32
    with pytest.raises(DTypeMismatchError, match="float64.*float32"):
        m.put_block(1, 0, np.ones((2, 2), np.float64))
    with pytest.raises(DTypeMismatchError, match="non-numeric"):
        m.put_block(1, 0, np.array([["a", "b"], ["c", "d"]]))


def test_integrity_errors(store):
    m = ShardedMatrix("e", shape=(10, 10), shard_sizes=[4, 4], dtype="float64", store=store)
    with pytest.raises(ShapeMismatchError, match=r"\(2, 4\).*\(4, 4\)"):
        m.put_block(2, 0, np.zeros((4, 4)))
    with pytest.raises(IndexError, match="3 x 3 block grid"):
        m.get_block(3, 0)
    with pytest.raises(IndexError, match="grid"):
        m.put_block(0, -1, np.zeros((4, 4)))
    with pytest.raises(BlockNotFoundError, match=r"\(1, 1\).*never written") as info:
        m.get_block(1, 1)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(KeyNotFoundError, match="no matrix 'nothing'"):
        ShardedMatrix("nothing", store=store)


def test_fill_value_allows_unwritten_blocks(store):
    m = ShardedMatrix("f", shape=(5, 5), shard_sizes=[2, 2], dtype="int32", fill_value=-1, store=store)
    np.testing.assert_array_equal(m.get_block(2, 2), [[-1]])
    m.put_block(0, 0, np.zeros((2, 2), np.int32))  # all zeros is still written
    assert m.block_idxs_exist == [(0, 0)]


def test_recreate_replaces_with_warning_or_keeps(store):
    m = ShardedMatrix.from_numpy(np.ones((6, 6)), "r", [3, 3], store=store)
    same = ShardedMatrix("r", shape=(6, 6), shard_sizes=[3, 3], store=store)
    assert same.block_idxs_exist == m.block_idxs  # same layout keeps the blocks
    with pytest.raises(MatrixExistsError, match=r"\(6, 6\).*\(8, 8\)"):
        ShardedMatrix("r", shape=(8, 8), shard_sizes=[3, 3], store=store, overwrite=False)
    with pytest.warns(UserWarning, match=r"shape \(6, 6\).*shape \(8, 8\)"):
        new = ShardedMatrix("r", shape=(8, 8), shard_sizes=[3, 3], store=store)
    assert new.block_idxs_exist == []


def test_transpose_view_and_slices(store):
    X = rand((50, 23), "float64")
    m = ShardedMatrix.from_numpy(X, "t", [8, 5], store=store)
    assert m.T.shape == (23, 50) and m.T.shard_sizes == (5, 8)
    np.testing.assert_array_equal(m.T.get_block(2, 3), m.get_block(3, 2).T)
    np.testing.assert_array_equal(m.T.numpy(), X.T)
    for key in [np.s_[3:17, 2:9], np.s_[::-3, 4], np.s_[7], np.s_[-1, -1], np.s_[10:10, :],
                np.s_[:, ::4]]:
        np.testing.assert_array_equal(m[key], X[key])
    np.testing.assert_array_equal(m.T[2:6, 40:], X.T[2:6, 40:])


def test_delete(store):
    m = ShardedMatrix.from_numpy(np.ones((4, 4)), "del", [2, 2], store=store)
    m.delete_block(0, 0)
    assert (0, 0) not in m.block_idxs_exist
    m.delete()
    assert store.list("del") == []


def test_handle_pickles_small(store):
    m = ShardedMatrix.from_numpy(rand((3000, 100), "float64"), "p", [500, 100], store=store)
    data = pickle.dumps(m)
    assert len(data) < 1000
    clone = pickle.loads(data)
    np.testing.assert_array_equal(clone.get_block(5, 0), m.get_block(5, 0))


def test_concurrent_writers_of_distinct_blocks(store):
    m = ShardedMatrix("c", shape=(80, 80), shard_sizes=[10, 10], store=store)
    X = rand((80, 80), "float32")
    # each thread uses its own handle, as separate workers would
    def write(i):
        h = pickle.loads(pickle.dumps(m))
        for j in range(8):
            h.put_block(i, j, X[i * 10:(i + 1) * 10, j * 10:(j + 1) * 10])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(ShardedMatrix("c", store=store).numpy(), X)


def test_plain_zarr_and_dask_read_it(store):
    import dask.array as da
    import zarr

    X = rand((37, 11), "float32")
    ShardedMatrix.from_numpy(X, "z", [10, 4], store=store)
    opts = {"storage_options": store.options} if store.options else {}
    url = store.url_for("z")
    if store.scheme == "memory":
        arr = zarr.open_array(store.zarr_store("z"))
    else:
        arr = zarr.open_array(url, **opts)
    np.testing.assert_array_equal(arr[:], X)
    assert arr.chunks == (10, 4)
    if store.scheme != "memory":
        np.testing.assert_array_equal(da.from_zarr(url, **opts).compute(), X)


def test_corruption_is_detected_with_block_index(tmp_path, monkeypatch):
    store = shardwren.open_store(f"file://{tmp_path}")
    m = ShardedMatrix.from_numpy(rand((20, 20), "float64"), "k", [10, 10], store=store)
    path = tmp_path / "k" / "c" / "1" / "0"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptBlockError, match=r"block \(1, 0\).*'k'"):
        m.get_block(1, 0)
    monkeypatch.setattr(shardwren.storage, "MAP_MIN_BYTES", 0)
    with pytest.raises(CorruptBlockError, match=r"block \(1, 0\).*'k'"):
        m.get_block(1, 0, copy=False)  # the mapped read checks the same checksum
    m.get_block(0, 0)  # the others are fine


def test_mapped_block_reads_are_read_only_views_that_survive_rewrites(tmp_path, monkeypatch):
    import shardwren.storage

    monkeypatch.setattr(shardwren.storage, "MAP_MIN_BYTES", 0)
    X = rand((25, 7), "float32")
    m = ShardedMatrix.from_numpy(X, "k", [10, 4], store=f"file://{tmp_path}")
    for i, j in m.block_idxs:  # ragged edge blocks included
        b = m.get_block(i, j, copy=False)
        np.testing.assert_array_equal(b, m.get_block(i, j))
        assert not b.flags.writeable
    b = m.get_block(2, 1, copy=False)
    before = b.copy()
    m.put_block(2, 1, np.zeros((5, 3), np.float32))  # chunks are replaced by rename
    np.testing.assert_array_equal(b, before)
    np.testing.assert_array_equal(m.get_block(2, 1, copy=False), 0)
    with pytest.raises(BlockNotFoundError):
        ShardedMatrix("e", shape=(4, 4), shard_sizes=[2, 2], dtype="float32",
                      store=f"file://{tmp_path}").get_block(0, 0, copy=False)


def test_small_blocks_are_read_not_mapped(tmp_path):
    m = ShardedMatrix.from_numpy(rand((20, 20), "float64"), "k", [10, 10], store=f"file://{tmp_path}")
    assert m.get_block(0, 0, copy=False).flags.writeable  # no mapping, no descriptor held


def test_shard_matrix_via_executor(executor, tmp_path):
    X = rand((900, 40), "float32")
    m = ShardedMatrix("via", shape=X.shape, shard_sizes=[200, 40], store=f"file://{tmp_path}")
    m.shard_matrix(X, executor=executor)
    np.testing.assert_array_equal(m.numpy(), X)


def test_workers_fill_matrix_created_without_dtype(executor, tmp_path):
    D = ShardedMatrix("D", shape=(30, 30), shard_sizes=[10, 10], store=f"file://{tmp_path}")
    fs = executor.map(lambda ij: D.put_block(ij[0], ij[1], np.full((10, 10), ij[0] * 3 + ij[1],
                                                                      np.float32)), D.block_idxs)
    shardwren.get_all_results(fs)
    assert D.dtype is None or D.dtype == np.float32  # the driver's handle learns it on read
    assert D.get_block(2, 1)[0, 0] == 7 and D.dtype == np.float32


@pytest.mark.parametrize("compressor", ["none", "zstd", "lz4"])
def test_compressors(tmp_path, compressor):
    X = np.zeros((100, 100), np.float32)
    X[::7] = 1
    ShardedMatrix.from_numpy(X, "cmp", [50, 50], store=f"file://{tmp_path}", compressor=compressor)
    np.testing.assert_array_equal(ShardedMatrix("cmp", store=f"file://{tmp_path}").numpy(), X)
    size = sum(f.stat().st_size for f in (tmp_path / "cmp").rglob("*") if f.is_file())
    assert (size < X.nbytes / 2) == (compressor != "none")


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "bool", "int8", ">f8", "uint16"])
def test_direct_chunk_writes_are_zarr_chunks(tmp_path, dtype):
    # Uncompressed local chunks bypass zarr's codecs on write: zarr must still read them,
    # ragged edge blocks and non-native byte order included.
    X = (np.arange(35).reshape(7, 5) % 3).astype(dtype)
    if dtype.startswith("complex"):
        X = X * (1 + 2j)
    m = ShardedMatrix.from_numpy(X, "k", [3, 2], store=f"file://{tmp_path}")
    np.testing.assert_array_equal(m.numpy(), X)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "k"))[:], X)
