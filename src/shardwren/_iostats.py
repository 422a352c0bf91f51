"""Per-thread counters of bytes a task reads from and writes to stores.

``run_task`` resets them before a task and reads them after it, so each task's
stats carry its own I/O even when a Dask worker runs several tasks in threads.
"""

from __future__ import annotations

import threading

_local = threading.local()


def reset() -> None:
    _local.read = 0
    _local.written = 0


def add_read(n: int) -> None:
    _local.read = getattr(_local, "read", 0) + int(n)


def add_written(n: int) -> None:
    _local.written = getattr(_local, "written", 0) + int(n)


def snapshot() -> tuple[int, int]:
    return getattr(_local, "read", 0), getattr(_local, "written", 0)
