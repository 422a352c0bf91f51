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
