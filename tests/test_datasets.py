"""Dataset search order and downloads (served over HTTP on 127.0.0.1)."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading

import numpy as np
import pytest

from shardwren import datasets
from shardwren.errors import DatasetNotFoundError


def _fake_idx(path, images: bool, n: int, seed: int):
    rng = np.random.default_rng(seed)
    if images:
        header = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        body = rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
    else:
        header = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big")
        body = rng.integers(0, 10, n, dtype=np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + body)
    return header + body


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Four small IDX files behind a loopback HTTP server posing as the MNIST mirror."""
    import hashlib

    root = tmp_path / "mirror"
    root.mkdir()
    sums = []
    for stem, images, n in zip(datasets.FILES, (True, False, True, False), (50, 50, 20, 20)):
        raw = _fake_idx(root / f"{stem}.gz", images, n, len(sums))
        sums.append(hashlib.md5(raw).hexdigest())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(datasets.MIRRORS, "mnist", (f"http://127.0.0.1:{server.server_port}/",))
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", tuple(sums))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHARDWREN_DATA_DIR", raising=False)
    monkeypatch.delenv("SHARDWREN_OFFLINE", raising=False)
    yield root
    server.shutdown()


def test_download_into_cache_with_checksums(served, tmp_path):
    X, y, Xt, yt = datasets.load_mnist()
    assert X.shape == (50, 784) and X.dtype == np.float32 and Xt.shape == (20, 784)
    assert y.dtype == np.int64 and y.max() < 10
    cache = tmp_path / "home" / ".cache" / "shardwren" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f + ".gz" for f in datasets.FILES)
    shutil.rmtree(served)  # now served from the cache
    assert datasets.load_mnist()[0].shape == (50, 784)


def test_corrupted_download_is_refused(served, tmp_path):
    _fake_idx(served / f"{datasets.FILES[0]}.gz", True, 50, seed=99)  # not what the checksum says
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        datasets.load_mnist()
    cache = tmp_path / "home" / ".cache" / "shardwren" / "mnist"
    assert not (cache / f"{datasets.FILES[0]}.gz").exists()


def test_offline_does_not_download(served, monkeypatch):
    monkeypatch.setenv("SHARDWREN_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="Put the four files"):
        datasets.load_mnist()


def test_uncompressed_files_and_data_dir(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem, images, n in zip(datasets.FILES, (True, False, True, False), (5, 5, 3, 3)):
        raw = _fake_idx(tmp_path / "x.gz", images, n, 0)
        (folder / stem).write_bytes(raw)
    X, y, Xt, yt = datasets.load("mnist", data_dir=tmp_path, download=False)
    assert X.shape == (5, 784) and yt.shape == (3,)


def test_truncated_idx_is_a_clear_error():
    with pytest.raises(ValueError, match="truncated"):
        datasets.parse_idx(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x01\x02")
