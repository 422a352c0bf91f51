"""Helpers shared by the block algorithms: inputs, executors, scratch matrices."""

from __future__ import annotations

import contextlib
import numbers
import uuid
from typing import Any, Iterator

import numpy as np

from ..errors import DTypeMismatchError, ShapeMismatchError, StoreNotSharedError
from ..executor import Executor, default_executor
from ..matrix import ShardedMatrix

DEFAULT_BLOCK = 4000


@contextlib.contextmanager
def executor_for(executor: Executor | None) -> Iterator[Executor]:
    """Use ``executor``, or a default one for the duration of the call."""
    if executor is not None:
        yield executor
        return
    with default_executor() as ex:
        yield ex


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as an int: a TypeError for non-integers (1.5, "3", True), ValueError below 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {k!r} of type {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be at least 1, got {k}")
    return int(k)


def check_numeric(X: Any, name: str) -> None:
    if X.dtype is not None and np.dtype(X.dtype).kind not in "biuf":
        raise DTypeMismatchError(f"{name} must be numeric (int or float), got dtype {X.dtype}")


class Inputs:
    """Turns numpy arrays into ShardedMatrices in the executor's store, and cleans up.

    Matrices the caller passed in are used as they are; arrays are sharded under
    a scratch key that is deleted when the ``with`` block ends.
    """

    def __init__(self, executor: Executor, block_rows: int | None = None):
        self.executor = executor
        self.block_rows = block_rows
        self._scratch: list[ShardedMatrix] = []

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._scratch:
            m.delete()

    def matrix(self, X: Any, name: str, rows: int | None = None,
               cols: int | None = None) -> ShardedMatrix:
        """X as a ShardedMatrix; arrays are sharded in blocks of ``rows`` x ``cols``
        (default: the block size given at construction, whole rows)."""
        if isinstance(X, ShardedMatrix):
            check_numeric(X, name)
            require_shared(X.store, self.executor)
            return X
        X = np.asarray(X)
        if X.ndim != 2:
            raise ShapeMismatchError(f"{name} must be a 2-D matrix (samples x features), got shape {X.shape}")
        check_numeric(X, name)
        # The dtype is kept (uint8 pixels stay 4x smaller than float32): the kernels
        # convert blocks as they need, exactly, and never through a narrower type.
        require_shared(self.executor.store, self.executor)
        rows = rows or self.block_rows or DEFAULT_BLOCK
        cols = cols or X.shape[1]
        m = ShardedMatrix.from_numpy(X, f"tmp/{name}-{uuid.uuid4().hex[:12]}",
                                     (max(1, rows), max(1, cols)), store=self.executor.store)
        self._scratch.append(m)
        return m

    def adopt(self, m: ShardedMatrix | None) -> None:
        """Delete ``m`` too when the call ends."""
        if m is not None:
            self._scratch.append(m)

    def scratch(self, shape: tuple[int, int], shard_sizes: tuple[int, int], name: str,
                dtype: Any = None) -> ShardedMatrix:
        m = ShardedMatrix(f"tmp/{name}-{uuid.uuid4().hex[:12]}", shape=shape,
                          shard_sizes=shard_sizes, dtype=dtype, store=self.executor.store)
        self._scratch.append(m)
        return m


def todo(out: ShardedMatrix, idxs: list, resume: bool) -> list:
    """The blocks still to compute: with ``resume``, those ``out`` lacks.

    A block that exists is complete (block writes are atomic) and its checksum
    is verified whenever it is read, so skipping it loses nothing.
    """
    if not resume:
        return list(idxs)
    have = set(out.block_idxs_exist)
    return [ij for ij in idxs if tuple(ij[:2]) not in have]


def _keep(store: Any, part: str, fn, *args):
    """Run a task and persist its (small) result, so a resumed job can reuse it."""
    import pickle

    result = fn(*args)
    store.put(part, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return result


def run_resumable(ex: Executor, fn, items: list[tuple], key: str | None, name: str,
                  resume: bool, progress: bool | None = None) -> tuple[list, int]:
    """``[fn(*item) for item in items]`` as tasks; with ``resume``, each result is
    kept in the store under ``<key>/parts/`` and those already there are reused.

    Returns the results in order and how many tasks ran.
    """
    from ..futures import get_all_results

    if not resume:
        fs = ex.starmap(fn, items)
        return get_all_results(fs, progress=progress), len(fs)
    if not key:
        raise ValueError("resume=True needs a name for the job's saved partial results: pass key=")
    import pickle

    store = ex.store
    parts = [f"{key}/parts/{name}-" + "-".join(map(str, it)) for it in items]
    have = set(store.list(f"{key}/parts"))
    results: list = [pickle.loads(store.get(p)) if p in have else None for p in parts]
    missing = [n for n, p in enumerate(parts) if p not in have]
    fs = ex.starmap(lambda part, *it: _keep(store, part, fn, *it),
                    [(parts[n], *items[n]) for n in missing])
    for n, value in zip(missing, get_all_results(fs, progress=progress)):
        results[n] = value
    return results, len(missing)


def new_token() -> str:
    """A unique id for one call's cache entries."""
    return uuid.uuid4().hex


def require_shared(store: Any, executor: Executor) -> None:
    """Refuse a store the executor's workers cannot read."""
    if store.scheme == "memory":
        raise StoreNotSharedError(
            f"store {store.url} lives in this process's memory, so {executor.backend.name} "
            "workers cannot read it; use a file:// store (the default) or s3://...")
    executor.backend.check_store(store)


def check_features(A: ShardedMatrix, B: ShardedMatrix, what: str = "the two matrices") -> None:
    if A.shape[1] != B.shape[1]:
        raise ShapeMismatchError(
            f"{what} have different numbers of features (columns): {A.shape[1]} and {B.shape[1]}")
    for m in (A, B):
        if m.shard_sizes[1] < m.shape[1]:
            raise ShapeMismatchError(
                f"matrix {m.key!r} is split across columns (blocks of {m.shard_sizes}); "
                "distance and k-NN functions need whole rows in each block: "
                f"re-shard it with shard_sizes=({m.shard_sizes[0]}, {m.shape[1]})")
