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


# --- issue 16: never lose or mix data ------------------------------------------------------


@pytest.mark.parametrize("inner", ["X/c/1", "X/c", "X/c/0/0", "X/other"])
def test_key_inside_another_matrix_is_refused(store, inner):
    """Creating a matrix inside another's tree used to wipe its blocks (zarr's overwrite)."""
    from shardwren.errors import KeyConflictError

    X = ShardedMatrix.from_numpy(np.arange(64.0).reshape(8, 8), "X", (2, 2), store=store)
    with pytest.raises(KeyConflictError, match=r"'X/.*inside the tree of matrix 'X'") as info:
        ShardedMatrix(inner, shape=(2, 2), shard_sizes=(2, 2), store=store)
    assert isinstance(info.value, FileExistsError)
    assert len(X.block_idxs_exist) == 16
    np.testing.assert_array_equal(ShardedMatrix("X", store=store).numpy(),
                                  np.arange(64.0).reshape(8, 8))


def test_matrix_over_existing_nodes_is_refused(store):
    from shardwren.errors import KeyConflictError

    child = ShardedMatrix.from_numpy(np.ones((2, 2)), "par/child", store=store)
    with pytest.raises(KeyConflictError, match="group holding 'par/child'"):
        ShardedMatrix("par", shape=(2, 2), store=store)
    np.testing.assert_array_equal(child.numpy(), 1)
    child.delete()  # an empty group left behind makes way for a matrix
    assert ShardedMatrix("par", shape=(2, 2), store=store).shape == (2, 2)


def test_delete_leaves_nodes_inside_the_tree_alone(tmp_path):
    """`ShardedMatrix("par").delete()` used to delete a separate matrix "par/child".
    Such a tree can no longer be made through shardwren; stores written before can hold one."""
    store = shardwren.open_store(f"file://{tmp_path}")
    par = ShardedMatrix.from_numpy(np.ones((4, 4)), "par", (2, 2), store=store)
    other = ShardedMatrix.from_numpy(np.full((3, 3), 5.0), "other", (2, 2), store=store)
    for k in store.list("other"):  # an old store's "par/child", copied key by key
        store.put("par/child/" + k.split("/", 1)[1], store.get(k))
    other.delete()
    par.delete()
    np.testing.assert_array_equal(ShardedMatrix("par/child", store=store).numpy(), 5.0)
    assert not store.exists("par/zarr.json") and not store.list("par/c")


def test_recreating_with_missing_metadata_keeps_the_blocks(store):
    """Re-creating a matrix whose zarr.json is missing used to wipe its blocks."""
    from shardwren.errors import KeyConflictError

    ShardedMatrix.from_numpy(np.ones((4, 4)), "r", (2, 2), store=store)
    store.delete("r/zarr.json")
    with pytest.raises(KeyConflictError, match="4 keys with no metadata.*'r/c/"):
        ShardedMatrix("r", shape=(4, 4), shard_sizes=(2, 2), store=store)
    assert len(store.list("r/c")) == 4


def test_same_layout_never_rewrites_metadata(tmp_path):
    """Open-or-create with the same layout reads the metadata, never writes it."""
    store = shardwren.open_store(f"file://{tmp_path}")
    ShardedMatrix.from_numpy(np.ones((4, 4), np.float32), "s", (2, 2), store=store)
    meta = tmp_path / "s" / "zarr.json"
    before = meta.stat().st_mtime_ns, meta.stat().st_ino
    ShardedMatrix("s", shape=(4, 4), shard_sizes=(2, 2), dtype="float32", store=store)
    ShardedMatrix("s", shape=(4, 4), shard_sizes=(2, 2), store=store)
    assert (meta.stat().st_mtime_ns, meta.stat().st_ino) == before


@pytest.mark.parametrize("bad", [np.array([["a", "b"], ["c", "d"]]),
                                 np.array([[1, None], [2, 3]], dtype=object)])
def test_rejected_shard_matrix_leaves_pending_matrix_untouched(store, bad):
    """A rejected shard_matrix used to record its dtype first: the matrix was unusable."""
    m = ShardedMatrix("p", shape=(2, 2), store=store)
    meta = store.get("p/zarr.json")
    with pytest.raises(DTypeMismatchError, match="non-numeric"):
        m.shard_matrix(bad)
    with pytest.raises(DTypeMismatchError, match="non-numeric"):
        m.put_block(0, 0, bad)
    assert store.get("p/zarr.json") == meta
    assert ShardedMatrix("p", store=store).dtype is None
    m.shard_matrix(np.ones((2, 2), np.float32))
    assert ShardedMatrix("p", store=store).dtype == np.float32


def test_first_writer_fixes_dtype_with_a_claim(store):
    """The dtype of a pending matrix is fixed by an exclusive claim: a second handle made
    before the first write learns it, and casts or is refused (never reinterprets)."""
    a = ShardedMatrix("q", shape=(4, 2), shard_sizes=(2, 2), store=store)
    b = pickle.loads(pickle.dumps(a))
    a.put_block(0, 0, np.full((2, 2), 3, np.int32))
    with pytest.raises(DTypeMismatchError, match="float32.*int32"):
        b.put_block(1, 0, np.full((2, 2), 0.5, np.float32))
    b.put_block(1, 0, np.full((2, 2), 2, np.int16))  # safe cast
    np.testing.assert_array_equal(ShardedMatrix("q", store=store).numpy(), [[3, 3]] * 2 + [[2, 2]] * 2)
    assert ShardedMatrix("q", store=store).dtype == np.int32


@pytest.mark.parametrize("dtype", [str, "U5", object, "S3", "M8[s]", [("a", "f4")]])
def test_non_numeric_dtype_refused_at_creation(store, dtype):
    with pytest.raises(DTypeMismatchError, match="not numeric|not a dtype"):
        ShardedMatrix("n", shape=(2, 2), dtype=dtype, store=store)
    assert store.list("n") == []


@pytest.mark.parametrize("kwargs,words", [
    (dict(shape=(4.9, 4)), "shape must be an integer, got 4.9"),
    (dict(shape=(4.0, 4)), "shape must be an integer, got 4.0"),
    (dict(shape=(4, 4), shard_sizes=(2.5, 2)), "shard_sizes must be an integer"),
    (dict(shape=("4", 4)), "shape must be an integer"),
    (dict(shape=(True, 4)), "bool"),
])
def test_non_integer_geometry_is_a_type_error(store, kwargs, words):
    with pytest.raises(TypeError, match=words):
        ShardedMatrix("g", store=store, **kwargs)


def test_non_integer_block_index_is_a_type_error(store):
    m = ShardedMatrix.from_numpy(np.ones((4, 4)), "i", (2, 2), store=store)
    for call in (lambda: m.get_block(0.7, 0), lambda: m.get_block(0, 1.0),
                 lambda: m.put_block(0.0, 0, np.ones((2, 2))), lambda: m.block_shape(1.5, 0),
                 lambda: m.delete_block("0", 0)):
        with pytest.raises(TypeError, match="block index must be an integer"):
            call()
    assert m.get_block(np.int64(1), np.int32(1)).shape == (2, 2)


def test_block_idxs_exist_with_slashes_in_the_key(store):
    """block_idxs_exist used to be empty for keys with '/', so resume recomputed everything."""
    m = ShardedMatrix("proj/run1/C", shape=(6, 4), shard_sizes=(2, 2), dtype="float64", store=store)
    m.put_block(2, 1, np.ones((2, 2)))
    m.put_block(0, 0, np.ones((2, 2)))
    assert m.block_idxs_exist == [(0, 0), (2, 1)]
    assert m.T.block_idxs_exist == [(0, 0), (1, 2)]


# --- one verdict for every read path ------------------------------------------------------


def _chunk_files(tmp_path, key):
    return sorted(p for p in (tmp_path / key / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("compressor", ["none", "zstd", "lz4"])
@pytest.mark.parametrize("damage", ["append", "truncate", "flip"])
def test_damaged_chunk_is_corrupt_on_every_read_path(tmp_path, monkeypatch, compressor, damage):
    """A chunk with bytes appended used to pass get_block() yet fail get_block(copy=False)
    and zarr itself. Now every path (copy, mapped, zarr) calls it corrupt."""
    import zarr

    import shardwren.storage

    store = shardwren.open_store(f"file://{tmp_path}")
    X = rand((20, 20), "float64")
    m = ShardedMatrix.from_numpy(X, "k", [10, 10], store=store, compressor=compressor)
    path = tmp_path / "k" / "c" / "1" / "0"
    raw = bytearray(path.read_bytes())
    if damage == "append":
        raw += b"\0\0\0\0"
    elif damage == "truncate":
        del raw[-9:-4]
    else:
        raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(shardwren.storage, "MAP_MIN_BYTES", 0)  # map even small chunks
    for copy in (True, False):
        with pytest.raises(CorruptBlockError, match=r"block \(1, 0\) of matrix 'k'.*corrupt"):
            m.get_block(1, 0, copy=copy)
    with pytest.raises(CorruptBlockError, match=r"block \(0, 1\)"):
        m.T.get_block(0, 1)
    with pytest.raises(Exception, match="(?i)checksum|decompress|size|shape|buffer"):
        zarr.open_array(str(tmp_path / "k"), mode="r")[10:20, 0:10]  # zarr agrees
    np.testing.assert_array_equal(m.get_block(0, 0), X[:10, :10])


def test_chunk_that_is_a_folder_is_corrupt_not_missing(tmp_path):
    store = shardwren.open_store(f"file://{tmp_path}")
    m = ShardedMatrix("m", shape=(4, 4), shard_sizes=(2, 2), dtype="float32", store=store)
    (tmp_path / "m" / "c" / "1" / "1").mkdir(parents=True)
    (tmp_path / "m" / "c" / "1" / "1" / "x").write_bytes(b"1")
    with pytest.raises(CorruptBlockError, match=r"block \(1, 1\).*folder of other keys"):
        m.get_block(1, 1)


@pytest.mark.parametrize("text,words", [
    ("{nope", "not valid JSON"),
    ('{"zarr_format": 3, "node_type": "array"}', "lacks the field 'shape'"),
    ('{"zarr_format": 3, "node_type": "array", "shape": [4, 4], "data_type": "float32"}',
     "lacks the field 'chunk_grid'"),
    ("[1, 2]", "not a JSON object"),
])
def test_bad_metadata_names_matrix_and_file(store, text, words):
    from shardwren.errors import MetadataError

    ShardedMatrix("bad/m", shape=(4, 4), dtype="float32", store=store)
    store.put("bad/m/zarr.json", text.encode())
    with pytest.raises(MetadataError, match=rf"matrix 'bad/m': bad/m/zarr.json in .*{words}"):
        ShardedMatrix("bad/m", store=store)
    with pytest.raises(MetadataError):  # creating over it too: nothing is overwritten
        ShardedMatrix("bad/m", shape=(4, 4), store=store)
    assert store.get("bad/m/zarr.json") == text.encode()


# --- scale: geometry is arithmetic ------------------------------------------------------------


def test_huge_matrix_geometry_is_arithmetic(store):
    """A 10^15 x 10^15 matrix used to hang (every access listed all block ranges)."""
    n = 10**15
    m = ShardedMatrix("huge", shape=(n, n), shard_sizes=(1000, 1000), dtype="float32",
                      fill_value=0, store=store)
    last = n // 1000 - 1
    assert m.grid == (10**12, 10**12) and m.num_blocks == 10**24
    assert m.block_shape(last, last) == (1000, 1000)
    assert m.block_range(last, 3) == ((n - 1000, n), (3000, 4000))
    m.put_block(last, 3, np.full((1000, 1000), 2, np.float32))
    np.testing.assert_array_equal(m.get_block(last, 3), 2)
    np.testing.assert_array_equal(m.get_block(5, 5), 0)  # never written: the fill value
    assert m.block_idxs_exist == [(last, 3)]
    assert m[n - 1, 3999] == 2 and m.T[3999, n - 1] == 2
    with pytest.raises(IndexError, match="1000000000000 x 1000000000000 block grid"):
        m.get_block(last + 1, 0)
    edge = ShardedMatrix("edge", shape=(n + 7, 10), shard_sizes=(1000, 4), dtype="int8",
                         store=store)
    assert edge.grid == (10**12 + 1, 3) and edge.block_shape(10**12, 2) == (7, 2)
    edge.put_block(10**12, 2, np.ones((7, 2), np.int8))
    np.testing.assert_array_equal(edge.get_block(10**12, 2), 1)


def test_two_and_a_half_million_blocks(tmp_path):
    """2.5 million blocks: each get_block used to take 5 s."""
    m = ShardedMatrix("g", shape=(2500 * 4, 1000 * 3), shard_sizes=(4, 3), dtype="int16",
                      store=f"file://{tmp_path}")
    assert m.num_blocks == 2_500_000
    for i, j in [(0, 0), (1234, 567), (2499, 999)]:
        m.put_block(i, j, np.full((4, 3), i % 100, np.int16))
    for i, j in [(0, 0), (1234, 567), (2499, 999)] * 100:
        assert m.get_block(i, j)[0, 0] == i % 100
    assert m.block_idxs_exist == [(0, 0), (1234, 567), (2499, 999)]


# --- full or read-only stores: real file systems ------------------------------------------------


def _mount_tmpfs(path, size: str) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True).returncode == 0


def _umount(path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def full_store(tmp_path):
    """A store on a real 64 KiB tmpfs (mounting needs root; skipped elsewhere)."""
    where = tmp_path / "small"
    if not _mount_tmpfs(where, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield shardwren.open_store(f"file://{where}")
    finally:
        _umount(where)


@pytest.fixture
def read_only_store(tmp_path):
    """A store on a real tmpfs remounted read-only after a matrix was written to it."""
    import subprocess

    where = tmp_path / "ro"
    if not _mount_tmpfs(where, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        store = shardwren.open_store(f"file://{where}")
        ShardedMatrix.from_numpy(np.ones((4, 4), np.float32), "m", (2, 2), store=store)
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield store
    finally:
        _umount(where)


def test_full_store_raises_store_write_error(full_store):
    from shardwren.errors import StoreWriteError

    m = ShardedMatrix("m", shape=(1000, 100), shard_sizes=(100, 100), dtype="float64",
                      store=full_store)
    with pytest.raises(StoreWriteError, match=r"block \(\d, 0\) of matrix 'm'.*'m/c/\d/0'.*full") \
            as info:
        m.shard_matrix(np.ones((1000, 100)))
    assert isinstance(info.value, OSError)
    with pytest.raises(StoreWriteError, match="'big/zarr.json'|full"):
        for n in range(2000):  # fill the rest with metadata: creation fails clearly too
            ShardedMatrix(f"big{n}", shape=(2, 2), dtype="int8", store=full_store)


def test_read_only_store_raises_store_write_error(read_only_store):
    from shardwren.errors import StoreWriteError
    from shardwren.linalg import pairwise_sq_euclidean

    s = read_only_store
    with pytest.raises(StoreWriteError, match="'new/zarr.json'.*read-only file system"):
        ShardedMatrix("new/x", shape=(2, 2), store=s)
    with pytest.raises(StoreWriteError, match=r"block \(0, 0\) of matrix 'm'.*read-only"):
        ShardedMatrix("m", store=s).put_block(0, 0, np.zeros((2, 2), np.float32))
    with pytest.raises(StoreWriteError, match="delete 'm/c/0/0'.*read-only"):
        s.delete("m/c/0/0")
    with pytest.raises(StoreWriteError, match="delete.*read-only"):
        ShardedMatrix("m", store=s).delete()
    import shardwren as sw

    with sw.default_executor(backend="local", store=s, workers=1, progress=False) as ex:
        with pytest.raises(StoreWriteError, match="read-only file system"):
            pairwise_sq_euclidean(np.ones((4, 2)), np.ones((3, 2)), executor=ex)
    np.testing.assert_array_equal(ShardedMatrix("m", store=s).numpy(), 1)  # nothing lost
