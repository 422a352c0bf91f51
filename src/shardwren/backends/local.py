"""The embedded default backend: long-lived worker processes on this machine.

Design (after loky's ``process_executor``):

* each worker is a ``python -m shardwren.backends._worker`` subprocess (not a
  fork, so no inherited locks or threads, and no re-import of the user's
  ``__main__``) talking over one socketpair;
* one manager thread in the driver waits on every worker socket with epoll,
  decodes result batches, completes futures and refills workers;
* tasks are sent in batches sized from the measured task duration, so no-op
  maps run at thousands of tasks per second while long tasks go one at a time
  (no worker hoards work the others could take);
* a worker that dies is noticed as EOF on its socket; the task it was running
  (read from an 8-byte shared-memory slot) fails with :class:`WorkerCrashedError`,
  the tasks queued behind it go back to the queue, and a fresh worker replaces it.
"""

from __future__ import annotations

import atexit
import itertools
import mmap
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Sequence

from .. import serialize
from ..errors import ExecutorShutdownError, TaskTimeoutError, WorkerCrashedError, describe_exit
from ._worker import FN_CACHE_SIZE
from .base import Backend

if TYPE_CHECKING:
    from ..futures import Future

#: Seconds of work to queue on a worker at once (bounds result latency).
BATCH_SECONDS = 0.005
MAX_BATCH = 256
#: A task whose worker keeps dying between tasks is failed after this many tries.
MAX_REQUEUES = 3


class _Task:
    __slots__ = ("seq", "future", "fn_id", "fn_bytes", "payload", "isolate", "requeues")

    def __init__(self, seq: int, future: Future, fn_id: str, fn_bytes: bytes, payload: bytes):
        self.seq, self.future, self.fn_id = seq, future, fn_id
        self.fn_bytes, self.payload = fn_bytes, payload
        self.isolate = False
        self.requeues = 0


class _Worker:
    """Driver-side handle of one worker process."""

    def __init__(self, wid: int, blas_threads: int, key: bytes | None = None):
        self.wid = wid
        parent, child = socket.socketpair()
        slot_fd = os.memfd_create(f"shardwren-worker-{wid}")
        os.ftruncate(slot_fd, 16)
        self.slot = mmap.mmap(slot_fd, 16)
        self.timed_out = 0  # seq of the task this worker was killed for, if any
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(blas_threads)  # before numpy loads; threadpoolctl re-checks
        # Functions pickled by reference (defined in the user's modules) must be
        # importable in the worker exactly as in the driver.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardwren.backends._worker",
             str(child.fileno()), str(slot_fd), str(blas_threads)],
            pass_fds=(child.fileno(), slot_fd), stdin=subprocess.DEVNULL, env=env,
        )
        child.close()
        os.close(slot_fd)
        self.conn = Connection(parent.detach())
        if key:  # never in argv or the environment, where other users could read it
            self.conn.send_bytes(pickle.dumps(("key", key)))
        self.inflight: deque[_Task] = deque()
        self.fns: OrderedDict[str, bool] = OrderedDict()  # mirrors the worker's LRU
        self.send_lock = threading.Lock()

    def running(self) -> tuple[int, float]:
        """(seq, start time) of the task running now; seq 0 when idle."""
        return struct.unpack_from("qd", self.slot, 0)

    def running_seq(self) -> int:
        return self.running()[0]

    def send(self, tasks: list[_Task]) -> None:
        body = []
        for t in tasks:
            if t.fn_id in self.fns:
                self.fns.move_to_end(t.fn_id)
                fn_bytes = None
            else:
                self.fns[t.fn_id] = True
                if len(self.fns) > FN_CACHE_SIZE:
                    self.fns.popitem(last=False)
                fn_bytes = t.fn_bytes
            body.append((t.seq, t.fn_id, fn_bytes, t.payload, t.future.limits.get("memory_limit")))
            self.inflight.append(t)
        try:
            self.conn.send_bytes(pickle.dumps(("run", body), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # the worker died; its EOF is handled by the manager thread

    def describe(self) -> str:
        return f"worker {self.wid} (pid {self.proc.pid})"


_LIVE: "weakref.WeakSet[LocalBackend]" = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for backend in list(_LIVE):
        backend.shutdown(wait=False)


class LocalBackend(Backend):
    """Worker processes on this machine.

    Parameters
    ----------
    workers : int, optional
        Number of worker processes (default: number of CPU cores).
    blas_threads : int, optional
        BLAS threads per worker (default: ``max(1, cores // workers)``), so that
        workers x threads never exceeds the cores.
    """

    name = "local"

    def __init__(self, workers: int | None = None, blas_threads: int | None = None,
                 key: bytes | None = None, **_: object):
        cores = os.cpu_count() or 1
        self._n = int(workers or cores)
        if self._n < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.blas_threads = int(blas_threads or max(1, cores // self._n))
        self._key = key
        self._lock = threading.RLock()
        self._pending: deque[_Task] = deque()
        self._outstanding: set[Future] = set()
        self._seq = itertools.count(1)
        self._wids = itertools.count()
        self._avg_task = None  # EWMA of task seconds, None until measured
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._workers: list[_Worker] = [self._spawn() for _ in range(self._n)]
        self._manager = threading.Thread(target=self._loop, name="shardwren-local", daemon=True)
        self._manager.start()
        _LIVE.add(self)

    @property
    def parallelism(self) -> int:
        return self._n

    def worker_pids(self) -> list[int]:
        """PIDs of the current worker processes (for tests and monitoring)."""
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def busy_worker_pids(self) -> list[int]:
        """PIDs of the workers running a task right now."""
        with self._lock:
            return [w.proc.pid for w in self._workers if w.running_seq()]

    # -- submission ------------------------------------------------------------
    def submit(self, fn_id: str, fn_bytes: bytes, tasks: Sequence[tuple[Future, bytes]]) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
            for fut, payload in tasks:
                self._pending.append(_Task(next(self._seq), fut, fn_id, fn_bytes, payload))
                self._outstanding.add(fut)
            self._dispatch()

    def _batch_size(self) -> int:
        if self._avg_task is None:
            return 1  # durations unknown: queue nothing behind a task that may be long
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self._avg_task, 1e-7))))

    def _dispatch(self) -> None:
        """Fill idle capacity from the queue. Caller holds the lock."""
        cap = self._batch_size()
        for w in sorted(self._workers, key=lambda w: len(w.inflight)):
            if not self._pending:
                return
            if w.inflight and (w.inflight[-1].isolate or len(w.inflight) >= cap):
                continue
            # A fair share of the queue, so that one worker never takes it all.
            share = -(-len(self._pending) // len(self._workers))
            limit = min(cap, len(w.inflight) + share)
            batch: list[_Task] = []
            while self._pending and len(w.inflight) + len(batch) < limit:
                t = self._pending[0]
                if t.isolate and (w.inflight or batch):
                    break
                self._pending.popleft()
                if t.requeues == 0 and not t.future._start():
                    self._outstanding.discard(t.future)
                    continue  # cancelled before it started
                batch.append(t)
                if t.isolate:
                    break
            if batch:
                w.send(batch)

    # -- manager thread -----------------------------------------------------------
    def _spawn(self) -> _Worker:
        w = _Worker(next(self._wids), self.blas_threads, self._key)
        self._selector.register(w.conn.fileno(), selectors.EVENT_READ, w)
        return w

    def _loop(self) -> None:
        while True:
            # Poll while any task has a time limit; otherwise sleep until I/O.
            with self._lock:  # only a worker's running task (its queue's head) can time out
                limited = any(w.inflight and w.inflight[0].future.limits.get("timeout")
                              for w in self._workers)
            events = self._selector.select(0.05 if limited else None)
            if limited:
                self._enforce_timeouts()
            for key, _ in events:
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    continue
                w: _Worker = key.data
                try:
                    msg = w.conn.recv_bytes()
                except (EOFError, OSError):
                    self._on_exit(w)
                    continue
                self._on_results(w, pickle.loads(msg)[1])
            with self._lock:
                if self._closing and not self._workers:
                    return

    def _enforce_timeouts(self) -> None:
        """Kill the worker of any task past its time limit (it is replaced on exit)."""
        now = time.time()
        with self._lock:
            for w in self._workers:
                seq, started = w.running()
                if not seq or w.timed_out:
                    continue
                task = next((t for t in w.inflight if t.seq == seq), None)
                limit = task.future.limits.get("timeout") if task else None
                if limit and now - started > limit:
                    w.timed_out = seq
                    try:
                        os.kill(w.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _on_results(self, w: _Worker, body: list) -> None:
        done = []
        with self._lock:
            for seq, ok, data, stats in body:
                t = w.inflight.popleft()
                assert t.seq == seq, (t.seq, seq)
                took = stats["finished"] - stats["started"]
                self._avg_task = took if self._avg_task is None else 0.8 * self._avg_task + 0.2 * took
                stats["worker"] = w.wid
                self._outstanding.discard(t.future)
                done.append((t, ok, data, stats))
            self._dispatch()  # refill before completing futures: keep workers busy
        for t, ok, data, stats in done:
            if ok:
                t.future._set_payload(data, stats)
            else:
                t.future._fail(serialize.loads_exception(data), stats)

    def _on_exit(self, w: _Worker) -> None:
        self._selector.unregister(w.conn.fileno())
        w.conn.close()
        try:
            code = w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            code = w.proc.wait()
        running = w.running_seq()
        failed: list[tuple[_Task, BaseException]] = []
        with self._lock:
            self._workers.remove(w)
            for t in w.inflight:
                if self._closing:
                    failed.append((t, ExecutorShutdownError(
                        f"the executor shut down before task {t.future.index} finished")))
                elif t.seq == w.timed_out:
                    limit = t.future.limits.get("timeout")
                    failed.append((t, TaskTimeoutError(
                        f"task {t.future.index} of job {t.future.job_id} ran longer than its "
                        f"{limit:g} s limit; its worker was killed and replaced, the other tasks "
                        "went on")))
                elif t.seq == running or t.requeues >= MAX_REQUEUES:
                    failed.append((t, self._crash_error(w, code, t)))
                else:
                    # Not started, or finished with its result still buffered: run it
                    # again, alone, so that a second death names the culprit for sure.
                    t.requeues += 1
                    t.isolate = True
            requeue = [t for t in w.inflight if all(t is not f for f, _ in failed)]
            self._pending.extendleft(reversed(requeue))
            for t, _ in failed:
                self._outstanding.discard(t.future)
            if not self._closing:
                w2 = self._spawn()
                self._workers.append(w2)
                self._dispatch()
        for t, exc in failed:
            t.future._fail(exc, {"worker": w.wid, "pid": w.proc.pid, "exitcode": code})

    @staticmethod
    def _crash_error(w: _Worker, code: int | None, t: _Task) -> WorkerCrashedError:
        return WorkerCrashedError(
            f"{w.describe()} died with {describe_exit(code)} while running task "
            f"{t.future.index} of job {t.future.job_id}. The worker was replaced and the "
            f"other tasks went on. If the task uses much memory, use larger machines or "
            f"smaller blocks; if it crashes native code, check its inputs.",
            exitcode=code,
        )

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- shutdown -----------------------------------------------------------------
    def shutdown(self, wait: bool = True) -> None:
        if wait:
            with self._lock:
                outstanding = list(self._outstanding)
            for fut in outstanding:
                try:
                    fut.exception()
                except BaseException:  # noqa: BLE001 - cancelled futures
                    pass
        with self._lock:
            if self._closing:
                return
            self._closing = True
            pending, self._pending = list(self._pending), deque()
            workers = list(self._workers)
        for t in pending:
            if t.requeues == 0 and not t.future._start():
                continue
            t.future._retry = None
            t.future._fail(ExecutorShutdownError(
                f"the executor shut down before task {t.future.index} of job "
                f"{t.future.job_id} started"))
        for w in workers:
            try:
                w.conn.send_bytes(pickle.dumps(("exit", None)))
            except OSError:
                pass
        deadline = time.monotonic() + (5.0 if wait else 0.5)
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
        self._wake()
        if threading.current_thread() is not self._manager:
            self._manager.join(timeout=10)
        _LIVE.discard(self)
