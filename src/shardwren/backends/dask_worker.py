"""Cluster side of the Dask backend: what a Dask worker (and scheduler) runs for shardwren.

Nothing here runs in the driver (the driver only refers to these functions by
name, so Dask workers import them from their own shardwren installation).

* :func:`function_bytes` is the task that holds a map's pickled function in the
  Dask graph: every task of the map depends on it, so each worker fetches it once,
  and if the worker holding it dies the scheduler recomputes it from the graph
  (scattered data would be lost with the worker).
* :func:`run` runs one shardwren task through the common runtime
  (:func:`shardwren.backends.runtime.run_task`) in the worker's task thread,
  announcing its start on :data:`STARTED_TOPIC`.
* :func:`withdraw` runs in the scheduler (``Client.run_on_scheduler``) when the
  caller cancels a task: it takes the task back if no worker has been given it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .. import serialize
from ..errors import ConfigError, TaskTimeoutError
from . import runtime
from .runtime import FunctionCache, run_task

#: Topic of the event every task logs when it starts: the driver then marks its future
#: running (until then ``cancel()`` may take it back) and arms its own deadline.
STARTED_TOPIC = "shardwren-started"

#: How long a task with a timeout waits for the scheduler to take its start event (below):
#: well inside the driver's deadline margin (dask.DEADLINE_MARGIN, 5 s), which counts from
#: the event's arrival while the worker's own clock starts after the wait.
START_FLUSH_WAIT = 1.0

#: Scheduler states of a task no worker has been given: it can be withdrawn.
_NOT_SENT = frozenset({"released", "waiting", "queued", "no-worker"})

_FNS = FunctionCache()
log = logging.getLogger(__name__)
_WARNED: list[bool] = []  # the start-call warning is logged once per worker process
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


def announce_start(worker: Any, key: str, wait: float) -> None:
    """Log the task's start on :data:`STARTED_TOPIC`. With ``wait`` (the task has a
    timeout), return only once the scheduler has the event: a direct call to it, up to
    ``wait`` seconds, then the usual batched event if that call failed.

    The driver arms its deadline for the task when this event arrives. A worker sends
    events in batches, every few ms, from its event loop: a process frozen right after
    logging one (SIGSTOP, swapped out) kept it, and the driver never learned that the
    task started, nor gave up on it.
    """
    msg = {"key": key}
    scheduler, loop = getattr(worker, "scheduler", None), getattr(worker, "loop", None)
    # On the event loop's own thread a blocking call would stall the loop it waits for.
    on_loop = threading.get_ident() == getattr(worker, "thread_id", None)
    if wait and scheduler is not None and loop is not None and not on_loop:
        try:
            from distributed.utils import sync

            sync(loop, scheduler.log_event, topic=STARTED_TOPIC, msg=msg, callback_timeout=wait)
            return
        except Exception as exc:  # noqa: BLE001 - the batched event below still goes out
            if not _WARNED:
                _WARNED.append(True)
                log.warning("shardwren: could not hand a task's start to the Dask scheduler "
                            "(%s: %s); sending it batched, as events usually are", type(exc).__name__,
                            exc)
    worker.log_event(STARTED_TOPIC, msg)


def run(fn_data: bytes, fn_id: str, payload: bytes, blas_threads: int,
        memory_limit: int | None = None, timeout: float | None = None, where: str = "",
        signed: bool = False, key: str | None = None) -> tuple[bool, bytes, dict[str, Any]]:
    """Run one shardwren task in this Dask worker; never raises.

    ``key`` is announced on :data:`STARTED_TOPIC` when the task starts, so that the
    driver marks the task running and, with a timeout, keeps its own deadline for
    a worker that stops responding altogether.
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
        announce_start(worker, key, START_FLUSH_WAIT if timeout else 0.0)
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


def withdraw(key: str, client: str, dask_scheduler: Any = None) -> bool | None:
    """Take task ``key`` back from the scheduler if no worker has been given it.

    Runs in the scheduler's event loop (``Client.run_on_scheduler``), which is also
    where tasks are handed to workers, so the look and the release are one step:
    True means the task is released and will never run; False means a worker has
    it (it may be running, or about to) or it has finished; None means the
    scheduler has not received it yet (the submission is still on its way).
    """
    ts = dask_scheduler.tasks.get(key)
    if ts is None:
        return None
    if ts.state not in _NOT_SENT:
        return False
    dask_scheduler.client_releases_keys(keys=[key], client=client,
                                        stimulus_id=f"shardwren-withdraw-{time.time()}")
    return True


def tune_malloc(mmap_threshold: int, trim_threshold: int) -> bool:
    """Raise glibc's mmap and trim thresholds in this process (see ``dask.tune_workers``)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (glibc's mallopt)
    return bool(libc.mallopt(-3, mmap_threshold)) and bool(libc.mallopt(-1, trim_threshold))
