"""ShardedMatrix: a 2-D numpy matrix kept as blocks in a store.

Each matrix is a Zarr v3 array at ``<store>/<key>`` whose chunks are the blocks,
so ``zarr.open_array(url)``, ``dask.array.from_zarr(url)`` and
``xarray.open_zarr(store_url)`` read it with no shardwren code, and a 2-D numeric
array written by zarr-python (v3 or v2, any codec) opens as a ShardedMatrix.

All bytes go through :class:`~shardwren.storage.Store`; metadata through
:mod:`._layout` only; chunks of shardwren's own layouts are encoded and verified by
:mod:`._codec` (faster than zarr's pipeline, one verdict for every read path), any
other array's through zarr-python reading the same Store.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..errors import (
    BlockNotFoundError,
    CorruptBlockError,
    DTypeMismatchError,
    KeyIsPrefixError,
    KeyNotFoundError,
    MatrixExistsError,
    NotAMatrixError,
    ShapeMismatchError,
    StoreWriteError,
)
from ..storage import Store, _check_key, open_store
from . import _codec, _layout
from ._geometry import as_int, as_pair, count, span
from ._layout import COMPRESSORS, Layout

if TYPE_CHECKING:
    from ..executor import Executor

#: "none" (checksum only) measured fastest end to end on a local store (README,
#: "ShardedMatrix storage").
DEFAULT_COMPRESSOR = "none"
#: Attempts at open-or-create when concurrent creators keep changing the key.
_CREATE_ATTEMPTS = 5


def _store_from(bucket: Any, store: Any) -> Store:
    if store is not None:
        return open_store(store)
    if isinstance(bucket, Store):
        return bucket
    if bucket:
        # The tutorial passes an S3 bucket name; a URL (what pywren.wrenconfig gives) works too.
        return open_store(bucket if "://" in str(bucket) else f"s3://{bucket}")
    return open_store(None)


def _fill_scalar(fill: Any) -> Any:
    if fill is None:
        return None
    if isinstance(fill, np.generic):
        fill = fill.item()
    if not isinstance(fill, (bool, int, float, complex)):
        raise TypeError(f"fill_value must be a number (or None), got {fill!r}")
    return fill


#: The job record's name inside a matrix's tree (:attr:`ShardedMatrix.job_record_key`).
JOB_RECORD = "shardwren-job.json"


class ShardedMatrix:
    """A 2-D matrix stored as blocks (a Zarr v3 array) in a store.

    Parameters
    ----------
    key : str
        Name of the matrix inside the store (``/`` separates groups:
        ``"proj/run1/C"``). A key may not lie inside another matrix, nor hold
        other keys of its own when created (:class:`KeyConflictError`).
    shape : (int, int), optional
        Create the matrix with this shape (if it does not exist). Omit to open an
        existing one.
    bucket : str, optional
        The tutorial's name for the store: a bucket name (meaning ``s3://bucket``)
        or any store URL.
    shard_sizes : (int, int), optional
        Block shape (default: the whole matrix as one block). Edge blocks are clipped.
    dtype : numpy dtype, optional
        Numeric (bool, int, float, complex). When omitted, the first block written
        fixes it.
    store : str or Store, optional
        Where to keep the matrix (default: the configured default store).
    overwrite : bool
        Re-creating an existing matrix with another shape, block size or dtype
        replaces it with a warning (the tutorial reuses keys); ``False`` makes it an
        error. The same layout always keeps the blocks written.
    fill_value : scalar, optional
        Value of blocks never written. Without it, reading one raises
        :class:`BlockNotFoundError`.
    compressor : {"none", "zstd", "lz4"}
        Chunk compression; every chunk also carries a crc32c checksum.
    dims : (str, str), optional
        Dimension names recorded in the Zarr metadata (what xarray shows);
        default ``("<name>_row", "<name>_col")``.

    Raises
    ------
    KeyNotFoundError
        Opening (no ``shape``) a key that holds no matrix.
    NotAMatrixError
        The key holds a Zarr group, or an array that is not 2-D and numeric.
    MetadataError
        Its ``zarr.json`` is not JSON or lacks a field.
    KeyConflictError, MatrixExistsError, DTypeMismatchError, TypeError, StoreWriteError
    """

    def __init__(self, key: str, shape: Sequence[int] | None = None, bucket: Any = None,
                 shard_sizes: Sequence[int] | None = None, dtype: Any = None,
                 store: Any = None, overwrite: bool = True, fill_value: Any = None,
                 compressor: str = DEFAULT_COMPRESSOR, dims: Sequence[str] | None = None):
        if not isinstance(key, str):
            raise TypeError(f"a matrix key is a str, got {key!r}")
        self.key = _check_key(key)
        self.store = _store_from(bucket, store)
        self._array = None
        self._transposed = False
        if shape is None:
            layout = _layout.read(self.store, self.key)
            if layout is None:
                raise KeyNotFoundError(
                    f"no matrix {self.key!r} in store {self.store.url}; create it by giving a "
                    f"shape: ShardedMatrix({self.key!r}, shape=..., shard_sizes=...)")
            self._layout = layout
        else:
            try:
                self._layout = self._create(shape, shard_sizes, dtype, overwrite, fill_value,
                                            compressor, dims)
            except StoreWriteError as exc:
                raise StoreWriteError(exc.errno, f"creating matrix {self.key!r}: {exc}") from exc

    # -- creation ----------------------------------------------------------------------
    def _create(self, shape, shard_sizes, dtype, overwrite, fill, compressor, dims) -> Layout:
        shape = as_pair(shape, "shape", 0)
        chunks = as_pair(shard_sizes if shard_sizes is not None
                         else tuple(max(1, s) for s in shape), "shard_sizes", 1)
        what = f"matrix {self.key!r}"
        want = None if dtype is None else _layout.check_dtype(dtype, what)
        fill = _fill_scalar(fill)
        if want is not None and not _layout.fits(fill, want):
            raise DTypeMismatchError(f"{what}: fill_value {fill!r} is not a {want} value")
        if compressor not in COMPRESSORS:
            raise ValueError(f"unknown compressor {compressor!r}; choose one of {COMPRESSORS}")
        if dims is not None:
            dims = tuple(str(d) for d in dims)
            if len(dims) != 2:
                raise ShapeMismatchError(f"dims must name two dimensions, got {dims!r}")
        for _ in range(_CREATE_ATTEMPTS):
            try:
                existing = _layout.read(self.store, self.key)
            except NotAMatrixError:
                if _layout.node_kind(self.store, self.key) != "group":
                    raise
                _layout.drop_empty_group(self.store, self.key)
                continue
            if existing is None:
                _layout.check_tree(self.store, self.key)
                if _layout.create(self.store, self.key, shape, chunks, want, fill, compressor,
                                  dims):
                    created = _layout.read(self.store, self.key)
                    if created is not None:  # (deleted at once by another process: retry)
                        return created
                continue  # a concurrent creator won: compare with what it wrote
            if existing.shape == shape and existing.chunks == chunks:
                if want is not None and existing.dtype is None:
                    existing = _layout.fix_dtype(self.store, existing, want)
                if want is None or existing.dtype == want:
                    return existing  # the same layout: its blocks are kept
            msg = (f"matrix {self.key!r} in {self.store.url} exists with shape {existing.shape}, "
                   f"blocks {existing.chunks}, dtype {existing.dtype}; the new one has shape "
                   f"{shape}, blocks {chunks}, dtype {want}")
            if not overwrite:
                raise MatrixExistsError(msg + "; delete it, pick another key, or pass "
                                              "overwrite=True")
            warnings.warn(msg + ": replacing it", stacklevel=3)
            _layout.delete(self.store, existing)
        raise MatrixExistsError(f"matrix {self.key!r} in {self.store.url} kept changing while "
                                f"being created ({_CREATE_ATTEMPTS} attempts): other processes "
                                "are creating it with another layout")

    @property
    def layout(self) -> Layout:
        """What the metadata says (refreshed while the dtype is pending)."""
        self._refresh_dtype()
        return self._layout

    def _refresh_dtype(self) -> None:
        """A handle made before the first write learns the dtype that write fixed."""
        if self._layout.dtype is None:
            fresh = _layout.read(self.store, self.key)
            if fresh is not None and fresh.dtype is not None:
                self._layout = fresh
                self._array = None

    @property
    def zarr(self):
        """The underlying ``zarr.Array``, reading and writing through this matrix's store."""
        if self._array is None:
            import zarr

            self._array = zarr.open_array(store=self.store.zarr_store(self.key), mode="r+",
                                          config={"write_empty_chunks": True})
        return self._array

    # -- pickling: small, never data --------------------------------------------------
    def __reduce__(self):
        return (_rebuild, (self.store, self._layout, self._transposed))

    def __repr__(self) -> str:
        t = ".T" if self._transposed else ""
        return (f"ShardedMatrix({self.key!r}{t}, shape={self.shape}, shard_sizes={self.shard_sizes}, "
                f"dtype={self.dtype}, store={self.store.url!r})")

    # -- geometry (all in the view's orientation), arithmetic: O(1) per block ----------
    def _o(self, pair: tuple) -> tuple:
        return pair[::-1] if self._transposed else pair

    @property
    def shape(self) -> tuple[int, int]:
        return self._o(self._layout.shape)

    @property
    def shard_sizes(self) -> tuple[int, int]:
        return self._o(self._layout.chunks)

    @property
    def dtype(self) -> np.dtype | None:
        """The element type (``None`` until the first block is written, if none was given)."""
        self._refresh_dtype()  # another process may have written the first block
        return self._layout.dtype

    @property
    def compressor(self) -> str:
        """The chunks' compression ("none", "zstd", "lz4", or the codecs of a foreign array)."""
        return self._layout.compressor

    @property
    def fill_value(self) -> Any:
        """Value of blocks never written (None: reading one is an error)."""
        return self._layout.fill

    @property
    def grid(self) -> tuple[int, int]:
        """Number of blocks along each axis."""
        rows, cols = (count(n, s) for n, s in zip(self.shape, self.shard_sizes))
        return rows, cols

    @property
    def num_blocks(self) -> int:
        g = self.grid
        return g[0] * g[1]

    @property
    def blocks(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Row and column ranges of every block, row-major like :attr:`block_idxs`."""
        (n0, n1), (c0, c1), (g0, g1) = self.shape, self.shard_sizes, self.grid
        return list(itertools.product([span(i, n0, c0) for i in range(g0)],
                                      [span(j, n1, c1) for j in range(g1)]))

    @property
    def block_idxs(self) -> list[tuple[int, int]]:
        """Every block index ``(i, j)``, row-major."""
        g0, g1 = self.grid
        return list(itertools.product(range(g0), range(g1)))

    @property
    def job_record_key(self) -> str:
        """The key, inside the matrix's tree, of the record of the block operation that
        writes it (``shardwren.linalg``: what a resumed call checks its inputs against).
        Writing the matrix otherwise (:meth:`shard_matrix`) removes it."""
        return f"{self.key}/{JOB_RECORD}"

    @property
    def block_idxs_exist(self) -> list[tuple[int, int]]:
        """Blocks that have been written (listed from the store: one listing)."""
        L = self._layout
        g = (count(L.shape[0], L.chunks[0]), count(L.shape[1], L.chunks[1]))
        found = set()
        for k in self.store.list(L.chunk_listing):
            ij = L.parse_chunk_key(k)
            if ij is not None and ij[0] < g[0] and ij[1] < g[1]:
                found.add(self._o(ij))
        return sorted(found)

    @property
    def block_idxs_not_exist(self) -> list[tuple[int, int]]:
        """Blocks not written yet."""
        have = set(self.block_idxs_exist)
        return [b for b in self.block_idxs if b not in have]

    def block_range(self, i: int, j: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Row and column ranges of block ``(i, j)``."""
        i, j = self._check_index(i, j)
        (n0, n1), (c0, c1) = self.shape, self.shard_sizes
        return span(i, n0, c0), span(j, n1, c1)

    def block_shape(self, i: int, j: int) -> tuple[int, int]:
        """Shape of block ``(i, j)`` (edge blocks are smaller)."""
        (r0, r1), (c0, c1) = self.block_range(i, j)
        return (r1 - r0, c1 - c0)

    def _check_index(self, i: Any, j: Any) -> tuple[int, int]:
        i, j = as_int(i, "a block index"), as_int(j, "a block index")
        gi, gj = self.grid
        if not (0 <= i < gi and 0 <= j < gj):
            raise IndexError(f"block ({i}, {j}) is outside the {gi} x {gj} block grid of {self.key!r} "
                             f"(shape {self.shape}, blocks of {self.shard_sizes})")
        return i, j

    # -- block I/O --------------------------------------------------------------------
    def _chunk_key(self, i: int, j: int) -> str:
        return self._layout.chunk_key(*self._o((i, j)))

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
            rename), so a mapped block keeps its contents. Elsewhere the block may
            be a read-only view of the bytes the store returned. Either way, treat
            the block as read-only.

        Raises
        ------
        BlockNotFoundError
            If the block was never written (and the matrix has no fill value).
        CorruptBlockError
            If the stored bytes fail verification (checksum, or size).
        TypeError, IndexError
            For an index that is not an integer, or outside the grid.
        """
        i, j = self._check_index(i, j)
        self._refresh_dtype()
        L = self._layout
        bi, bj = self._o((i, j))
        rows, cols = self._o(self.block_shape(i, j))
        if L.dtype is None:
            raise self._missing(i, j)
        if L.codec == "zarr" and rows * cols == 0:
            # zarr-python's own arrays have no chunks along an empty dimension
            block = np.empty((rows, cols), dtype=L.dtype)
        elif L.codec == "zarr":
            block = self._zarr_block(i, j, bi, bj)
        else:
            key = L.chunk_key(bi, bj)
            try:
                buf = self.store.get_buffer(key, mapped=not copy and L.codec == "none")
            except KeyNotFoundError:
                if L.fill is None:
                    raise self._missing(i, j) from None
                block = np.full((rows, cols), L.fill, dtype=L.dtype)
                return block.T if self._transposed else block
            except KeyIsPrefixError:
                raise self._corrupt(i, j, f"its chunk key {key!r} is a folder of other keys, "
                                          "not a chunk (something was created inside the "
                                          "matrix's tree)") from None
            dtype = L.dtype.newbyteorder("<")
            nbytes = L.chunks[0] * L.chunks[1] * dtype.itemsize
            try:
                raw = _codec.decode(buf, L.codec, nbytes, writable=copy)
            except _codec.Corrupt as exc:
                raise self._corrupt(i, j, str(exc)) from None
            full = raw.view(dtype).reshape(L.chunks)
            block = full[:rows, :cols] if (rows, cols) != L.chunks else full
        return block.T if self._transposed else block

    def _missing(self, i: int, j: int) -> BlockNotFoundError:
        return BlockNotFoundError(
            f"block ({i}, {j}) of matrix {self.key!r} in {self.store.url} was never written")

    def _corrupt(self, i: int, j: int, why: str) -> CorruptBlockError:
        return CorruptBlockError(
            f"block ({i}, {j}) of matrix {self.key!r} in {self.store.url} is corrupt: {why}; "
            "write it again (put_block) or recompute it")

    def _zarr_block(self, i: int, j: int, bi: int, bj: int) -> np.ndarray:
        """A block of an array in a layout shardwren does not decode itself: zarr's
        codec pipeline, reading through the same Store."""
        try:
            return np.asarray(self.zarr.blocks[bi, bj]).astype(self._layout.dtype, copy=False)
        except KeyIsPrefixError:
            raise self._corrupt(i, j, "its chunk key is a folder, not a chunk") from None
        except gzip.BadGzipFile as exc:  # an OSError, but a decoding failure
            raise self._corrupt(i, j, f"zarr cannot decode it (gzip: {exc})") from None
        except OSError:
            raise  # the store's I/O errors keep their own type
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt chunk
            raise self._corrupt(i, j, f"zarr cannot decode it ({type(exc).__name__}: {exc})") \
                from None

    def put_block(self, i: int, j: int, block: Any) -> None:
        """Write block ``(i, j)`` (the tutorial's argument order); atomic per block.

        Raises
        ------
        ShapeMismatchError, DTypeMismatchError, IndexError, TypeError
        StoreWriteError
            When the store refuses the write (naming the block).
        """
        i, j = self._check_index(i, j)
        block = np.asarray(block)
        expected = self.block_shape(i, j)
        if block.shape != expected:
            raise ShapeMismatchError(
                f"block ({i}, {j}) of {self.key!r} must have shape {expected}, got {block.shape}")
        if block.dtype.kind not in "biufc" or block.dtype.fields is not None:
            raise DTypeMismatchError(
                f"block ({i}, {j}) of {self.key!r} has non-numeric dtype {block.dtype}")
        self._ensure_dtype(block.dtype)
        L = self._layout
        assert L.dtype is not None  # _ensure_dtype fixed it
        if block.dtype != L.dtype:
            if not np.can_cast(block.dtype, L.dtype, "safe"):
                raise DTypeMismatchError(
                    f"block ({i}, {j}) has dtype {block.dtype}, which cannot be safely cast to the "
                    f"matrix's {L.dtype}; convert it first (block.astype({str(L.dtype)!r}))")
            block = block.astype(L.dtype)
        bi, bj = self._o((i, j))
        stored = block.T if self._transposed else block
        try:
            if L.codec == "zarr":
                self.zarr.blocks[bi, bj] = stored
                return
            dtype = L.dtype.newbyteorder("<")
            if stored.shape == L.chunks:
                full = np.ascontiguousarray(stored, dtype=dtype)
            else:
                full = np.full(L.chunks, L.fill_value or 0, dtype=dtype)
                full[:stored.shape[0], :stored.shape[1]] = stored
            self.store.put(L.chunk_key(bi, bj), _codec.encode(full, L.codec, L.codec_config))
        except StoreWriteError as exc:
            raise StoreWriteError(exc.errno, f"block ({i}, {j}) of matrix {self.key!r}: {exc}") \
                from exc

    def _ensure_dtype(self, dtype: np.dtype) -> None:
        """Fix the dtype of a pending matrix from the first block written (validated
        first: a rejected block never touches the metadata)."""
        self._refresh_dtype()
        if self._layout.dtype is not None:
            return
        dtype = _layout.check_dtype(dtype, f"matrix {self.key!r}")
        if not _layout.fits(self._layout.fill, dtype):
            raise DTypeMismatchError(f"matrix {self.key!r}: its fill_value {self._layout.fill!r} "
                                     f"is not a {dtype} value, so blocks of {dtype} cannot fix "
                                     "its dtype")
        self._layout = _layout.fix_dtype(self.store, self._layout, dtype)
        self._array = None

    def delete_block(self, i: int, j: int) -> None:
        """Remove block ``(i, j)``."""
        i, j = self._check_index(i, j)
        self.store.delete(self._chunk_key(i, j), missing_ok=True)

    def delete(self) -> None:
        """Remove the whole matrix from the store: its own keys only (never another
        node created inside its tree), metadata last."""
        _layout.delete(self.store, self._layout)
        self._array = None

    def content_digest(self) -> str:
        """A digest of the matrix's layout and of every block written (its stored
        crc32c, or a hash of a foreign chunk): equal for equal contents, whatever
        the key; cheap (four bytes read per block)."""
        L = self._layout
        self._refresh_dtype()
        h = hashlib.sha256(json.dumps(
            [list(L.shape), list(L.chunks), None if L.dtype is None else L.dtype.str,
             _layout.fill_attr(L.fill), L.codec, L.compressor, self._transposed]).encode())
        chunks = sorted((ij, k) for k in self.store.list(L.chunk_listing)
                        if (ij := L.parse_chunk_key(k)) is not None)

        def tail(key: str) -> bytes:
            if L.codec == "zarr":
                return hashlib.blake2b(self.store.get(key), digest_size=16).digest()
            return self.store.get_range(key, -4)

        # One small request per block: on object stores, many at once (latency, not bytes).
        remote = not self.store.is_local and self.store.scheme != "memory"
        tails = self._map_blocks(tail, [k for _, k in chunks], 16 if remote else 1)
        for (ij, _), t in zip(chunks, tails):
            h.update(f"{ij[0]},{ij[1]}:".encode() + t)
        return h.hexdigest()

    # -- whole-matrix operations --------------------------------------------------
    @property
    def transposed(self) -> bool:
        """Whether this is a transposed view (:attr:`T`) of the stored matrix."""
        return self._transposed

    @property
    def T(self) -> ShardedMatrix:
        """Transposed view: ``T.get_block(i, j)`` is ``get_block(j, i).T``. No copy."""
        view = _rebuild(self.store, self._layout, not self._transposed)
        view._array = self._array
        return view

    def _map_blocks(self, fn, idxs: Iterable[Any], n_jobs: int) -> list:
        idxs = list(idxs)
        if n_jobs <= 1 or len(idxs) <= 1:
            return [fn(ij) for ij in idxs]
        with ThreadPoolExecutor(min(n_jobs, len(idxs))) as pool:
            return list(pool.map(fn, idxs))

    def numpy(self, n_jobs: int = 2) -> np.ndarray:
        """Read the whole matrix into memory."""
        self._refresh_dtype()
        out = np.empty(self.shape, dtype=self._layout.dtype or np.float64)

        def read(ij):
            (r0, r1), (c0, c1) = self.block_range(*ij)
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
        idx: list[Any] = []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                idx.append(np.arange(*k.indices(n)))
                continue
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
                raise IndexError(f"ShardedMatrix indices must be ints or slices, got {k!r}")
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of range for size {n}")
            idx.append(int(k) % n)
        rows, cols = (np.atleast_1d(a) for a in idx)
        self._refresh_dtype()
        if rows.size == 0 or cols.size == 0:
            part = np.empty((rows.size, cols.size), dtype=self._layout.dtype or np.float64)
        else:
            r0, c0 = int(rows.min()), int(cols.min())
            part = self._read_range(r0, int(rows.max()) + 1, c0, int(cols.max()) + 1)[
                np.ix_(rows - r0, cols - c0)]
        if isinstance(idx[0], int):
            part = part[0]
            return part[0] if isinstance(idx[1], int) else part
        return part[:, 0] if isinstance(idx[1], int) else part

    def _read_range(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0), dtype=self._layout.dtype or np.float64)
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
        ``X`` is checked (shape, numeric dtype) before anything is written.
        """
        X = np.asarray(X)
        if X.shape != self.shape:
            raise ShapeMismatchError(f"matrix {self.key!r} has shape {self.shape}, data has {X.shape}")
        if X.dtype.kind not in "biufc" or X.dtype.fields is not None:
            raise DTypeMismatchError(f"cannot shard data of non-numeric dtype {X.dtype} into "
                                     f"matrix {self.key!r}")
        self._ensure_dtype(X.dtype)
        self.store.delete(self.job_record_key, missing_ok=True)  # no operation wrote these

        def write(ij):
            (r0, r1), (c0, c1) = self.block_range(*ij)
            self.put_block(ij[0], ij[1], X[r0:r1, c0:c1])

        if executor is None:
            self._map_blocks(write, self.block_idxs, n_jobs)
            return
        from ..futures import get_all_results

        items = []
        for ij in self.block_idxs:
            (r0, r1), (c0, c1) = self.block_range(*ij)
            items.append((ij, X[r0:r1, c0:c1]))
        get_all_results(executor.map(lambda ij, blk, m=self: m.put_block(ij[0], ij[1], blk),
                                     items, starmap=True))

    @classmethod
    def from_numpy(cls, X: Any, key: str, shard_sizes: Sequence[int] | None = None,
                   store: Any = None, n_jobs: int = 4, **kwargs: Any) -> ShardedMatrix:
        """Create a matrix from an in-memory array (its dtype is kept)."""
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[:, None]
        if X.dtype.kind not in "biufc" or X.dtype.fields is not None:
            raise DTypeMismatchError(f"cannot store data of non-numeric dtype {X.dtype} as "
                                     f"matrix {key!r}")
        m = cls(key, shape=X.shape, shard_sizes=shard_sizes, dtype=X.dtype, store=store, **kwargs)
        m.shard_matrix(X, n_jobs=n_jobs)
        return m


def scratch_matrix(store: Store | str, name: str, shape: Sequence[int],
                   shard_sizes: Sequence[int], dtype: Any = None,
                   **kwargs: Any) -> ShardedMatrix:
    """A new matrix at ``tmp/<name>-<owner tag>-<id>`` owned by this process.

    The caller deletes it when done; if this process dies first,
    :func:`shardwren.storage.collect_garbage` (``shardwren store gc``) removes it.
    """
    from ..storage import _owners

    store = open_store(store)
    _owners.hold_lease(store)
    key = f"tmp/{name}-{_owners.owner_tag()}-{uuid.uuid4().hex[:12]}"
    return ShardedMatrix(key, shape=shape, shard_sizes=shard_sizes, dtype=dtype, store=store,
                         overwrite=False, **kwargs)


def scratch_from_numpy(X: Any, store: Store | str, name: str, shard_sizes: Sequence[int],
                       n_jobs: int = 4) -> ShardedMatrix:
    """:func:`scratch_matrix` holding ``X`` (its dtype kept)."""
    X = np.asarray(X)
    m = scratch_matrix(store, name, X.shape, shard_sizes, X.dtype)
    try:
        m.shard_matrix(X, n_jobs=n_jobs)
    except BaseException:
        m.delete()
        raise
    return m


def open_url(url: str, **options: Any) -> ShardedMatrix:
    """Open the matrix at a full URL such as ``file:///data/store/x_train`` or
    ``s3://bucket/prefix/x_train`` (its store is everything before the last ``/``)."""
    base, _, key = url.rstrip("/").rpartition("/")
    if not key or base.endswith(":/") or not base:
        raise ValueError(f"{url!r} is not a matrix URL: expected STORE_URL/KEY, e.g. file:///data/store/x")
    return ShardedMatrix(key, store=open_store(base, **options))


def _rebuild(store: Store, layout: Layout, transposed: bool) -> ShardedMatrix:
    m = ShardedMatrix.__new__(ShardedMatrix)
    m.key, m.store, m._layout, m._array, m._transposed = layout.key, store, layout, None, transposed
    return m


__all__ = ["ShardedMatrix", "open_url", "scratch_matrix", "scratch_from_numpy", "COMPRESSORS",
           "DEFAULT_COMPRESSOR"]
