"""Driver side of the embedded default backend: long-lived worker processes on this machine.

Design (after loky's ``process_executor``):

* each worker is a ``python -m shardwren.backends._worker`` subprocess (not a
  fork, so no inherited locks or threads, and no re-import of the user's
  ``__main__``) talking over one socketpair;
* one manager thread in the driver starts the workers (so the kernel kills them
  when it ends: ``PR_SET_PDEATHSIG`` follows the thread that started a process),
  waits on every worker socket and on the nearest task deadline with epoll,
  decodes result batches, completes futures and refills workers;
* tasks are sent in batches sized from the measured task duration, so no-op
  maps run at thousands of tasks per second while long tasks go one at a time
  (no worker hoards work the others could take);
* a worker that dies is noticed as EOF on its socket; the task it was running
  (read from a shared-memory slot) fails with :class:`WorkerCrashedError`, the
  tasks queued behind it go back to the queue, and a fresh worker replaces it;
* a frame the manager cannot decode, or one it did not expect, costs the worker
  that sent it (killed and replaced) and fails the task it concerns, by name;
  anything else that goes wrong in the manager fails every outstanding future with
  :class:`ExecutorBrokenError` and kills the workers: nothing hangs.
"""

from __future__ import annotations

import concurrent.futures as cf

import atexit
import functools
import itertools
import mmap
import os
import pickle
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .. import config, serialize
from ..errors import (
    ExecutorBrokenError,
    ExecutorShutdownError,
    ResultTransferError,
    TaskTimeoutError,
    WorkerCrashedError,
    describe_exit,
)
from ._worker import CLAIM_OFF, RING, RING_OFF, SLOT_BYTES, fence
from .base import Backend
from .runtime import FN_CACHE_SIZE

if TYPE_CHECKING:
    from ..futures import Future

#: Seconds of work to queue on a worker at once (bounds result latency).
BATCH_SECONDS = 0.005
MAX_BATCH = 256
#: A task whose worker keeps dying between tasks is failed after this many tries.
MAX_REQUEUES = 3


class _Task:
    __slots__ = ("fn_bytes", "fn_id", "future", "isolate", "limit", "payload", "pos", "requeues",
                 "sent", "seq", "withdrawn")

    def __init__(self, seq: int, future: Future, fn_id: str, fn_bytes: bytes, payload: bytes):
        self.seq, self.future, self.fn_id = seq, future, fn_id
        self.fn_bytes, self.payload = fn_bytes, payload
        self.limit: float | None = future.limits.get("timeout")
        self.isolate = False
        self.requeues = 0
        self.sent = 0.0
        self.pos = 0  # its place in the stream of tasks sent to its worker
        self.withdrawn = False  # taken back from a worker's queue (cancelled)


class _Worker:
    """Driver-side handle of one worker process (created in the manager thread only)."""

    def __init__(self, wid: int, blas_threads: int, key: bytes | None = None):
        self.wid = wid
        parent, child = socket.socketpair()
        slot_fd = os.memfd_create(f"shardwren-worker-{wid}")
        try:
            os.ftruncate(slot_fd, SLOT_BYTES)
            self.slot = mmap.mmap(slot_fd, SLOT_BYTES)
            env = dict(os.environ)
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(blas_threads)  # before numpy loads; threadpoolctl re-checks
            # Functions pickled by reference (defined in the user's modules) must be
            # importable in the worker exactly as in the driver.
            env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shardwren.backends._worker",
                 str(child.fileno()), str(slot_fd), str(blas_threads), str(os.getpid())],
                pass_fds=(child.fileno(), slot_fd), stdin=subprocess.DEVNULL, env=env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
            os.close(slot_fd)
        self.conn = Connection(parent.detach())
        if key:  # never in argv or the environment, where other users could read it
            self.conn.send_bytes(pickle.dumps(("key", key)))
        self.inflight: deque[_Task] = deque()
        self.limited = 0  # tasks in inflight with a timeout
        self.fns: OrderedDict[str, bool] = OrderedDict()  # mirrors the worker's LRU
        self.timed_out = 0  # seq of the task this worker was killed for, if any
        self.sent_count = 0  # tasks sent so far: the next one's pos is this + 1
        self.trouble: tuple[str, int | None, BaseException | None] | None = None

    def running(self) -> tuple[int, float]:
        """(seq, start time) of the task running now; seq 0 when idle."""
        while True:
            seq = struct.unpack_from("q", self.slot, 0)[0]
            started = struct.unpack_from("d", self.slot, 8)[0]
            if struct.unpack_from("q", self.slot, 0)[0] == seq:  # not torn by a new task
                return seq, started

    def running_seq(self) -> int:
        return self.running()[0]

    def send(self, tasks: list[_Task]) -> None:
        body = []
        now = time.time()
        for t in tasks:
            if t.fn_id in self.fns:
                self.fns.move_to_end(t.fn_id)
                fn_bytes = None
            else:
                self.fns[t.fn_id] = True
                if len(self.fns) > FN_CACHE_SIZE:
                    self.fns.popitem(last=False)
                fn_bytes = t.fn_bytes
            memory_limit = t.future.limits.get("memory_limit")
            where = f"task {t.future.index} of job {t.future.job_id}" if memory_limit else None
            self.sent_count += 1
            t.pos = self.sent_count
            body.append((t.seq, t.pos, t.fn_id, fn_bytes, t.payload, memory_limit, where))
            t.sent = now
            self.limited += t.limit is not None
            self.inflight.append(t)
        try:
            self.conn.send_bytes(pickle.dumps(("run", body), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # the worker died; its EOF is handled by the manager thread

    def kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def reap(self, timeout: float = 5.0) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def describe(self) -> str:
        return f"worker {self.wid} (pid {self.proc.pid})"


_LIVE: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for backend in list(_LIVE):
        backend.shutdown(wait=False)


class LocalBackend(Backend):
    """Worker processes on this machine.

    Parameters
    ----------
    workers : int, optional
        Number of worker processes (default: number of CPU cores); at least 1.
    blas_threads : int, optional
        BLAS threads per worker (default: ``max(1, cores // workers)``), so that
        workers x threads never exceeds the cores.
    settings, key
        See :class:`~shardwren.backends.base.Backend`.
    """

    name = "local"
    kills_on_timeout = True
    enforces_memory_limit = True
    isolates_tasks = True
    ships_key_privately = True

    def __init__(self, *, workers: int | None = None, blas_threads: int | None = None,
                 settings: Mapping[str, Any] | None = None, key: bytes | None = None,
                 **options: Any):
        cores = os.cpu_count() or 1
        self._n: int = config.check("workers", workers, "LocalBackend(workers=...)") or cores
        self.blas_threads: int = (config.check("blas_threads", blas_threads)
                                  or max(1, cores // self._n))
        self._key = key
        self._lock = threading.RLock()
        self._pending: deque[_Task] = deque()
        self._tasks: set[_Task] = set()  # submitted and not yet reported
        self._seq = itertools.count(1)
        self._wids = itertools.count()
        self._avg_task: float | None = None  # EWMA of task seconds, None until measured
        self._closing = False
        self._broken: ExecutorBrokenError | None = None
        self._workers: list[_Worker] = []
        self._selector: selectors.BaseSelector | None = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already means "wake up"
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._manager = threading.Thread(target=self._run, name="shardwren-local", daemon=True)
        self._manager.start()
        self._ready.wait()
        if self._start_error is not None:
            self._manager.join()
            raise self._start_error
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
            self._check_open()
            for fut, payload in tasks:
                t = _Task(next(self._seq), fut, fn_id, fn_bytes, payload)
                self._pending.append(t)
                self._tasks.add(t)
            timed = self._dispatch()
        if timed and threading.current_thread() is not self._manager:
            self._wake()  # the manager's wait must now end at this task's deadline

    def _check_open(self) -> None:
        if self._broken is not None:
            raise ExecutorBrokenError(str(self._broken)) from self._broken.__cause__
        if self._closing:
            raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")

    def _batch_size(self) -> int:
        if self._avg_task is None:
            return 1  # durations unknown: queue nothing behind a task that may be long
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self._avg_task, 1e-7))))

    def _dispatch(self) -> bool:
        """Fill idle capacity from the queue; whether a task with a timeout went out.
        Caller holds the lock."""
        cap = self._batch_size()
        timed = False
        for w in sorted(self._workers, key=lambda w: len(w.inflight)):
            if not self._pending:
                break
            if w.trouble or w.inflight and (w.inflight[-1].isolate or len(w.inflight) >= cap):
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
                # An idle worker starts the first task at once; the others wait in its
                # queue and stay pending (cancellable) until they start.
                starts_now = not w.inflight and not batch
                if not (t.future.set_running() if starts_now
                        else t.future.set_queued(functools.partial(self._withdraw, w, t))):
                    self._tasks.discard(t)
                    continue  # cancelled before it started, or another copy finished
                batch.append(t)
                timed = timed or t.limit is not None
                if t.isolate:
                    break
            if batch:
                w.send(batch)
        return timed

    def _withdraw(self, w: _Worker, t: _Task) -> bool:
        """Take ``t`` back from ``w``'s queue (Future.cancel); False if it has started.

        See the withdrawal protocol in :mod:`shardwren.backends._worker`.
        """
        with self._lock:
            if t.withdrawn or all(x is not t for x in w.inflight):
                return True  # back in our own queue (its worker died) or reported already
            try:
                struct.pack_into("q", w.slot, RING_OFF + 8 * (t.pos % RING), t.pos)
                fence()
                claimed = struct.unpack_from("q", w.slot, CLAIM_OFF)[0]
            except ValueError:  # the slot is closed: the worker is gone, t goes back to _pending
                return True
            if claimed < t.pos:
                t.withdrawn = True  # the worker will skip it and say so
                return True
            t.future.set_running()  # it started: the caller sees it running
            return False

    def abandon(self, future: Future) -> None:
        """Replace the worker running ``future`` (already failed by the caller): the
        tasks queued behind it go back to the queue, as when a worker dies."""
        with self._lock:
            for w in self._workers:
                seq = w.running_seq()
                if seq and any(t.seq == seq and t.future is future for t in w.inflight):
                    w.kill()  # its EOF is handled by the manager thread
                    return

    # -- manager thread -----------------------------------------------------------
    def _spawn(self) -> _Worker:
        w = _Worker(next(self._wids), self.blas_threads, self._key)
        assert self._selector is not None
        self._selector.register(w.conn.fileno(), selectors.EVENT_READ, w)
        return w

    def _run(self) -> None:
        try:
            try:
                with self._lock:
                    for _ in range(self._n):
                        self._workers.append(self._spawn())
            except BaseException as exc:
                self._start_error = exc
                raise
            finally:
                self._ready.set()
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - nothing may hang: fail them all
            if self._start_error is None:
                self._break(exc)
        finally:
            self._release()

    def _loop(self) -> None:
        assert self._selector is not None
        while True:
            with self._lock:
                if self._closing and not self._workers:
                    return
                wait = self._until_next_deadline()
            events = self._selector.select(wait)
            for key, _ in events:
                if key.data is None:
                    self._drain_wake()
                else:
                    self._service(key.data)
            self._enforce_timeouts()

    def _service(self, w: _Worker) -> None:
        """Read and handle one frame from ``w``; a bad frame costs that worker only."""
        try:
            msg = w.conn.recv_bytes()
        except (EOFError, OSError):
            self._on_exit(w)
            return
        except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError for a huge frame
            self._on_trouble(w, "lost", exc)
            return
        try:
            kind, body = pickle.loads(msg)
            if kind != "done" or not isinstance(body, list):
                raise ValueError(f"a message of kind {kind!r}")
        except BaseException as exc:  # noqa: BLE001 - undecodable: the frame is lost
            del msg
            self._on_trouble(w, "lost", exc)
            return
        del msg
        self._on_results(w, body)

    def _on_results(self, w: _Worker, body: list[Any]) -> None:
        done = []
        unexpected = None
        with self._lock:
            for item in body:
                try:
                    seq, ok, data, stats = item
                    if not (w.inflight and w.inflight[0].seq == seq and isinstance(stats, dict)
                            and isinstance(data, (bytes, bytearray))):
                        raise ValueError(f"a result for task #{seq}, which it was not running")
                    took = float(stats["finished"]) - float(stats["started"])
                except Exception as exc:  # noqa: BLE001 - a protocol violation
                    unexpected = exc
                    break
                t = w.inflight.popleft()
                w.limited -= t.limit is not None
                if w.inflight and not w.inflight[0].withdrawn:
                    w.inflight[0].future.set_running()  # the worker has moved on to it
                if ok is None:  # skipped: withdrawn, or both sides saw each other (run it later)
                    if t.withdrawn or t.future.cancelled():
                        self._tasks.discard(t)
                    else:
                        self._pending.appendleft(t)
                    continue
                self._avg_task = took if self._avg_task is None else 0.8 * self._avg_task + 0.2 * took
                stats["worker"] = w.wid
                self._tasks.discard(t)
                done.append((t, ok, data, stats))
            self._dispatch()  # refill before completing futures: keep workers busy
        for t, ok, data, stats in done:
            try:
                if ok:
                    t.future.set_payload(data, stats)
                else:
                    t.future.set_failure(serialize.loads_exception(data), stats)
            except Exception as exc:  # noqa: BLE001 - one task's trouble is that task's
                err = ResultTransferError(f"the result of task {t.future.index} of job "
                                          f"{t.future.job_id} could not be delivered: "
                                          f"{type(exc).__name__}: {exc}")
                err.__cause__ = exc
                t.future.set_failure(err, stats)
        if unexpected is not None:
            self._on_trouble(w, "unexpected", unexpected)

    def _on_trouble(self, w: _Worker, kind: str, exc: BaseException) -> None:
        """``w`` sent a frame that was lost (``kind="lost"``) or not expected: replace it."""
        with self._lock:
            first = w.inflight[0].seq if w.inflight else None
            w.trouble = (kind, first, exc)
        w.kill()  # its stream can no longer be trusted; handled as a death, right now
        self._on_exit(w)

    def _on_exit(self, w: _Worker) -> None:
        with self._lock:  # never close a socket another thread may be sending on
            if self._selector is not None:
                try:
                    self._selector.unregister(w.conn.fileno())
                except (KeyError, ValueError, OSError):
                    pass
            w.conn.close()
        code = w.reap()
        running = w.running_seq()
        w.slot.close()
        failed: list[tuple[_Task, BaseException]] = []
        with self._lock:
            if w in self._workers:
                self._workers.remove(w)
            for t in w.inflight:
                exc = self._fate(w, t, code, running)
                if exc is not None:
                    failed.append((t, exc))
                else:
                    # Not started, or finished with its result still buffered: run it
                    # again, alone, so that a second death names the culprit for sure.
                    t.requeues += 1
                    t.isolate = True
            requeue = [t for t in w.inflight if all(t is not f for f, _ in failed)]
            self._pending.extendleft(reversed(requeue))
            for t, _ in failed:
                self._tasks.discard(t)
            if not self._closing and self._broken is None:
                self._workers.append(self._spawn())
                self._dispatch()
        for t, exc in failed:
            t.future.set_failure(exc, {"worker": w.wid, "pid": w.proc.pid, "exitcode": code})

    def _fate(self, w: _Worker, t: _Task, code: int | None, running: int) -> BaseException | None:
        """The error task ``t`` fails with now that ``w`` is gone, or None to run it again."""
        what = f"task {t.future.index} of job {t.future.job_id}"
        trouble = w.trouble
        if self._closing:
            return ExecutorShutdownError(f"the executor shut down before {what} finished")
        if trouble is not None and trouble[0] == "lost" and t.seq == trouble[1]:
            err = ResultTransferError(
                f"the result of {what} could not be received from {w.describe()} "
                f"({type(trouble[2]).__name__}: {trouble[2]}); the worker was replaced. If the "
                "result is large, write it to the store and return its key instead")
            err.__cause__ = trouble[2]
            return err
        if t.seq == w.timed_out:
            return TaskTimeoutError(
                f"{what} ran out of time: it ran longer than its {t.limit:g} s limit; its worker was killed and "
                "replaced, the other tasks went on")
        if t.seq == running or t.requeues >= MAX_REQUEUES:
            if trouble is not None:
                return WorkerCrashedError(
                    f"{w.describe()} sent an unexpected message "
                    f"({type(trouble[2]).__name__}: {trouble[2]}) while running {what}; it was "
                    "killed and replaced and the other tasks went on", exitcode=code)
            return WorkerCrashedError(
                f"{w.describe()} died with {describe_exit(code)} while running {what}. The "
                "worker was replaced and the other tasks went on. If the task uses much memory, "
                "use larger machines or smaller blocks; if it crashes native code, check its "
                "inputs.", exitcode=code)
        return None

    # -- timeouts -----------------------------------------------------------------
    def _until_next_deadline(self) -> float | None:
        """Seconds until a running task could pass its timeout (None: no limit). Lock held."""
        now = time.time()
        nearest = None
        for w in self._workers:
            if not w.limited or w.timed_out:
                continue
            seq, started = w.running()
            task = next((t for t in w.inflight if t.seq == seq), None) if seq else None
            if task is not None and task.limit is not None:
                deadline = started + task.limit
            else:  # its limited tasks have not started: none can expire sooner than this
                deadline = now + min(t.limit for t in w.inflight if t.limit is not None)
            nearest = deadline if nearest is None else min(nearest, deadline)
        return None if nearest is None else max(0.0, nearest - now) + 0.001

    def _enforce_timeouts(self) -> None:
        """Kill the worker of any task past its time limit (it is replaced on exit)."""
        now = time.time()
        with self._lock:
            for w in self._workers:
                if not w.limited or w.timed_out:
                    continue
                seq, started = w.running()
                task = next((t for t in w.inflight if t.seq == seq), None) if seq else None
                if task is not None and task.limit is not None and now - started > task.limit:
                    w.timed_out = seq
                    w.kill()  # SIGKILL: works on a stopped (SIGSTOP) worker too

    def _wake(self) -> None:
        with self._lock:  # the fd is closed under this lock: never write to a reused number
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    # -- failure of the backend itself ----------------------------------------------
    def _break(self, exc: BaseException) -> None:
        """The manager failed: fail every outstanding future, refuse new work."""
        broken = ExecutorBrokenError(
            f"the local backend's manager thread failed ({type(exc).__name__}: {exc}); every task "
            "still outstanding failed with this error and new work is refused. Create a new "
            "executor (and please report this with the traceback).")
        broken.__cause__ = exc
        with self._lock:
            self._broken = broken
            victims = list(self._tasks)
            self._tasks.clear()
            self._pending.clear()
        for t in victims:
            err = ExecutorBrokenError(str(broken))
            err.__cause__ = exc
            t.future.set_failure(err)

    def _release(self) -> None:
        """Manager thread, on its way out: no worker, descriptor or mapping remains."""
        with self._lock:
            workers, self._workers = list(self._workers), []
            if self._selector is not None:
                self._selector.close()
                self._selector = None
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        for w in workers:
            w.kill()
            w.conn.close()
            w.reap()
            w.slot.close()

    # -- shutdown -----------------------------------------------------------------
    def shutdown(self, wait: bool = True) -> None:
        in_manager = threading.current_thread() is self._manager
        if wait and not in_manager:
            with self._lock:
                outstanding = [t.future for t in self._tasks]
            cf.wait(outstanding)  # each done, failed or cancelled
        with self._lock:
            already = self._closing
            self._closing = True
            pending, self._pending = list(self._pending), deque()
            for t in pending:
                self._tasks.discard(t)
            workers = list(self._workers)
            for w in workers:
                try:
                    w.conn.send_bytes(pickle.dumps(("exit", None)))
                except OSError:
                    pass
        if not already:
            for t in pending:
                t.future.set_failure(ExecutorShutdownError(
                    f"the executor shut down before task {t.future.index} of job "
                    f"{t.future.job_id} started"))
            deadline = time.monotonic() + (5.0 if wait else 0.5)
            for w in workers:
                try:
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.kill()
        self._wake()
        if not in_manager:
            self._manager.join(timeout=30)
        _LIVE.discard(self)
