"""shardwren: PyWren-style parallel map and block-parallel matrix computations.

>>> import shardwren
>>> ex = shardwren.default_executor()
>>> fs = ex.map(lambda x: x * x, range(10))
>>> shardwren.get_all_results(fs)
[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
"""

from __future__ import annotations

from .errors import (
    BlockNotFoundError,
    DTypeMismatchError,
    KeyNotFoundError,
    ShapeMismatchError,
    ShardwrenError,
    WorkerCrashedError,
)
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on first use (see __getattr__); named here for type checkers
    from .executor import Executor, default_executor
    from .futures import (
        ALL_COMPLETED,
        ALWAYS,
        ANY_COMPLETED,
        FIRST_EXCEPTION,
        Future,
        as_completed,
        get_all_results,
        wait,
    )
    from .matrix import ShardedMatrix
    from .storage import Store, open_store

__version__ = "0.1.0"


#: Submodules reachable as attributes without importing them first
#: (``shardwren.linalg.knn(...)`` after a bare ``import shardwren``).
_SUBMODULES = frozenset({
    "backends", "capacity", "cli", "config", "datasets", "errors", "executor", "futures", "jobs",
    "linalg", "matrix", "mnist8m", "plot", "policy", "pywren", "serialize", "sources", "storage",
})


#: Public names and the submodule each comes from, imported on first use: a worker
#: that only runs tasks (``shardwren.backends.runtime``) never pays for the executor,
#: storage or fsspec (a Lithops localhost job starts a fresh interpreter per job).
_LAZY = {
    "Executor": "executor", "default_executor": "executor",
    "ALL_COMPLETED": "futures", "ALWAYS": "futures", "ANY_COMPLETED": "futures",
    "FIRST_EXCEPTION": "futures", "Future": "futures", "as_completed": "futures",
    "get_all_results": "futures", "wait": "futures",
    "Store": "storage", "open_store": "storage",
    "ShardedMatrix": "matrix", "plan": "linalg",
}


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_LAZY))


def __getattr__(name: str):
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'shardwren' has no attribute {name!r}")


__all__ = [
    "ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "BlockNotFoundError", "FIRST_EXCEPTION", "DTypeMismatchError",
    "Executor", "Future", "KeyNotFoundError", "ShapeMismatchError", "ShardedMatrix",
    "ShardwrenError", "Store", "WorkerCrashedError", "__version__", "as_completed",
    "default_executor", "get_all_results", "open_store", "wait",
]
