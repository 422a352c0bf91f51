"""Worker side of the Dask backend: what a Dask worker runs for shardwren.

Nothing here runs in the driver (the driver only refers to these functions by
name, so Dask workers import them from their own shardwren installation).

* :func:`function_bytes` is the task that holds a map's pickled function in the
  Dask graph: every task of the map depends on it, so each worker fetches it once,
  and if the worker holding it dies the scheduler recomputes it from the graph
  (scattered data would be lost with the worker).
* :func:`run` runs one shardwren task through the common runtime
  (:func:`shardwren.backends.runtime.run_task`) in the worker's task thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import serialize
from ..errors import ConfigError, TaskTimeoutError
from . import runtime
from .runtime import FunctionCache, run_task

#: Topic of the event a task with a timeout logs when it starts (the driver's deadline).
STARTED_TOPIC = "shardwren-started"

_FNS = FunctionCache()
_BLAS_LOCK = threading.Lock()
_BLAS_SET: list[int] = []
# Tasks abandoned past their timeout whose threads still run in this process.
_ABANDONED_LOCK = threading.Lock()
_ABANDONED = [0]


def function_bytes(data: bytes) -> bytes:
    """The graph task whose result is a map's pickled function."""
    return data


def worker_key(signed: bool) -> bytes | None:
    """This worker's signing key (SHARDWREN_SECRET), checked against the driver's choice."""
    return runtime.worker_key(signed, "this Dask worker")


def _limit_blas(blas_threads: int) -> None:
    with _BLAS_LOCK:
        if _BLAS_SET != [blas_threads]:
            from threadpoolctl import threadpool_limits

            threadpool_limits(blas_threads)
            _BLAS_SET[:] = [blas_threads]


def _task_threads(worker: Any) -> int:
    state = getattr(worker, "state", None)
    return int(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1) or 1)


def run(fn_data: bytes, fn_id: str, payload: bytes, blas_threads: int,
        memory_limit: int | None = None, timeout: float | None = None, where: str = "",
        signed: bool = False, key: str | None = None) -> tuple[bool, bytes, dict[str, Any]]:
    """Run one shardwren task in this Dask worker; never raises.

    ``key`` (given with a timeout) is announced on :data:`STARTED_TOPIC` when the
    task starts, so that the driver can keep its own deadline for a worker that
    stops responding altogether.
    """
    import distributed

    try:
        worker = distributed.get_worker()
    except ValueError:  # called outside a worker (tests)
        worker = None
    threads = _task_threads(worker) if worker is not None else 1
    with _ABANDONED_LOCK:
        exclusive = threads == 1 and _ABANDONED[0] == 0
    _limit_blas(blas_threads)
    fn: Any
    try:
        sign_key = worker_key(signed)
        fn = _FNS.load(fn_id, fn_data, sign_key)
    except BaseException as exc:  # noqa: BLE001 - reported by run_task as the task's error
        sign_key, fn = None, exc
    if memory_limit and threads > 1:
        # RLIMIT_DATA is per process: with task threads it would cap the others too.
        fn = ConfigError(
            f"{where} asked for memory_limit, which cannot be enforced on a Dask worker running "
            f"{threads} task threads in one process; start workers with --nthreads 1")
    if key is not None and worker is not None:
        worker.log_event(STARTED_TOPIC, {"key": key})
    if timeout:
        ok, data, stats = _run_with_deadline(fn, payload, memory_limit, timeout, where, sign_key,
                                             exclusive)
    else:
        ok, data, stats = run_task(fn, payload, memory_limit, sign_key, exclusive, where)
    stats["worker"] = worker.address if worker is not None else None
    return ok, data, stats


def _run_with_deadline(fn: Any, payload: bytes, memory_limit: int | None, timeout: float,
                       where: str, key: bytes | None,
                       exclusive: bool) -> tuple[bool, bytes, dict[str, Any]]:
    """Run the task in a helper thread and give up on it after ``timeout`` seconds.

    A Python thread cannot be killed: past the limit the task's result is
    abandoned (the thread finishes in the background, counted so that the
    tasks running meanwhile do not claim a per-task peak RSS) and
    TaskTimeoutError is returned, counted from the task's start on the worker.
    """
    box: list[tuple[bool, bytes, dict[str, Any]]] = []
    done = threading.Event()
    abandoned = [False]

    def target() -> None:
        try:
            box.append(run_task(fn, payload, memory_limit, key, exclusive, where))
        finally:
            with _ABANDONED_LOCK:
                done.set()
                if abandoned[0]:
                    _ABANDONED[0] -= 1

    started = time.time()
    threading.Thread(target=target, name="shardwren-task", daemon=True).start()
    if not done.wait(timeout):
        with _ABANDONED_LOCK:
            if not done.is_set():
                abandoned[0] = True
                _ABANDONED[0] += 1
    if box:
        return box[0]
    exc = TaskTimeoutError(f"{where} ran out of time: it ran longer than its {timeout:g} s limit; the Dask worker "
                           "abandoned it (its thread finishes in the background)")
    return False, serialize.dumps_exception(exc), {"started": started, "finished": time.time(),
                                                   "peak_rss": None}


def tune_malloc(mmap_threshold: int, trim_threshold: int) -> bool:
    """Raise glibc's mmap and trim thresholds in this process (see ``dask.tune_workers``)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (glibc's mallopt)
    return bool(libc.mallopt(-3, mmap_threshold)) and bool(libc.mallopt(-1, trim_threshold))
