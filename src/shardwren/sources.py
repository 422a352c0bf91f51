"""Matrices that do not fit in memory, read a block of rows at a time.

A *source* is anything with rows: an in-memory array or ``np.memmap``, a ``.npy``
file (memory-mapped), an IDX file (MNIST's format, gzip or not), a zarr array
(a path or URL, ``s3://`` included, or the array object), a dask array, or a
ShardedMatrix. :func:`open_source` wraps any of them behind one small interface
(``shape``, ``dtype``, ``rows(r0, r1)``) and :func:`shard` writes one into a
ShardedMatrix block row by block row, so the driver never holds more than one
block row of it, however large the whole.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from typing import Any, Protocol

import numpy as np

from .errors import DTypeMismatchError, ShapeMismatchError, ShardwrenError, StoreWriteError


class Source(Protocol):
    """Rows of a 2-D matrix, readable a range at a time."""

    shape: tuple[int, int]
    dtype: np.dtype

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` as a numpy array of shape ``(r1 - r0, shape[1])``."""
        ...


class ArraySource:
    """A numpy array, ``np.memmap``, zarr array, dask array or ShardedMatrix (sliced lazily)."""

    def __init__(self, array: Any, name: str = "array"):
        self.array = array
        self.name = name
        if any(isinstance(s, float) and s != s for s in array.shape):  # dask: NaN = unknown
            raise ShapeMismatchError(f"{name} has unknown chunk sizes (shape {array.shape}); "
                                     "compute them first: array.compute_chunk_sizes()")
        shape = tuple(int(s) for s in array.shape)
        if len(shape) == 1:
            shape = (shape[0], 1)
        if len(shape) != 2:
            raise ShapeMismatchError(f"{name} must be 2-D (samples x features), got shape {shape}; "
                                     "reshape images to one row each first")
        self.shape = shape
        self.dtype = np.dtype(array.dtype)
        self._1d = len(array.shape) == 1

    def rows(self, r0: int, r1: int) -> np.ndarray:
        part = self.array[r0:r1]
        if hasattr(part, "compute"):  # dask
            part = part.compute()
        part = np.asarray(part)
        return part.reshape(-1, 1) if self._1d else part


class IdxSource:
    """An IDX file (``.idx3-ubyte``, ``-ubyte.gz``): each item flattened to one row.

    Uncompressed files are memory-mapped; gzip files are read forward only (rows
    must be asked for in increasing order, as :func:`shard` does).
    """

    _TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._gz = self.path.endswith(".gz")
        with self._open() as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in self._TYPES \
                    or head[3] == 0:
                raise ValueError(f"{self.path} is not an IDX file (bad magic number {head!r})")
            sizes = fh.read(4 * head[3])
        if len(sizes) < 4 * head[3]:
            raise ValueError(f"{self.path} is truncated: its IDX header is cut short")
        dims = struct.unpack(f">{head[3]}I", sizes)
        self._offset = 4 + 4 * len(dims)
        self.dtype = np.dtype(self._TYPES[head[2]]).newbyteorder("=")
        self._raw_dtype = np.dtype(self._TYPES[head[2]])
        self.shape = (int(dims[0]), int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1)
        if not self._gz:
            need = self._offset + self.shape[0] * self.shape[1] * self._raw_dtype.itemsize
            have = os.path.getsize(self.path)
            if have < need:
                raise ValueError(f"{self.path} is truncated: its header promises {self.shape[0]} "
                                 f"items ({need:,} bytes), the file has {have:,} bytes")
        self._mm = None if self._gz else np.memmap(self.path, dtype=self._raw_dtype, mode="r",
                                                   offset=self._offset, shape=self.shape)
        self._fh: Any = None
        self._next = 0

    def _open(self):
        return gzip.open(self.path, "rb") if self._gz else open(self.path, "rb")

    def rows(self, r0: int, r1: int) -> np.ndarray:
        if self._mm is not None:
            return np.asarray(self._mm[r0:r1], dtype=self.dtype)
        if self._fh is None or r0 < self._next:
            if self._fh is not None:
                self._fh.close()
            self._fh = self._open()
            self._fh.seek(self._offset)
            self._next = 0
        width = self.shape[1] * self._raw_dtype.itemsize
        if r0 > self._next:
            self._fh.seek((r0 - self._next) * width, os.SEEK_CUR)
        data = self._fh.read((r1 - r0) * width)
        if len(data) < (r1 - r0) * width:
            raise ValueError(f"{self.path} is truncated: its header promises {self.shape[0]} "
                             f"items, the data ends within item {r0 + len(data) // max(width, 1)}")
        self._next = r1
        return np.frombuffer(data, dtype=self._raw_dtype).reshape(r1 - r0, -1).astype(self.dtype)


def open_source(obj: Any, name: str = "input", **storage_options: Any) -> Source:
    """Wrap ``obj`` as a :class:`Source`.

    Parameters
    ----------
    obj : array-like, ShardedMatrix, zarr or dask array, or str / PathLike
        A path ending in ``.npy`` (memory-mapped), ``-ubyte``/``.idx``/``-ubyte.gz``
        (IDX), or ``.zarr`` / any other zarr path or URL (``s3://bucket/x.zarr``).
    storage_options
        Passed to fsspec for zarr URLs (``endpoint_url=``, ...).

    Raises
    ------
    FileNotFoundError
        A path that does not exist (local paths only; URLs fail when read).
    DTypeMismatchError
        A non-numeric array.
    """
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        local = "://" not in path or path.startswith("file://")
        lpath = path[7:] if path.startswith("file://") else path
        if local and not os.path.exists(lpath):
            raise FileNotFoundError(f"{name}: no such file or folder {path!r}")
        if lpath.endswith(".npy"):
            try:
                arr = np.load(lpath, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:  # object arrays, a damaged header: say which file
                raise ValueError(f"{name}: {path!r} is not a numeric .npy array ({exc})") from None
            src: Source = ArraySource(arr, name)
        elif any(lpath.endswith(s) for s in ("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")):
            try:
                src = IdxSource(lpath)
            except (ValueError, struct.error, EOFError, OSError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        else:
            import zarr

            try:
                arr = zarr.open_array(path if not local else lpath, mode="r",
                                      storage_options=storage_options or None)
            except Exception as exc:  # noqa: BLE001 - say what was expected
                raise ValueError(
                    f"{name}: {path!r} is neither a .npy file, an IDX file nor a zarr array "
                    f"({type(exc).__name__}: {exc})") from exc
            src = ArraySource(arr, name)
    else:
        src = ArraySource(obj if hasattr(obj, "shape") and hasattr(obj, "dtype")
                          else np.asarray(obj), name)
    if src.dtype.kind not in "biuf":
        raise DTypeMismatchError(f"{name} must be numeric (int or float), got dtype {src.dtype}")
    return src


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_free_space(store: Any, nbytes: int, what: str) -> None:
    """Refuse, before writing anything, ``nbytes`` that a local store has no room for."""
    if not getattr(store, "is_local", False):
        return  # object stores report no free space; quotas surface as StoreWriteError
    root = store.root
    while not os.path.exists(root):
        root = os.path.dirname(root)
    free = shutil.disk_usage(root).free
    if nbytes > free * 0.98:
        import errno

        raise StoreWriteError(
            errno.ENOSPC,
            f"{what} needs {human_bytes(nbytes)} but the store {store.url} has only "
            f"{human_bytes(free)} free; free space, use another store (--store), or use "
            "fewer rows")


def shard(source: Any, key: str | None = None, block_rows: int = 4000, store: Any = None,
          dtype: Any = None, executor: Any = None, progress: bool | None = None,
          overwrite: bool = True, scratch: str | None = None, name: str = "input"):
    """Write a source into a new ShardedMatrix of whole-row blocks, one block at a time.

    Parameters
    ----------
    source : anything :func:`open_source` takes
    key : str
        The matrix's name in the store.
    block_rows : int
        Rows per block.
    store : str or Store, optional
        Default: the configured default store.
    dtype : numpy dtype, optional
        Store as this dtype (cast block by block, refused unless numpy's safe casting
        allows it). Default: the source's own.
    executor : Executor, optional
        Write the blocks from its workers (each reads its own rows of the source,
        which must then be a path or URL the workers can open); default: from this
        process, one block row at a time.
    scratch : str, optional
        Instead of ``key``: a scratch matrix named after this, owned by this
        process (``shardwren store gc`` removes it if the process dies first).
    name : str
        What errors call the source (``"--query"``, ...).

    Returns
    -------
    ShardedMatrix
    """
    from .matrix import ShardedMatrix, scratch_matrix
    from .storage import open_store

    src = open_source(source, name)
    dt = np.dtype(dtype) if dtype is not None else src.dtype
    if not np.can_cast(src.dtype, dt, "safe"):
        raise DTypeMismatchError(f"cannot store {src.dtype} data as {dt} without losing values")
    st = open_store(store)
    n, d = src.shape
    check_free_space(st, n * d * dt.itemsize, f"sharding a {n} x {d} {dt} matrix")
    blocks = (max(1, min(block_rows, max(n, 1))), max(d, 1))
    created = True
    if scratch is not None:
        M = scratch_matrix(st, scratch, (n, d), blocks, dt)
    elif key is not None:
        try:  # one that is there already is kept if this fails
            ShardedMatrix(key, store=st)
            created = False
        except ShardwrenError:
            pass
        M = ShardedMatrix(key, shape=(n, d), shard_sizes=blocks, dtype=dt, store=st,
                          overwrite=overwrite)
    else:
        raise TypeError("shard() needs key= or scratch=")
    try:
        M.store.delete(M.job_record_key, missing_ok=True)  # no block operation wrote these
        _write_rows(source, src, M, dt, executor, progress)
    except BaseException:
        if created:  # no half-written matrix of its own (one that was there is kept)
            M.delete()
        raise
    return M


def _write_rows(source: Any, src: Source, M: Any, dt: np.dtype, executor: Any,
                progress: bool | None) -> None:
    # The matrix's own block rows: a matrix of 0 rows still has one (empty) block.
    spans = [M.block_range(i, 0)[0] for i in range(M.grid[0])]
    if executor is not None and isinstance(source, (str, os.PathLike)):
        from .futures import get_all_results

        get_all_results(executor.map(
            lambda i: M.put_block(i, 0, open_source(source).rows(*spans[i]).astype(dt, copy=False)),
            range(len(spans))), progress=progress)
        return
    from tqdm.auto import tqdm

    for i, (r0, r1) in enumerate(tqdm(spans, desc=f"sharding {M.key}", unit="block",
                                      disable=not progress)):
        M.put_block(i, 0, src.rows(r0, r1).astype(dt, copy=False))
