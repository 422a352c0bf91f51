"""ShardedMatrix: a 2-D numpy matrix kept as blocks in an object store.

Each matrix is a Zarr v3 array at ``<store>/<key>`` whose chunks are the blocks,
so ``zarr.open_array(url)`` and ``dask.array.from_zarr(url)`` read it with no
shardwren code. Every chunk carries a crc32c checksum; compression is optional.

The constructor follows the 2017 PyWren tutorial's ``matrix.ShardedMatrix``::

    X_sharded = ShardedMatrix("x_train", shape=X.shape, bucket=BUCKET, shard_sizes=[4000, 784])
    X_sharded.shard_matrix(X, n_jobs=16)
    block = X_sharded.get_block(0, 0)
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .. import _iostats
from ..errors import (
    BlockNotFoundError,
    CorruptBlockError,
    DTypeMismatchError,
    KeyNotFoundError,
    MatrixExistsError,
    ShapeMismatchError,
)
from ..storage import Store, open_store

if TYPE_CHECKING:
    from ..executor import Executor

#: The codecs of an uncompressed, checksummed array (see _read_raw_chunk).
_RAW_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
#: Attribute marking an array whose dtype the first written block will fix.
_PENDING = "shardwren_dtype_pending"
#: Mapped chunk reads fault their pages in at once (Linux), not one by one.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: Smaller chunks are read, not mapped: each mapping keeps a file descriptor open
#: (Python's mmap holds a duplicate), and small reads are cheap anyway.
MAP_MIN_BYTES = 4 << 20
#: Compression choices; "none" (checksum only) measured fastest end to end on a
#: local store (README, "ShardedMatrix storage").
COMPRESSORS = ("none", "zstd", "lz4")
DEFAULT_COMPRESSOR = "none"


def _codecs(compressor: str) -> list:
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if compressor == "none":
        return [Crc32cCodec()]
    if compressor == "zstd":
        return [ZstdCodec(level=1), Crc32cCodec()]
    if compressor == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"), Crc32cCodec()]
    raise ValueError(f"unknown compressor {compressor!r}; choose one of {COMPRESSORS}")


def _store_from(bucket: Any, store: Any) -> Store:
    if store is not None:
        return open_store(store)
    if isinstance(bucket, Store):
        return bucket
    if bucket:
        # The tutorial passes an S3 bucket name; a URL (what pywren.wrenconfig gives) works too.
        return open_store(bucket if "://" in str(bucket) else f"s3://{bucket}")
    return open_store(None)


def _grid(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)] or [(0, 0)]


class ShardedMatrix:
    """A 2-D matrix stored as blocks (a Zarr v3 array) in a store.

    Parameters
    ----------
    key : str
        Name of the matrix inside the store.
    shape : (int, int), optional
        Create the matrix with this shape. Omit to open an existing one.
    bucket : str, optional
        The tutorial's name for the store: a bucket name (meaning ``s3://bucket``)
        or any store URL.
    shard_sizes : (int, int), optional
        Block shape (default: the whole matrix as one block). Edge blocks are clipped.
    dtype : numpy dtype, optional
        When omitted, the first block written fixes it.
    store : str or Store, optional
        Where to keep the matrix (default: the configured default store).
    overwrite : bool
        Re-creating an existing matrix with another shape, block size or dtype
        replaces it with a warning (the tutorial reuses keys); ``False`` makes it an error.
    fill_value : scalar, optional
        Value of blocks never written. Without it, reading one raises
        :class:`BlockNotFoundError`.
    compressor : {"none", "zstd", "lz4"}
        Chunk compression; every chunk also carries a crc32c checksum.
    """

    def __init__(self, key: str, shape: Sequence[int] | None = None, bucket: Any = None,
                 shard_sizes: Sequence[int] | None = None, dtype: Any = None,
                 store: Any = None, overwrite: bool = True, fill_value: Any = None,
                 compressor: str = DEFAULT_COMPRESSOR):
        self.key = key.strip("/")
        self.store = _store_from(bucket, store)
        self._array = None
        self._transposed = False
        if shape is None:
            self._load_meta()
        else:
            self._create(shape, shard_sizes, dtype, overwrite, fill_value, compressor)

    # -- creation and metadata --------------------------------------------------------
    def _create(self, shape, shard_sizes, dtype, overwrite, fill_value, compressor) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 0:
            raise ShapeMismatchError(f"a ShardedMatrix is 2-D with non-negative sizes, got shape {shape}")
        shard_sizes = tuple(int(s) for s in (shard_sizes or shape))
        if len(shard_sizes) != 2 or min(shard_sizes) < 1:
            raise ShapeMismatchError(f"shard_sizes must be two positive ints, got {shard_sizes}")
        want_dtype = None if dtype is None else np.dtype(dtype)
        existing = self._read_meta()
        if existing is not None:
            same = (existing["shape"] == shape and existing["shard_sizes"] == shard_sizes
                    and (want_dtype is None or existing["dtype"] in (None, want_dtype)))
            if same:
                self._set_meta(existing)
                if want_dtype is not None and existing["dtype"] is None:
                    self._fix_dtype(want_dtype)
                return
            msg = (f"matrix {self.key!r} in {self.store.url} exists with shape {existing['shape']}, "
                   f"blocks {existing['shard_sizes']}, dtype {existing['dtype']}; the new one has "
                   f"shape {shape}, blocks {shard_sizes}, dtype {want_dtype}")
            if not overwrite:
                raise MatrixExistsError(msg + "; delete it, pick another key, or pass overwrite=True")
            warnings.warn(msg + ": replacing it", stacklevel=3)
        self._write_array(shape, shard_sizes, want_dtype, fill_value, compressor, overwrite=True)

    def _write_array(self, shape, shard_sizes, dtype, fill_value, compressor, overwrite) -> None:
        import zarr

        attrs = {"shardwren_compressor": compressor, "shardwren_fill": fill_value}
        if dtype is None:
            attrs[_PENDING] = True
        arr = zarr.create_array(
            self.store.zarr_store(self.key), shape=shape, chunks=shard_sizes,
            dtype=dtype or np.float64, compressors=_codecs(compressor),
            fill_value=0 if fill_value is None else fill_value, overwrite=overwrite,
            attributes=attrs,
            config={"write_empty_chunks": True},
        )
        self._array = arr
        self._set_meta({"shape": shape, "shard_sizes": shard_sizes, "dtype": dtype,
                        "fill": fill_value, "compressor": compressor,
                        "raw": compressor == "none"})

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.store.get(f"{self.key}/zarr.json"))
        except KeyNotFoundError:
            return None
        attrs = doc.get("attributes", {})
        raw = (doc.get("codecs") == _RAW_CODECS
               and doc.get("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}})
        return {
            "raw": raw,
            "shape": tuple(doc["shape"]),
            "shard_sizes": tuple(doc["chunk_grid"]["configuration"]["chunk_shape"]),
            "dtype": None if attrs.get(_PENDING) else np.dtype(doc["data_type"]),
            "fill": attrs.get("shardwren_fill"),
            "compressor": attrs.get("shardwren_compressor", DEFAULT_COMPRESSOR),
        }

    def _load_meta(self) -> None:
        meta = self._read_meta()
        if meta is None:
            raise KeyNotFoundError(
                f"no matrix {self.key!r} in store {self.store.url}; create it by giving a shape: "
                f"ShardedMatrix({self.key!r}, shape=..., shard_sizes=...)")
        self._set_meta(meta)

    def _set_meta(self, meta: dict[str, Any]) -> None:
        self._shape = meta["shape"]
        self._shard_sizes = meta["shard_sizes"]
        self._dtype = meta["dtype"]
        self._fill = meta["fill"]
        self._compressor = meta["compressor"]
        # Chunks stored as plain little-endian bytes plus a crc32c (our default layout)
        # on a local disk can be read without zarr's codec pipeline (twice as fast).
        self._raw = bool(meta.get("raw")) and self.store.is_local

    def _refresh_dtype(self) -> None:
        """A handle made before the first write learns the dtype that write fixed."""
        if self._dtype is None:
            meta = self._read_meta()
            if meta is not None and meta["dtype"] is not None:
                self._set_meta(meta)
                self._array = None

    def _fix_dtype(self, dtype: np.dtype) -> None:
        """First write to a matrix created without dtype: record the block's dtype.

        Only ``zarr.json`` is rewritten (atomically), never the chunks, so a
        concurrent first writer of another block loses nothing; concurrent first
        writers of the same dtype write identical metadata.
        """
        self._refresh_dtype()
        if self._dtype is not None:
            return
        doc = json.loads(self.store.get(f"{self.key}/zarr.json"))
        dtype = np.dtype(dtype).newbyteorder("<") if dtype.byteorder == ">" else np.dtype(dtype)
        doc["data_type"] = dtype.name
        fill = self._fill if self._fill is not None else 0
        doc["fill_value"] = ([float(np.real(fill)), float(np.imag(fill))] if dtype.kind == "c"
                             else bool(fill) if dtype.kind == "b"
                             else int(fill) if dtype.kind in "iu" else float(fill))
        doc["attributes"].pop(_PENDING, None)
        self.store.put(f"{self.key}/zarr.json", json.dumps(doc, indent=2).encode())
        self._dtype = dtype
        self._array = None

    @property
    def zarr(self):
        """The underlying ``zarr.Array`` (opened once per process)."""
        if self._array is None:
            import zarr

            self._array = zarr.open_array(self.store.zarr_store(self.key), mode="r+",
                                          config={"write_empty_chunks": True})
        return self._array

    # -- pickling: small, never data --------------------------------------------------
    def __reduce__(self):
        return (_rebuild, (self.store, self.key, self._shape, self._shard_sizes,
                           None if self._dtype is None else self._dtype.str, self._fill,
                           self._compressor, self._transposed, self._raw))

    def __repr__(self) -> str:
        t = ".T" if self._transposed else ""
        return (f"ShardedMatrix({self.key!r}{t}, shape={self.shape}, shard_sizes={self.shard_sizes}, "
                f"dtype={self.dtype}, store={self.store.url!r})")

    # -- geometry (all in the view's orientation) -----------------------------------
    def _o(self, pair: tuple) -> tuple:
        return pair[::-1] if self._transposed else pair

    @property
    def shape(self) -> tuple[int, int]:
        return self._o(self._shape)

    @property
    def shard_sizes(self) -> tuple[int, int]:
        return self._o(self._shard_sizes)

    @property
    def dtype(self) -> np.dtype | None:
        """The element type (``None`` until the first block is written, if none was given)."""
        self._refresh_dtype()  # another process may have written the first block
        return self._dtype

    @property
    def grid(self) -> tuple[int, int]:
        """Number of blocks along each axis."""
        return tuple(len(_grid(n, s)) for n, s in zip(self.shape, self.shard_sizes))

    @property
    def blocks(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Row and column ranges of every block, row-major like :attr:`block_idxs`."""
        rows = _grid(self.shape[0], self.shard_sizes[0])
        cols = _grid(self.shape[1], self.shard_sizes[1])
        return list(itertools.product(rows, cols))

    @property
    def block_idxs(self) -> list[tuple[int, int]]:
        """Every block index ``(i, j)``, row-major."""
        return list(itertools.product(range(self.grid[0]), range(self.grid[1])))

    @property
    def num_blocks(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def block_idxs_exist(self) -> list[tuple[int, int]]:
        """Blocks that have been written."""
        found = set()
        for k in self.store.list(f"{self.key}/c"):
            parts = k.split("/")
            if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
                found.add(self._o((int(parts[2]), int(parts[3]))))
        return sorted(found)

    @property
    def block_idxs_not_exist(self) -> list[tuple[int, int]]:
        """Blocks not written yet."""
        have = set(self.block_idxs_exist)
        return [b for b in self.block_idxs if b not in have]

    def block_shape(self, i: int, j: int) -> tuple[int, int]:
        """Shape of block ``(i, j)`` (edge blocks are smaller)."""
        self._check_index(i, j)
        (r0, r1), (c0, c1) = _grid(self.shape[0], self.shard_sizes[0])[i], \
            _grid(self.shape[1], self.shard_sizes[1])[j]
        return (r1 - r0, c1 - c0)

    def _check_index(self, i: int, j: int) -> None:
        gi, gj = self.grid
        if not (0 <= i < gi and 0 <= j < gj):
            raise IndexError(f"block ({i}, {j}) is outside the {gi} x {gj} block grid of {self.key!r} "
                             f"(shape {self.shape}, blocks of {self.shard_sizes})")

    # -- block I/O --------------------------------------------------------------------
    def _chunk_key(self, i: int, j: int) -> str:
        i, j = self._o((i, j))
        return f"{self.key}/c/{i}/{j}"

    def get_block(self, i: int, j: int, copy: bool = True) -> np.ndarray:
        """Read block ``(i, j)``.

        Parameters
        ----------
        i, j : int
            Block indices.
        copy : bool
            With False, a large (>= 4 MiB) uncompressed block in a local store
            comes back as a read-only view of the chunk file mapped into memory
            (verified like a copy): no fresh memory, and processes reading the same
            block share the page cache's pages. Chunks are replaced atomically (by
            rename), so a mapped block keeps its contents. Otherwise False makes
            no difference. Either way, treat the block as read-only.

        Raises
        ------
        BlockNotFoundError
            If the block was never written (and the matrix has no fill value).
        CorruptBlockError
            If the stored bytes fail their checksum.
        """
        i, j = int(i), int(j)
        self._check_index(i, j)
        self._refresh_dtype()
        missing = BlockNotFoundError(
            f"block ({i}, {j}) of matrix {self.key!r} in {self.store.url} was never written")
        if self._dtype is None:
            raise missing
        bi, bj = self._o((i, j))
        if self._raw:  # one open() both reads the block and says whether it exists
            block = self._read_raw_chunk(i, j, bi, bj, mapped=not copy)
            if block is not None:
                _iostats.add_read(block.nbytes)
                return block.T if self._transposed else block
            if self._fill is None:
                raise missing
        elif self._fill is None and not self.store.exists(self._chunk_key(i, j)):
            raise missing
        try:
            block = self.zarr.blocks[bi, bj]
        except ValueError as exc:
            if "checksum" not in str(exc).lower():
                raise
            raise CorruptBlockError(
                f"block ({i}, {j}) of matrix {self.key!r} in {self.store.url} is corrupt: {exc}; "
                "write it again (put_block) or recompute it") from None
        _iostats.add_read(block.nbytes)
        return block.T if self._transposed else block

    def _read_raw_chunk(self, i: int, j: int, bi: int, bj: int,
                        mapped: bool = False) -> np.ndarray | None:
        """Read a chunk file directly: zarr's own layout (full chunk, little-endian
        bytes, crc32c appended), verified, into a writable array, or with
        ``mapped`` a read-only mapping of the file. None if absent."""
        import crc32c

        path = os.path.join(self.store.root, self.key, "c", str(bi), str(bj))
        dtype = self._dtype.newbyteorder("<")
        chunk = self._shard_sizes
        size = chunk[0] * chunk[1] * dtype.itemsize
        try:
            with open(path, "rb") as fh:
                if mapped and size >= MAP_MIN_BYTES:
                    got = os.fstat(fh.fileno()).st_size
                    buf = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE,
                                    prot=mmap.PROT_READ) if got == size + 4 else b""
                else:
                    buf = bytearray(size + 4)
                    got = fh.readinto(buf)
        except FileNotFoundError:
            return None
        view = memoryview(buf)
        if got != size + 4 or crc32c.crc32c(view[:size]) != int.from_bytes(view[size:], "little"):
            raise CorruptBlockError(
                f"block ({i}, {j}) of matrix {self.key!r} in {self.store.url} is corrupt: its "
                "crc32c checksum does not match; write it again (put_block) or recompute it")
        rows, cols = self._o(self.block_shape(i, j))
        full = np.frombuffer(buf, dtype=dtype, count=chunk[0] * chunk[1]).reshape(chunk)
        return full[:rows, :cols] if (rows, cols) != chunk else full

    def _write_raw_chunk(self, i: int, j: int, stored: np.ndarray) -> None:
        """Write a chunk file in zarr's layout (full chunk, edge blocks padded with
        the fill value, little-endian bytes, crc32c appended) straight from the
        array's memory: zarr's codec pipeline would copy a large block twice."""
        import crc32c

        dtype = self._dtype.newbyteorder("<")
        if stored.shape == tuple(self._shard_sizes):
            full = np.ascontiguousarray(stored, dtype=dtype)
        else:
            full = np.full(self._shard_sizes, self._fill or 0, dtype=dtype)
            full[:stored.shape[0], :stored.shape[1]] = stored
        data = memoryview(full.reshape(-1).view(np.uint8))  # any dtype, complex included
        self.store.put(self._chunk_key(i, j), [data, crc32c.crc32c(data).to_bytes(4, "little")])

    def put_block(self, i: int, j: int, block: Any) -> None:
        """Write block ``(i, j)`` (the tutorial's argument order); atomic per block.

        Raises
        ------
        ShapeMismatchError, DTypeMismatchError, IndexError
        """
        i, j = int(i), int(j)
        block = np.asarray(block)
        expected = self.block_shape(i, j)
        if block.shape != expected:
            raise ShapeMismatchError(
                f"block ({i}, {j}) of {self.key!r} must have shape {expected}, got {block.shape}")
        if block.dtype.kind not in "biufc":
            raise DTypeMismatchError(
                f"block ({i}, {j}) of {self.key!r} has non-numeric dtype {block.dtype}")
        if self._dtype is None:
            self._fix_dtype(block.dtype)
        if block.dtype != self._dtype:
            if not np.can_cast(block.dtype, self._dtype, "safe"):
                raise DTypeMismatchError(
                    f"block ({i}, {j}) has dtype {block.dtype}, which cannot be safely cast to the "
                    f"matrix's {self._dtype}; convert it first (block.astype({str(self._dtype)!r}))")
            block = block.astype(self._dtype)
        bi, bj = self._o((i, j))
        try:
            if self._raw:  # the store counts the bytes it writes
                self._write_raw_chunk(i, j, block.T if self._transposed else block)
                return
            self.zarr.blocks[bi, bj] = block.T if self._transposed else block
        except OSError as exc:
            from ..storage import write_error

            raise write_error(exc, self.store.url, f"{self.key} block ({i}, {j})") from None
        _iostats.add_written(block.nbytes)

    def delete_block(self, i: int, j: int) -> None:
        """Remove block ``(i, j)``."""
        self._check_index(i, j)
        self.store.delete(self._chunk_key(i, j), missing_ok=True)

    def delete(self) -> None:
        """Remove the whole matrix from the store."""
        self.store.delete(self.key, missing_ok=True)
        self._array = None

    # -- whole-matrix operations --------------------------------------------------
    @property
    def T(self) -> ShardedMatrix:
        """Transposed view: ``T.get_block(i, j)`` is ``get_block(j, i).T``. No copy."""
        view = _rebuild(self.store, self.key, self._shape, self._shard_sizes,
                        None if self._dtype is None else self._dtype.str, self._fill,
                        self._compressor, not self._transposed, self._raw)
        view._array = self._array
        return view

    def _map_blocks(self, fn, idxs: Iterable[tuple[int, int]], n_jobs: int) -> list:
        idxs = list(idxs)
        if n_jobs <= 1 or len(idxs) <= 1:
            return [fn(ij) for ij in idxs]
        with ThreadPoolExecutor(min(n_jobs, len(idxs))) as pool:
            return list(pool.map(fn, idxs))

    def numpy(self, n_jobs: int = 2) -> np.ndarray:
        """Read the whole matrix into memory."""
        self._refresh_dtype()
        out = np.empty(self.shape, dtype=self._dtype or np.float64)
        blocks = dict(zip(self.block_idxs, self.blocks))

        def read(ij):
            (r0, r1), (c0, c1) = blocks[ij]
            out[r0:r1, c0:c1] = self.get_block(*ij)

        self._map_blocks(read, self.block_idxs, n_jobs)
        return out

    to_numpy = numpy

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read a slice (``m[a:b, c:d]``, ``m[i]``, ``m[:, j]``), fetching only the blocks it touches."""
        if not isinstance(key, tuple):
            key = (key, slice(None))
        if len(key) != 2:
            raise IndexError(f"a ShardedMatrix takes two indices, got {len(key)}")
        idx = []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                if not -n <= k < n:
                    raise IndexError(f"index {k} is out of range for size {n}")
                idx.append(int(k) % n)
            elif isinstance(k, slice):
                idx.append(np.arange(*k.indices(n)))
            else:
                raise IndexError(f"ShardedMatrix indices must be ints or slices, got {k!r}")
        rows, cols = (np.atleast_1d(a) for a in idx)
        self._refresh_dtype()
        if rows.size == 0 or cols.size == 0:
            part = np.empty((rows.size, cols.size), dtype=self._dtype or np.float64)
        else:
            r0, c0 = rows.min(), cols.min()
            part = self._read_range(r0, rows.max() + 1, c0, cols.max() + 1)[np.ix_(rows - r0, cols - c0)]
        if isinstance(idx[0], int):
            part = part[0]
            return part[0] if isinstance(idx[1], int) else part
        return part[:, 0] if isinstance(idx[1], int) else part

    def _read_range(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0), dtype=self._dtype or np.float64)
        bs0, bs1 = self.shard_sizes
        for i in range(r0 // bs0, -(-r1 // bs0)):
            for j in range(c0 // bs1, -(-c1 // bs1)):
                blk = self.get_block(i, j)
                br0, bc0 = i * bs0, j * bs1
                rs, re = max(r0, br0), min(r1, br0 + blk.shape[0])
                cs, ce = max(c0, bc0), min(c1, bc0 + blk.shape[1])
                out[rs - r0:re - r0, cs - c0:ce - c0] = blk[rs - br0:re - br0, cs - bc0:ce - bc0]
        return out

    def shard_matrix(self, X: Any, n_jobs: int = 16, executor: Executor | None = None) -> None:
        """Write all of ``X`` as blocks, in parallel (the tutorial's call).

        Threads write to the store from this process; with ``executor=`` the
        blocks are written by its workers (the store must be one they reach).
        """
        X = np.asarray(X)
        if X.shape != self.shape:
            raise ShapeMismatchError(f"matrix {self.key!r} has shape {self.shape}, data has {X.shape}")
        if self._dtype is None:
            self._fix_dtype(X.dtype)
        spans = dict(zip(self.block_idxs, self.blocks))

        def write(ij):
            (r0, r1), (c0, c1) = spans[ij]
            self.put_block(ij[0], ij[1], X[r0:r1, c0:c1])

        if executor is None:
            self._map_blocks(write, self.block_idxs, n_jobs)
            return
        from ..futures import get_all_results

        get_all_results(executor.map(lambda ij, blk, m=self: m.put_block(ij[0], ij[1], blk),
                                     [(ij, X[r0:r1, c0:c1]) for ij, ((r0, r1), (c0, c1))
                                      in spans.items()], starmap=True))

    @classmethod
    def from_numpy(cls, X: Any, key: str, shard_sizes: Sequence[int] | None = None,
                   store: Any = None, n_jobs: int = 4, **kwargs: Any) -> ShardedMatrix:
        """Create a matrix from an in-memory array (its dtype is kept)."""
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[:, None]
        m = cls(key, shape=X.shape, shard_sizes=shard_sizes, dtype=X.dtype, store=store, **kwargs)
        m.shard_matrix(X, n_jobs=n_jobs)
        return m


def open_url(url: str, **options: Any) -> ShardedMatrix:
    """Open the matrix at a full URL such as ``file:///data/store/x_train`` or
    ``s3://bucket/prefix/x_train`` (its store is everything before the last ``/``)."""
    base, _, key = url.rstrip("/").rpartition("/")
    if not key or base.endswith(":/") or not base:
        raise ValueError(f"{url!r} is not a matrix URL: expected STORE_URL/KEY, e.g. file:///data/store/x")
    return ShardedMatrix(key, store=open_store(base, **options))


def _rebuild(store, key, shape, shard_sizes, dtype, fill, compressor, transposed,
             raw=False) -> ShardedMatrix:
    m = ShardedMatrix.__new__(ShardedMatrix)
    m.key, m.store, m._array, m._transposed = key, store, None, transposed
    m._set_meta({"shape": tuple(shape), "shard_sizes": tuple(shard_sizes),
                 "dtype": None if dtype is None else np.dtype(dtype), "fill": fill,
                 "compressor": compressor, "raw": raw})
    return m


__all__ = ["ShardedMatrix", "open_url"]
