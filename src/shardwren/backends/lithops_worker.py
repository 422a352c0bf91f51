"""Worker side of the Lithops backend: what a Lithops function runs for shardwren.

Nothing here runs in the driver. The driver hands Lithops one :class:`Call`
per map: a small object holding the map's pickled function (so Lithops uploads
the function once per map, in its function pickle, and never once per task)
whose ``__call__`` runs one shardwren task through the common runtime
(:func:`shardwren.backends.runtime.run_task`). The Lithops function therefore
never raises for the task's own reasons: the task's value or exception travels
back as shardwren's own pickled payload (exception types defined in
``__main__`` included, which Lithops' own exception pickling degrades to
``Exception``), with the remote traceback, captured logs and stats. An
exception Lithops itself reports is thus always infrastructure (a timeout, a
killed function process, a runtime without shardwren) and the driver treats it
as such.

Unpickling a :class:`Call` imports this module: a runtime without shardwren
fails right there with ``ModuleNotFoundError: No module named 'shardwren'``,
which the driver turns into one clear, non-retried error.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from .runtime import FunctionCache, run_task, worker_key

_FNS = FunctionCache()
_BLAS: list[int] = []


def _limit_blas(blas_threads: int) -> None:
    if _BLAS != [blas_threads]:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads)
        _BLAS[:] = [blas_threads]


def preload(blas_threads: int) -> None:
    """Load what every task needs (numpy, the runtime, the BLAS limit) in Lithops' runner,
    before it forks a process per call (see the localhost launcher in the driver), and
    make the runner's processes die with the driver."""
    import numpy  # noqa: F401 - inherited by every function process
    import threadpoolctl  # noqa: F401

    from .. import serialize  # noqa: F401

    _limit_blas(blas_threads)
    if os.getpgrp() == os.getpid():  # Lithops starts each job's runner in a session of its own
        threading.Thread(target=_die_with_driver, args=(os.getppid(),), daemon=True,
                         name="shardwren-driver-watch").start()


def _die_with_driver(driver: int, every: float = 0.5) -> None:
    """SIGKILL this runner's process group (the runner and its call processes) once the
    driver that started it is gone.

    Lithops' localhost runner outlives a killed driver: it runs its job to the end,
    and a job of long tasks could run for hours with nobody to read its results. The
    runner mostly waits on its call processes, so a polling thread gets to run; the
    call processes are forked without it, and go with the group.
    """
    while True:
        time.sleep(every)
        if os.getppid() != driver:
            os.killpg(os.getpid(), signal.SIGKILL)


class Call:
    """The function of one Lithops map: runs shardwren tasks of one shardwren map.

    Parameters
    ----------
    fn_id : str
        The shardwren map's id (the function cache key).
    fn_bytes : bytes
        The map's pickled (and, with a secret, signed) function.
    signed : bool
        Whether the driver signs its tasks; the worker then needs ``SHARDWREN_SECRET``
        in its environment (set on the runtime, never sent with the job).
    blas_threads : int
        BLAS threads for the task.
    """

    def __init__(self, fn_id: str, fn_bytes: bytes, signed: bool, blas_threads: int):
        self.fn_id, self.fn_bytes = fn_id, fn_bytes
        self.signed, self.blas_threads = signed, blas_threads

    def __call__(self, task: tuple[bytes, int | None, str]) -> tuple[bool, bytes, dict[str, Any]]:
        """Run one task: ``task`` is ``(signed argument bytes, memory_limit, where)``."""
        payload, memory_limit, where = task
        _limit_blas(self.blas_threads)
        fn: Any
        try:
            key = worker_key(self.signed, "this Lithops function")
            fn = _FNS.load(self.fn_id, self.fn_bytes, key)
        except BaseException as exc:  # noqa: BLE001 - reported by run_task as the task's error
            key, fn = None, exc
        # Lithops runs every call in a process of its own (its JobRunner): the task has
        # the process to itself, so its peak RSS and an RLIMIT_DATA are its own.
        ok, data, stats = run_task(fn, payload, memory_limit, key, exclusive=True, where=where)
        stats["worker"] = os.environ.get("__LITHOPS_ACTIVATION_ID") or f"{stats['host']}:{stats['pid']}"
        return ok, data, stats
