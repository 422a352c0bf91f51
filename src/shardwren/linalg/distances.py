"""The tutorial's two maps, as library functions: a blockwise distance matrix and argmin."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from ..errors import DTypeMismatchError
from ..executor import Executor
from ..futures import get_all_results
from ..matrix import ShardedMatrix
from ._common import Inputs, check_features, executor_for, output_matrix, require_shared, todo
from .kernels import sq_dist_tile
from .knn import check_finite


def distance_dtype(A: ShardedMatrix, B: ShardedMatrix) -> np.dtype:
    """The dtype of D: numpy's promotion of the inputs with float32 (float32 for
    float32, float16 and 8/16-bit integers; float64 for float64 and wider integers)."""
    return np.result_type(A.dtype or np.float64, B.dtype or np.float64, np.float32)


def _distance_block(A: ShardedMatrix, B: ShardedMatrix, D: ShardedMatrix, i: int, j: int) -> int:
    a, b = A.get_block(i, 0, copy=False), B.get_block(j, 0, copy=False)
    check_finite(a, i * A.shard_sizes[0], f"matrix {A.key!r}")
    check_finite(b, j * B.shard_sizes[0], f"matrix {B.key!r}")
    block = sq_dist_tile(a, b, D.dtype or distance_dtype(A, B))
    D.put_block(i, j, block)
    return block.nbytes


def pairwise_sq_euclidean(A: Any, B: Any, out: ShardedMatrix | None = None,
                          executor: Executor | None = None, key: str | None = None,
                          block_size: int | None = None, progress: bool | None = None,
                          resume: bool = False) -> ShardedMatrix:
    """Squared Euclidean distances between the rows of A and B, written blockwise.

    One task per output block, like the tutorial's first map: task ``(i, j)`` reads
    row block ``i`` of A and ``j`` of B and writes ``D[i, j]``.

    Parameters
    ----------
    A, B : ShardedMatrix or array, shapes (m, d) and (n, d)
        Arrays are sharded into the executor's store for you.
    out : ShardedMatrix, optional
        Where to write D (shape (m, n), blocks (A's row block, B's row block)).
        Default: a new matrix named ``key`` (or a unique name) in the executor's store.
    executor : Executor, optional
    block_size : int, optional
        Row block size used when sharding array inputs.
    resume : bool
        Compute only the blocks ``out`` (or the matrix named ``key``) lacks, so a
        job whose driver died finishes without recomputing what it had written.
        Blocks written from other inputs are refused (``ResumeMismatchError``).

    Returns
    -------
    ShardedMatrix
        The (m, n) distance matrix, in float32 for float32, float16 and 8/16-bit
        integer inputs and float64 for float64 and wider integers (numpy's promotion
        with float32). Every entry is within the relative error of summing
        ``sum((a - b)**2)`` directly in that type (``gamma_{d+2}``, about ``(d + 2) u``),
        whatever the data's offset or scale, of the inputs as that type holds them
        (integers beyond 2**53 are rounded to float64 first, as numpy's would be): see
        :func:`shardwren.linalg.kernels.sq_dist_tile`.
    """
    with executor_for(executor) as ex, Inputs(ex, block_size) as inputs:
        A_m, B_m = inputs.matrix(A, "A"), inputs.matrix(B, "B")
        check_features(A_m, B_m)
        shape = (A_m.shape[0], B_m.shape[0])
        blocks = (A_m.shard_sizes[0], B_m.shard_sizes[0])
        if out is None and resume and not key:
            raise ValueError("resume=True needs the output's name: pass key= or out=")
        if out is not None and out.dtype is not None and out.dtype.kind != "f":
            raise DTypeMismatchError(
                f"out has dtype {out.dtype}; squared distances are computed and stored in "
                f"floating point: give out dtype {distance_dtype(A_m, B_m)} (or leave out=None)")
        out = output_matrix(out, key or f"distances-{uuid.uuid4().hex[:10]}", shape, blocks,
                            distance_dtype(A_m, B_m), ex.store, A=A_m, B=B_m)
        require_shared(out.store, ex)
        need = todo(out, out.block_idxs, resume, "pairwise_sq_euclidean", {"A": A_m, "B": B_m})
        # One pickled closure per map: the handles inside it are small (never data).
        fs = ex.starmap(lambda i, j: _distance_block(A_m, B_m, out, i, j), need)
        get_all_results(fs, progress=progress)
        return out


def _argmin_block(D: ShardedMatrix, i: int, j: int, axis: int):
    block = D.get_block(i, j)
    idx = np.argmin(block, axis=axis)
    mins = np.take_along_axis(block, np.expand_dims(idx, axis), axis).squeeze(axis)
    along, other = (i, j) if axis == 0 else (j, i)
    return other, along, along * D.shard_sizes[axis] + idx, mins


def argmin(D: ShardedMatrix, axis: int = 0, executor: Executor | None = None,
           progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise argmin and min of a sharded matrix along ``axis``, then a merge.

    Like the tutorial's second map: one task per block computes the block's
    argmin/min; the driver merges them (ties go to the smaller index).

    Returns
    -------
    (indices, minima) : arrays of length ``D.shape[1 - axis]``
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    with executor_for(executor) as ex:
        require_shared(D.store, ex)
        fs = ex.starmap(lambda i, j: _argmin_block(D, i, j, axis), sorted(D.block_idxs))
        results = get_all_results(fs, progress=progress)
    n = D.shape[1 - axis]
    best_idx = np.zeros(n, dtype=np.int64)
    best = np.full(n, np.inf)
    step = D.shard_sizes[1 - axis]
    # Visit blocks in order along `axis`, so a strict < keeps the first (smallest) index.
    for other, _, idx, mins in sorted(results, key=lambda r: (r[0], r[1])):
        sl = slice(other * step, other * step + len(idx))
        better = mins < best[sl]
        best[sl] = np.where(better, mins, best[sl])
        best_idx[sl] = np.where(better, idx, best_idx[sl])
    return best_idx, best.astype(D.dtype or np.float64)
