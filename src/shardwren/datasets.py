"""MNIST and Fashion-MNIST from the standard IDX files (gzip or not).

Search order for ``<name>`` (``mnist`` or ``fashion-mnist``):

1. ``data_dir=`` (the CLI's ``--data-dir``), either the folder holding the four
   files or its parent;
2. ``$SHARDWREN_DATA_DIR/<name>``;
3. ``~/.cache/shardwren/<name>``;
4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` package);
5. a download from the canonical public mirrors into the cache, verified by the
   MD5 of the decompressed bytes (not when ``SHARDWREN_OFFLINE`` is set).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .errors import DatasetNotFoundError

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: MD5 of each file's decompressed bytes.
CHECKSUMS = {
    "mnist": ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
              "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
    "fashion-mnist": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                      "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
}

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"),
}

Dataset = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every folder searched for ``name``, in order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir) / name, Path(data_dir)]
    if os.environ.get("SHARDWREN_DATA_DIR"):
        dirs.append(Path(os.environ["SHARDWREN_DATA_DIR"]) / name)
    dirs += [cache_dir(name), Path("/usr/share/datasets") / name]
    return [d.expanduser() for d in dirs]


def cache_dir(name: str) -> Path:
    """Where downloads go: ``~/.cache/shardwren/<name>``."""
    return Path("~/.cache/shardwren").expanduser() / name


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        p = folder / (stem + suffix)
        if p.is_file():
            return p
    return None


def _read_bytes(path: Path) -> bytes:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        return fh.read()


def parse_idx(data: bytes, source: str = "") -> np.ndarray:
    """Decode an IDX file (unsigned-byte data) into an array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{source or 'data'} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{source or 'data'} is truncated: header says {dims}, has {body.size} values")
    return body.reshape(dims)


def _download(name: str, dest: Path) -> list[str]:
    """Fetch the four files into ``dest``; return the errors met (empty on success)."""
    errors = []
    dest.mkdir(parents=True, exist_ok=True)
    for stem, md5 in zip(FILES, CHECKSUMS[name]):
        if _find(dest, stem):
            continue
        for mirror in MIRRORS[name]:
            url = f"{mirror}{stem}.gz"
            tmp_name = None
            try:
                with urllib.request.urlopen(url, timeout=15) as resp, \
                        tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
                    tmp_name = tmp.name
                    shutil.copyfileobj(resp, tmp)
                got = hashlib.md5(gzip.decompress(Path(tmp_name).read_bytes())).hexdigest()
                if got != md5:
                    raise ValueError(f"checksum mismatch (md5 {got}, expected {md5})")
                os.replace(tmp_name, dest / f"{stem}.gz")
                break
            except Exception as exc:  # noqa: BLE001 - try the next mirror, report all
                errors.append(f"{url}: {exc}")
                if tmp_name and os.path.exists(tmp_name):
                    os.unlink(tmp_name)
        else:
            return errors
    return []


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load ``"mnist"`` or ``"fashion-mnist"`` as ``(X_train, y_train, X_test, y_test)``.

    Images are float32 ``(n, 784)`` arrays of raw pixel values 0..255; labels int64.

    Raises
    ------
    DatasetNotFoundError
        Listing every place looked in and how to provide the files.
    """
    if name not in CHECKSUMS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(CHECKSUMS)}")
    searched = candidate_dirs(name, data_dir)
    folder = next((d for d in searched if all(_find(d, s) for s in FILES)), None)
    errors: list[str] = []
    if os.environ.get("SHARDWREN_OFFLINE"):
        download = False
    if folder is None and download:
        errors = _download(name, cache_dir(name))
        folder = cache_dir(name) if not errors else None
    if folder is None:
        # The first line stands alone (callers such as `shardwren demo` quote only it):
        # where we looked and why nothing was downloaded; the details follow.
        why = ("the download failed" if errors else
               "not downloaded: SHARDWREN_OFFLINE is set" if os.environ.get("SHARDWREN_OFFLINE")
               else "not downloaded (download=False)")
        raise DatasetNotFoundError(
            f"{name} not found in {', '.join(str(d) for d in searched)}; {why}\n"
            f"Looked for {', '.join(s + '[.gz]' for s in FILES)} in:\n  "
            + "\n  ".join(str(d) for d in searched)
            + ("\nDownload failed:\n  " + "\n  ".join(errors) if errors else "")
            + f"\nPut the four files in one of those folders, pass data_dir= (--data-dir), "
              f"or set SHARDWREN_DATA_DIR to a folder containing '{name}/'"
            + (" (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""))
    paths = [_find(folder, s) for s in FILES]
    arrays = [parse_idx(_read_bytes(p), str(p)) for p in paths if p is not None]
    X_train, y_train, X_test, y_test = arrays
    return (X_train.reshape(len(X_train), -1).astype(np.float32), y_train.astype(np.int64),
            X_test.reshape(len(X_test), -1).astype(np.float32), y_test.astype(np.int64))


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """MNIST: 60,000 training and 10,000 test digits (see :func:`load`)."""
    return load("mnist", data_dir, download)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST: same shapes as MNIST (see :func:`load`)."""
    return load("fashion-mnist", data_dir, download)
