"""Sharding inputs that need not fit in memory: memmaps, .npy, IDX, zarr, dask; MNIST-8M."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import shardwren
from shardwren import mnist8m, sources
from shardwren.errors import DTypeMismatchError, ShapeMismatchError, StoreWriteError
from shardwren.matrix import ShardedMatrix


def _idx_bytes(a: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}[a.dtype.type]
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def data():
    return np.random.default_rng(0).integers(0, 255, (1037, 13)).astype(np.uint8)


@pytest.mark.parametrize("kind", ["array", "memmap", "npy", "idx", "idx.gz", "zarr", "dask"])
def test_every_source_round_trips(tmp_path, data, kind):
    path = tmp_path / "x"
    if kind == "array":
        src = data
    elif kind == "memmap":
        mm = np.memmap(tmp_path / "x.bin", dtype=data.dtype, mode="w+", shape=data.shape)
        mm[:] = data
        mm.flush()
        src = np.memmap(tmp_path / "x.bin", dtype=data.dtype, mode="r", shape=data.shape)
    elif kind == "npy":
        np.save(tmp_path / "x.npy", data)
        src = str(tmp_path / "x.npy")
    elif kind == "idx":
        (tmp_path / "x-ubyte").write_bytes(_idx_bytes(data.reshape(-1, 13)))
        src = str(tmp_path / "x-ubyte")
    elif kind == "idx.gz":
        (tmp_path / "x-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(data)))
        src = str(tmp_path / "x-ubyte.gz")
    elif kind == "zarr":
        import zarr

        z = zarr.create_array(str(path) + ".zarr", shape=data.shape, chunks=(100, 13),
                              dtype=data.dtype)
        z[:] = data
        src = str(path) + ".zarr"
    else:
        da = pytest.importorskip("dask.array")
        src = da.from_array(data, chunks=(300, 13))
    M = sources.shard(src, "m", block_rows=250, store=f"file://{tmp_path}/store")
    assert M.shape == data.shape and M.dtype == np.uint8 and M.shard_sizes == (250, 13)
    np.testing.assert_array_equal(M.numpy(), data)


def test_idx_images_are_flattened_and_gz_reads_forward(tmp_path):
    imgs = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    (tmp_path / "i-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(imgs)))
    src = sources.open_source(str(tmp_path / "i-ubyte.gz"))
    assert src.shape == (5, 12)
    np.testing.assert_array_equal(src.rows(3, 5), imgs[3:].reshape(2, 12))
    np.testing.assert_array_equal(src.rows(0, 2), imgs[:2].reshape(2, 12))  # rewinds


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        sources.open_source(str(tmp_path / "missing.npy"))
    with pytest.raises(ShapeMismatchError, match="2-D"):
        sources.open_source(np.zeros((2, 3, 4)))
    with pytest.raises(DTypeMismatchError, match="numeric"):
        sources.open_source(np.array([["a"]]))
    (tmp_path / "junk").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="neither a .npy file"):
        sources.open_source(str(tmp_path / "junk"))
    with pytest.raises(DTypeMismatchError, match="without losing"):
        sources.shard(np.ones((3, 2)), "m", store=f"file://{tmp_path}/s", dtype=np.uint8)


def test_no_room_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    store = shardwren.open_store(f"file://{tmp_path}/s")
    with pytest.raises(StoreWriteError, match=r"needs 80.0 kB but .* has only 1.0 kB free"):
        sources.shard(np.ones((100, 100)), "m", store=store)
    assert not store.list("m")  # nothing written


def test_sharding_from_workers_reads_the_file_there(tmp_path, data, executor):
    np.save(tmp_path / "x.npy", data)
    M = sources.shard(str(tmp_path / "x.npy"), "w", block_rows=300, store=executor.store,
                      executor=executor)
    np.testing.assert_array_equal(M.numpy(), data)
    M.delete()


# --- MNIST-8M ----------------------------------------------------------------------------


def test_deform_is_deterministic_and_keeps_digits():
    rng = np.random.default_rng(0)
    imgs = np.zeros((3, 28, 28), dtype=np.uint8)
    imgs[:, 8:20, 12:16] = 255  # a bar
    a = mnist8m.deform(imgs, np.random.default_rng(5))
    b = mnist8m.deform(imgs, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == imgs.shape
    # Small deformations: most of the ink stays, the image changes.
    assert 0.6 < a.astype(float).sum() / imgs.astype(float).sum() < 1.4
    assert (a != imgs).any()
    del rng


def test_generate_mnist8m_prefix(tmp_path, mnist, executor):
    X, y, _, _ = mnist
    n = 130_000  # MNIST itself, a full deformed copy, and part of another
    Xm, Ym = mnist8m.generate(n, key="m8", store=executor.store, executor=executor, block=20000)
    assert Xm.shape == (n, 784) and Xm.dtype == np.uint8 and Ym.shape == (n, 1)
    np.testing.assert_array_equal(Xm[:60000], X.astype(np.uint8))  # copy 0 is MNIST
    np.testing.assert_array_equal(Ym.numpy()[:, 0], y[np.arange(n) % 60000])
    block = Xm.get_block(4, 0)  # rows 80000..99999: deformations
    np.testing.assert_array_equal(block, mnist8m.block_rows(X.astype(np.uint8), 80000, 100000, 0))
    assert (block != X[20000:40000].astype(np.uint8)).any(axis=1).mean() > 0.9
    # Resuming regenerates only missing blocks, identically.
    Xm.delete_block(2, 0)
    Xm2, _ = mnist8m.generate(n, key="m8", store=executor.store, executor=executor, block=20000)
    np.testing.assert_array_equal(Xm2.get_block(2, 0), mnist8m.block_rows(
        X.astype(np.uint8), 40000, 60000, 0))
    Xm.delete()
    Ym.delete()
    assert isinstance(Xm2, ShardedMatrix)


def test_cli_knn_on_user_files(tmp_path, mnist):
    from click.testing import CliRunner

    import zarr

    from shardwren import cli

    from reference import reference_knn

    X, y, Xt, yt = mnist
    np.save(tmp_path / "X.npy", X[:3000])
    np.save(tmp_path / "Q.npy", Xt[:200])
    np.save(tmp_path / "y.npy", y[:3000])
    np.save(tmp_path / "yt.npy", yt[:200])
    out = tmp_path / "result.zarr"
    res = CliRunner().invoke(cli.main, [
        "knn", "--train", str(tmp_path / "X.npy"), "--query", str(tmp_path / "Q.npy"),
        "--train-labels", str(tmp_path / "y.npy"), "--query-labels", str(tmp_path / "yt.npy"),
        "--k", "3", "--block-size", "1000", "--out", str(out), "--workers", "2",
        "--store", f"file://{tmp_path}/store"])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output
    g = zarr.open_group(str(out), mode="r")
    rd, ri = reference_knn(X[:3000], Xt[:200], 3)
    np.testing.assert_array_equal(g["indices"][:], ri)
    np.testing.assert_array_equal(g["distances"][:], rd)
    assert g["predictions"].shape == (200,)
    left = shardwren.open_store(f"file://{tmp_path}/store").list("tmp")
    assert not [k for k in left if k.count("/") >= 2]  # scratch matrices removed (a group node may stay)
    bad = CliRunner().invoke(cli.main, ["knn", "--train", str(tmp_path / "nope.npy")])
    assert bad.exit_code != 0 and "no such file" in bad.output


def test_damaged_and_empty_sources_get_errors_that_name_them(tmp_path):
    store = f"file://{tmp_path}/store"
    imgs = np.arange(50 * 4 * 4, dtype=np.uint8).reshape(50, 4, 4)
    whole = _idx_bytes(imgs)
    (tmp_path / "t-ubyte").write_bytes(whole[:-100])
    (tmp_path / "t-ubyte.gz").write_bytes(gzip.compress(whole[:-100]))
    with pytest.raises(ValueError, match=r"t-ubyte is truncated: its header promises 50 items"):
        sources.shard(str(tmp_path / "t-ubyte"), "t", block_rows=10, store=store)
    with pytest.raises(ValueError, match=r"t-ubyte.gz is truncated"):
        sources.shard(str(tmp_path / "t-ubyte.gz"), "tgz", block_rows=10, store=store)
    assert not shardwren.open_store(store).list("tgz")  # no half-written matrix is left
    (tmp_path / "h-ubyte").write_bytes(whole[:6])  # cut inside the header
    with pytest.raises(ValueError, match="header is cut short"):
        sources.open_source(str(tmp_path / "h-ubyte"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"--query: .*obj.npy' is not a numeric .npy array"):
        sources.shard(str(tmp_path / "obj.npy"), "o", store=store, name="--query")
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.arange(10.0).reshape(5, 2), chunks=(2, 2))
    with pytest.raises(ShapeMismatchError, match="compute_chunk_sizes"):
        sources.open_source(x[x[:, 0] > 3])
    # no rows: an empty matrix, read back as such (it had no block to read)
    empty = sources.shard(np.zeros((0, 5), np.float32), "empty", store=store)
    assert empty.numpy().shape == (0, 5)
    import zarr

    zarr.create_array(str(tmp_path / "store" / "z0"), shape=(0, 4), chunks=(2, 2), dtype="f4")
    assert ShardedMatrix("z0", store=store).numpy().shape == (0, 4)  # zarr-python's, in place


def test_a_failed_shard_keeps_the_matrix_that_was_there(tmp_path):
    store = f"file://{tmp_path}/store"
    data = np.arange(50 * 16, dtype=np.uint8).reshape(50, 16)
    sources.shard(data, "x_train", block_rows=10, store=store)
    (tmp_path / "t-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(data.reshape(50, 4, 4))[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        sources.shard(str(tmp_path / "t-ubyte.gz"), "x_train", block_rows=10, store=store)
    assert ShardedMatrix("x_train", store=store).numpy().shape == (50, 16)  # still readable
