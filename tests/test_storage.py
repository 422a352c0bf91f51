from __future__ import annotations

import os

import numpy as np
import pickle
import stat
import threading

import pytest

import shardwren
from shardwren.errors import BackendNotInstalledError, KeyNotFoundError, UnknownSchemeError


def test_put_get_exists_delete_list(store):
    assert store.list() == []
    store.put("a/b/c", b"hello")
    store.put("a/d", b"x" * 1000)
    store.put("e", b"")
    assert store.get("a/b/c") == b"hello"
    assert store.get("e") == b""
    assert store.exists("a/d") and not store.exists("a/zzz")
    assert store.list() == ["a/b/c", "a/d", "e"]
    assert store.list("a") == ["a/b/c", "a/d"]
    assert store.list("nothing/here") == []
    store.put("a/d", b"replaced")
    assert store.get("a/d") == b"replaced"
    store.delete("a/b/c")
    assert not store.exists("a/b/c")
    store.delete("a")  # a prefix: everything under it
    assert store.list() == ["e"]


def test_missing_key_is_file_not_found(store):
    with pytest.raises(KeyNotFoundError, match="'nope'") as info:
        store.get("nope")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        store.delete("nope")
    store.delete("nope", missing_ok=True)


def test_store_pickles_as_url_and_options(store):
    store.put("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone.url == store.url
    assert clone.get("k") == b"v"
    assert len(pickle.dumps(store)) < 1000


def test_repr_hides_options(tmp_path):
    s = shardwren.Store(f"file://{tmp_path}", secret_token="hunter2")
    assert "hunter2" not in repr(s)


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "/", "a//b"])
def test_bad_keys(store, key):
    with pytest.raises(ValueError, match="invalid store key"):
        store.get(key)


def test_unknown_scheme():
    with pytest.raises(UnknownSchemeError, match="nosuch"):
        shardwren.open_store("nosuch://x")


def test_scheme_needing_missing_package_says_what_to_install():
    # fsspec knows 'dropbox' but its implementation package is not installed here.
    with pytest.raises(BackendNotInstalledError, match="dropbox"):
        shardwren.open_store("dropbox://x")


def test_default_store_from_environment(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "store"
    monkeypatch.setenv("SHARDWREN_STORE", str(target))
    s = shardwren.open_store()
    assert s.url == f"file://{target}"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_default_store_in_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SHARDWREN_STORE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SHARDWREN_CONFIG", str(tmp_path / "none.toml"))
    s = shardwren.open_store()
    assert s.url == f"file://{tmp_path}/.shardwren/store"


def test_local_put_is_atomic(tmp_path):
    """A reader never sees a partly written value, and no temp file is left behind."""
    s = shardwren.open_store(f"file://{tmp_path}")
    big_a, big_b = b"a" * 4_000_000, b"b" * 4_000_000
    s.put("k", big_a)
    stop = threading.Event()
    seen = set()

    def reader():
        while not stop.is_set():
            v = s.get("k")
            seen.add(v[:1] + v[-1:] + bytes([len(v) == 4_000_000]))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        s.put("k", big_b if i % 2 else big_a)
    stop.set()
    t.join()
    assert seen <= {b"aa\x01", b"bb\x01"}
    assert os.listdir(tmp_path) == ["k"]


def test_s3_store_is_real_s3(s3_url, s3_endpoint):
    """Objects written through the store are visible to a plain boto3 client."""
    import boto3

    s = shardwren.open_store(s3_url)
    s.put("x/y", b"123")
    bucket = s3_url.split("/")[2]
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=bucket, Key="prefix/x/y")
    assert body["Body"].read() == b"123"


@pytest.mark.parametrize("err,words", [(28, "full"), (30, "read-only file system"),
                                       (13, "read-only for this user")])
def test_full_or_read_only_store_is_named(tmp_path, monkeypatch, err, words):
    """The OS's refusal (ENOSPC, EROFS, EACCES) becomes an error that says what is wrong.

    Root ignores file permissions and no small file system can be mounted here, so
    the OS error is injected at the open() the store calls.
    """
    import builtins

    from shardwren.errors import StoreWriteError
    from shardwren.matrix import ShardedMatrix

    s = shardwren.open_store(f"file://{tmp_path}")
    m = ShardedMatrix("m", shape=(4, 4), shard_sizes=(2, 2), dtype="float32", store=s)
    real_open = builtins.open

    def refusing_open(file, mode="r", *a, **k):
        if "w" in mode and str(tmp_path) in str(file):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(StoreWriteError, match=words) as info:
        s.put("k", b"x")
    assert isinstance(info.value, OSError) and str(tmp_path) in str(info.value)
    import pathlib

    monkeypatch.setattr(pathlib.Path, "open", lambda self, mode="r", *a, **k: refusing_open(str(self), mode, *a, **k))
    with pytest.raises(StoreWriteError, match=rf"block \(0, 1\).*{words}"):
        m.put_block(0, 1, np.ones((2, 2), np.float32))


# --- issue 16: exclusive creation, buffers, ranges --------------------------------------------


def test_put_if_absent_creates_once(store):
    assert store.put_if_absent("a/meta", b"first") is True
    assert store.put_if_absent("a/meta", b"second") is False
    assert store.get("a/meta") == b"first"
    assert store.exclusive_create
    assert store.list("a") == ["a/meta"]  # no temporaries left behind


def test_put_if_absent_one_winner_among_threads(store):
    from concurrent.futures import ThreadPoolExecutor

    for trial in range(5):
        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(lambda n: store.put_if_absent(f"k{trial}", f"v{n}".encode()),
                                range(8)))
        assert won.count(True) == 1
        assert store.get(f"k{trial}") == f"v{won.index(True)}".encode()


def test_get_buffer_range_and_size(store):
    data = bytes(range(256)) * 40
    store.put("b/v", [data[:100], memoryview(data)[100:]])
    buf = store.get_buffer("b/v")
    assert buf.dtype == np.uint8 and bytes(buf) == data
    assert store.get_range("b/v", -4) == data[-4:]
    assert store.get_range("b/v", 10, 20) == data[10:20]
    assert store.size("b/v") == len(data)
    with pytest.raises(KeyNotFoundError):
        store.get_buffer("b/none")
    with pytest.raises(KeyNotFoundError):
        store.size("b/none")


def test_local_buffers_are_fresh_or_mapped(tmp_path, monkeypatch):
    import shardwren.storage

    s = shardwren.open_store(f"file://{tmp_path}")
    s.put("v", b"x" * 5000)
    assert s.get_buffer("v").flags.writeable  # fresh memory, the caller's
    monkeypatch.setattr(shardwren.storage, "MAP_MIN_BYTES", 4096)
    mapped = s.get_buffer("v", mapped=True)
    assert not mapped.flags.writeable and bytes(mapped[:3]) == b"xxx"
    s.put("v", b"y" * 5000)  # replaced by rename: the mapping keeps what it saw
    assert bytes(mapped[:3]) == b"xxx" and bytes(s.get_buffer("v", mapped=True)[:3]) == b"yyy"


def test_a_folder_is_not_a_value(tmp_path):
    from shardwren.errors import KeyIsPrefixError

    s = shardwren.open_store(f"file://{tmp_path}")
    s.put("dir/inner", b"1")
    for read in (s.get, s.get_buffer, s.size, lambda k: s.get_range(k, 0)):
        with pytest.raises(KeyIsPrefixError, match="'dir' .* is a prefix"):
            read("dir")


def test_list_is_strictly_under_the_prefix(store):
    store.put("ab/x", b"1")
    store.put("a/y", b"2")
    store.put("a", b"3") if store.scheme != "file" else None
    assert store.list("a") == ["a/y"]
    assert store.list("ab") == ["ab/x"]


def test_local_write_temporaries_carry_the_owner_tag(tmp_path, monkeypatch):
    from shardwren.storage import _owners

    s = shardwren.open_store(f"file://{tmp_path}")
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    s.put("k", b"v")
    assert seen and f".{_owners.owner_tag()}." in seen[0] and seen[0].endswith(".partial")
    assert s.temporaries() == []


def test_delete_refused_names_the_key(tmp_path, monkeypatch):
    import shutil

    from shardwren.errors import StoreWriteError

    s = shardwren.open_store(f"file://{tmp_path}")
    s.put("d/x", b"1")

    def refuse(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "remove", refuse)
    monkeypatch.setattr(os, "unlink", refuse)
    monkeypatch.setattr(os, "rmdir", refuse)
    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(StoreWriteError, match="cannot delete 'd/x'.*read-only file system"):
        s.delete("d/x")


def test_zarr_adapter_round_trip(store):
    import zarr

    z = zarr.create_array(store.zarr_store("zz"), shape=(5, 5), chunks=(2, 2), dtype="i4")
    z[:] = np.arange(25).reshape(5, 5)
    again = zarr.open_array(store.zarr_store("zz"), mode="r")
    np.testing.assert_array_equal(again[:], np.arange(25).reshape(5, 5))
    assert "zz/zarr.json" in store.list("zz")


def test_delete_never_reads_a_key_as_a_glob_pattern(store):
    """On s3:// and memory://, fsspec's rm expanded 'data*' into data_important and
    dataset/part0, and deleting matrix 'exp[12]' wiped matrices exp1 and exp2."""
    from shardwren.matrix import ShardedMatrix

    keys = ["data*", "data_important", "dataset/part0", "q?", "qx", "r[ab]", "ra", "rb"]
    for k in keys:
        store.put(k, k.encode())
    for k in ("data*", "q?", "r[ab]"):
        store.delete(k)
    assert store.list() == ["data_important", "dataset/part0", "qx", "ra", "rb"]
    for name in ("exp1", "exp2", "exp[12]", "runA", "run*"):
        ShardedMatrix.from_numpy(np.ones((4, 2)), f"m/{name}", (2, 2), store=store)
    ShardedMatrix("m/exp[12]", store=store).delete()
    ShardedMatrix("m/run*", store=store).delete()
    for name in ("exp1", "exp2", "runA"):
        np.testing.assert_array_equal(ShardedMatrix(f"m/{name}", store=store).numpy(),
                                      np.ones((4, 2)))
    assert not any(k.startswith(("m/exp[12]", "m/run*")) for k in store.list())
    with pytest.raises(KeyNotFoundError):
        store.delete("nothing*")


def test_an_unreachable_object_store_is_named_not_taken_for_empty():
    """exists() answered False (fsspec's isfile swallows every error) and reads raised
    botocore's EndpointConnectionError, which is not even an OSError."""
    pytest.importorskip("s3fs")
    from shardwren.errors import StoreUnavailableError

    from dask_cluster import free_port  # nothing listens there

    # One try each (the default, five with backoff, takes about 14 s per call here)
    st = shardwren.open_store("s3://bucket/p", endpoint_url=f"http://127.0.0.1:{free_port()}",
                              key="testing", secret="testing",
                              config_kwargs={"retries": {"max_attempts": 1}})
    for call in (lambda: st.exists("k"), lambda: st.get("k"), lambda: st.list()):
        with pytest.raises(StoreUnavailableError, match="cannot reach the store") as info:
            call()
        assert isinstance(info.value, ConnectionError)  # retried by the executor's policy
    with pytest.raises(StoreUnavailableError):
        st.put("k", b"x")


def test_a_delete_the_object_store_ignores_is_an_error(s3_url, monkeypatch):
    """S3's bulk delete answers 200 and lists refused keys in its body, which s3fs ignores:
    deleting a prefix returned as if done while every key stayed."""
    from shardwren.errors import StoreWriteError

    st = shardwren.open_store(s3_url)
    st.put("pre/a", b"1")
    st.put("pre/b", b"2")
    monkeypatch.setattr(st.fs, "rm", lambda *a, **k: None)  # refuses, silently
    with pytest.raises(StoreWriteError, match="kept 2 of 2 keys"):
        st.delete("pre")
    monkeypatch.undo()
    st.delete("pre")
    assert st.list("pre") == []


def test_a_missing_bucket_is_named_as_such(s3_endpoint):
    """The hint said "free space, fix its permissions" for a bucket that does not exist."""
    from shardwren.errors import StoreWriteError

    st = shardwren.open_store("s3://no-such-bucket-here/p")
    with pytest.raises(StoreWriteError, match="its bucket does not exist; create the bucket"):
        st.put("k", b"x")
