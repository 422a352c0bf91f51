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
from .storage import Store, open_store

__version__ = "0.1.0"


#: Submodules reachable as attributes without importing them first
#: (``shardwren.linalg.knn(...)`` after a bare ``import shardwren``).
_SUBMODULES = frozenset({
    "backends", "capacity", "cli", "config", "datasets", "errors", "executor", "futures", "jobs",
    "linalg", "matrix", "mnist8m", "plot", "policy", "pywren", "serialize", "sources", "storage",
})


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | {"ShardedMatrix", "plan"})


def __getattr__(name: str):
    # Heavier parts load on first use, so `import shardwren` stays fast in workers.
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "ShardedMatrix":
        from .matrix import ShardedMatrix

        return ShardedMatrix
    if name == "plan":
        from .linalg import plan

        return plan
    raise AttributeError(f"module 'shardwren' has no attribute {name!r}")


__all__ = [
    "ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "BlockNotFoundError", "FIRST_EXCEPTION", "DTypeMismatchError",
    "Executor", "Future", "KeyNotFoundError", "ShapeMismatchError", "ShardedMatrix",
    "ShardwrenError", "Store", "WorkerCrashedError", "__version__", "as_completed",
    "default_executor", "get_all_results", "open_store", "wait",
]
