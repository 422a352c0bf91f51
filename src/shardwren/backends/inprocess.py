"""Driver side and worker side at once: tasks run in threads of this very process.

For tests and debugging (PyWren's ``dummy_executor``): no process starts, a task's
``print`` and ``pdb`` work where the caller is, and module state the caller set up
is visible to the task. Tasks still go through the common runtime
(:func:`~shardwren.backends.runtime.run_task`), so results, exceptions and stats
look as on every backend, and through pickling, so a function that would not
reach a real worker fails here too.

A task is marked running only when a thread takes it from the queue, so a task
still queued can always be cancelled. Python threads cannot be killed: a task
past its timeout is abandoned (its thread finishes in the background) and
``memory_limit`` is refused (tasks share the process).
"""

from __future__ import annotations

import concurrent.futures as cf

import queue
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import config, serialize
from .._timers import Timers
from ..errors import ExecutorShutdownError, TaskTimeoutError
from .base import Backend
from .runtime import FunctionCache, run_task

if TYPE_CHECKING:
    from ..futures import Future


class InProcessBackend(Backend):
    """Tasks in ``workers`` threads of the calling process (default 1).

    Parameters
    ----------
    workers : int, optional
        Task threads (default 1: tasks run one at a time, in submission order).
    blas_threads, settings, key
        See :class:`~shardwren.backends.base.Backend`.
    """

    name = "inprocess"
    kills_on_timeout = False

    def __init__(self, *, workers: int | None = None, blas_threads: int | None = None,
                 settings: Mapping[str, Any] | None = None, key: bytes | None = None,
                 **options: Any):
        self._n: int = config.check("workers", workers, "InProcessBackend(workers=...)") or 1
        self._key = key
        self._fns = FunctionCache()
        self._queue: queue.SimpleQueue[tuple[Future, str, bytes, bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding: set[Future] = set()
        self._closing = False
        self._timers = Timers("shardwren-inprocess-deadlines")
        self._threads = [threading.Thread(target=self._serve, name=f"shardwren-inprocess-{i}",
                                          daemon=True) for i in range(self._n)]
        for t in self._threads:
            t.start()

    @property
    def parallelism(self) -> int:
        return self._n

    def submit(self, fn_id: str, fn_bytes: bytes, tasks: Sequence[tuple[Future, bytes]]) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
            for fut, payload in tasks:
                self._outstanding.add(fut)
                self._queue.put((fut, fn_id, fn_bytes, payload))

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn_id, fn_bytes, payload = item
            if not fut.set_running():  # cancelled while queued, or another copy finished
                self._forget(fut)
                continue
            timer = None
            limit = fut.limits.get("timeout")
            if limit:
                try:
                    timer = self._timers.call_later(limit, self._expire, fut, limit)
                except RuntimeError:
                    pass  # shutting down
            fn = self._fns.load(fn_id, fn_bytes, self._key)
            where = f"task {fut.index} of job {fut.job_id}"
            ok, data, stats = run_task(fn, payload, None, self._key, exclusive=False, where=where)
            if timer is not None:
                timer.cancel()
            stats["worker"] = threading.current_thread().name
            self._forget(fut)
            if ok:
                fut.set_payload(data, stats)
            else:
                fut.set_failure(serialize.loads_exception(data), stats)

    def _forget(self, fut: Future) -> None:
        with self._lock:
            self._outstanding.discard(fut)

    def _expire(self, fut: Future, limit: float) -> None:
        fut.set_failure(TaskTimeoutError(
            f"task {fut.index} of job {fut.job_id} ran out of time: it ran longer than its "
            f"{limit:g} s limit and was abandoned (its thread finishes in the background)"))

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._closing:
                return
            waiting = list(self._outstanding)
        if wait:
            cf.wait(waiting)  # each done, failed or cancelled
        with self._lock:
            self._closing = True
            left = list(self._outstanding)
            self._outstanding.clear()
        for fut in left:
            fut.set_failure(ExecutorShutdownError(
                f"the executor shut down before task {fut.index} of job {fut.job_id} finished"))
        for _ in self._threads:
            self._queue.put(None)
        self._timers.close()  # deadlines of tasks already failed above
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
