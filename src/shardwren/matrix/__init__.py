"""Matrices as blocks in a store: :class:`ShardedMatrix` and its helpers.

Each matrix is a Zarr v3 array at ``<store>/<key>`` whose chunks are the blocks, so
``zarr.open_array(url)``, ``dask.array.from_zarr(url)`` and ``xarray.open_zarr(store_url)``
read it with no shardwren code; every chunk carries a crc32c checksum, compression is
optional. A 2-D numeric array written by zarr-python (v3 or v2, any codec) opens as one.

The constructor follows the 2017 PyWren tutorial's ``matrix.ShardedMatrix``::

    X_sharded = ShardedMatrix("x_train", shape=X.shape, bucket=BUCKET, shard_sizes=[4000, 784])
    X_sharded.shard_matrix(X, n_jobs=16)
    block = X_sharded.get_block(0, 0)

The modules behind this face: ``_matrix`` (the class), ``_layout`` (the only code that
reads or writes ``zarr.json``), ``_codec`` (chunk bytes and their verification),
``_geometry`` (block arithmetic).
"""

from ..storage import MAP_MIN_BYTES
from ._layout import Layout
from ._matrix import (
    COMPRESSORS,
    DEFAULT_COMPRESSOR,
    ShardedMatrix,
    open_url,
    scratch_from_numpy,
    scratch_matrix,
)

__all__ = ["ShardedMatrix", "open_url", "scratch_matrix", "scratch_from_numpy", "Layout",
           "COMPRESSORS", "DEFAULT_COMPRESSOR", "MAP_MIN_BYTES"]
