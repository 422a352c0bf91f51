"""Driver side of the cluster backend: tasks run on an existing Dask distributed cluster.

Each map's function bytes become one task of the Dask graph
(:func:`~shardwren.backends.dask_worker.function_bytes`) that every task of the
map depends on: Dask ships them to each worker once, the worker unpickles them
once (cached by map id), and if the worker holding them dies the scheduler
recomputes them from the graph instead of losing them. Each shardwren task is a
Dask task with a fresh key (a speculative backup or a retry is a new task, never
the original under its old name) running the common runtime, so results, user
exceptions with remote tracebacks and stats look identical on every backend.

A worker that dies mid-task is Dask's to handle: the scheduler reschedules the
task on another worker (up to ``distributed.scheduler.allowed-failures`` times,
then ``KilledWorker``, reported as :class:`WorkerCrashedError`). Timeouts are
enforced by the worker (the task is abandoned at its deadline) and, for a worker
that stops responding altogether, by a driver-side deadline armed when the task
reports its start (a task with a timeout hands that report to the scheduler before it
runs, so a worker frozen at once still has it delivered).

Cancellation: a task stays pending until its worker announces the start (an
event on :data:`~shardwren.backends.dask_worker.STARTED_TOPIC`). ``cancel()`` of
a pending task asks the scheduler, which releases it if it has not handed it to
a worker yet (Dask keeps most of a large map in its own queue, ``queued``): True
means it never runs (if a worker died running it and Dask had queued it again, that it
never runs again). A task a worker already holds counts as started: ``cancel()``
returns False and it runs to its end. A PyWren-style cancel of a running call
abandons it: the worker thread cannot be stopped and finishes in the background,
as a running Lambda call did under PyWren.
"""

from __future__ import annotations

import functools
import itertools
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures as cf
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import distributed

from .. import serialize
from .._timers import Timer, Timers
from ..errors import (
    BackendNotInstalledError,
    ConfigError,
    ExecutorShutdownError,
    SchedulerUnreachableError,
    StoreNotSharedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from . import dask_worker
from .base import Backend

if TYPE_CHECKING:
    from ..futures import Future
    from ..storage import Store

#: Extra seconds past a task's timeout before the driver gives up on its worker.
DEADLINE_MARGIN = 5.0
#: Threads fetching finished tasks' results from the workers.
FETCHERS = 8
#: Longest a cancel() waits for the scheduler to receive a task just submitted.
WITHDRAW_WAIT = 2.0


def tune_workers(client: Any, mmap_threshold: int = 256 << 20,
                 trim_threshold: int = 512 << 20) -> dict[str, bool]:
    """Let Dask workers reuse large numeric buffers instead of re-faulting them.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes
    glibc hand every multi-megabyte array back to the kernel when freed and
    page-fault it in again on the next task. For block-matrix work that costs
    10-20% of task time (measured in ``benchmarks/bench_dask.py``). This raises
    glibc's mmap and trim thresholds in every current worker, at the price of
    memory being returned to the OS later. It is opt-in: workers are yours.

    Returns
    -------
    dict
        Worker address -> whether the settings took effect (glibc only).
    """
    result: dict[str, bool] = client.run(dask_worker.tune_malloc, mmap_threshold, trim_threshold)
    return result


def _local_hosts() -> set[str]:
    names = {"127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


class _StartListeners:
    """The backends listening to one client's start events.

    A client has one handler per topic (``subscribe_topic`` replaces it), and
    several executors may share a client: one handler per client hands each event
    to every backend using it.
    """

    _lock = threading.Lock()
    _by_client: dict[str, list[DaskBackend]] = {}

    @classmethod
    def add(cls, client: Any, backend: DaskBackend) -> None:
        def handler(event: Any) -> None:
            with cls._lock:
                targets = list(cls._by_client.get(client.id, ()))
            for b in targets:
                b._on_started(event)

        # Subscribing and unsubscribing only queue a message to the scheduler: done under
        # the lock, so that they reach it in the order the listener lists changed.
        with cls._lock:
            listeners = cls._by_client.setdefault(client.id, [])
            listeners.append(backend)
            if len(listeners) == 1:
                client.subscribe_topic(dask_worker.STARTED_TOPIC, handler)

    @classmethod
    def remove(cls, client: Any, backend: DaskBackend) -> None:
        with cls._lock:
            listeners = cls._by_client.get(client.id, [])
            if backend in listeners:
                listeners.remove(backend)
            if listeners:
                return
            cls._by_client.pop(client.id, None)
            try:
                client.unsubscribe_topic(dask_worker.STARTED_TOPIC)
            except Exception:  # noqa: BLE001, S110 - best effort: the client may be closed
                pass


class _Running:
    """One Dask task standing for one copy of a shardwren task."""

    __slots__ = ("dfut", "fn_id", "fut", "timer")

    def __init__(self, fut: Future, dfut: Any, fn_id: str):
        self.fut, self.dfut, self.fn_id = fut, dfut, fn_id
        self.timer: Timer | None = None


class DaskBackend(Backend):
    """Tasks on a Dask distributed cluster.

    Parameters
    ----------
    address : str, optional
        Scheduler address (default: setting ``dask_address``).
    client : distributed.Client, optional
        Use an existing client instead (it is not closed on shutdown).
    blas_threads : int, optional
        BLAS threads per task (default 1: one per Dask worker thread).
    workers, settings, key
        See :class:`~shardwren.backends.base.Backend` (``workers`` is ignored: the
        cluster's threads are its parallelism).
    """

    name = "dask"
    options = ("address", "client")
    kills_on_timeout = False  # a Dask worker thread cannot be killed: it is abandoned

    def __init__(self, *, workers: int | None = None, blas_threads: int | None = None,
                 settings: Mapping[str, Any] | None = None, key: bytes | None = None,
                 address: str | None = None, client: Any = None, **options: Any):
        settings = settings or {}
        self._own_client = client is None
        if client is None:
            address = address or settings.get("dask_address")
            if not address:
                raise ConfigError(
                    "the dask backend needs a scheduler: default_executor(backend='dask', "
                    "address='tcp://host:8786'), client=distributed.Client(...), or "
                    "SHARDWREN_DASK_ADDRESS")
            timeout = float(settings.get("connect_timeout") or 10)
            try:
                client = distributed.Client(address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise SchedulerUnreachableError(
                    f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); "
                    "start one with `dask scheduler`, check the address and firewall, or raise "
                    "SHARDWREN_CONNECT_TIMEOUT") from None
        self.client = client
        self.blas_threads = int(blas_threads or 1)
        self.shared_filesystem = bool(settings.get("shared_filesystem"))
        #: Tasks are signed only with a configured secret: the workers must hold it too.
        self.signed = key is not None
        self._lock = threading.Lock()
        self._outstanding: dict[str, _Running] = {}  # Dask key -> copy
        self._fns: dict[str, list[Any]] = {}  # fn_id -> [Dask future of its bytes, users]
        self._keys = itertools.count()
        self._timers = Timers("shardwren-dask-deadlines")
        # Results are fetched here, not in Dask's done-callback thread: that is a single
        # thread, and a fetch is a round trip to the worker holding the result, so
        # fetching one after the other there capped a map at about 250 tasks/s.
        self._fetchers = cf.ThreadPoolExecutor(max_workers=FETCHERS,
                                               thread_name_prefix="shardwren-dask-fetch")
        self._subscribed = False
        self._closing = False

    # -- capabilities of the cluster as it is now ----------------------------------------
    def _max_threads(self) -> int:
        return max(self.client.nthreads().values(), default=1)

    @property
    def isolates_tasks(self) -> bool:  # type: ignore[override]
        """True when every worker runs one task thread (``--nthreads 1``)."""
        return self._max_threads() == 1

    @property
    def enforces_memory_limit(self) -> bool:  # type: ignore[override]
        """RLIMIT_DATA is per process: only workers with one task thread can enforce it."""
        return self._max_threads() == 1

    def check_limits(self, limits: Mapping[str, Any]) -> None:
        if limits.get("memory_limit"):
            threads = self._max_threads()
            if threads > 1:
                raise ConfigError(
                    f"memory_limit cannot be enforced per task on this Dask cluster: its workers "
                    f"run up to {threads} tasks in one process (--nthreads {threads}) and the "
                    "limit (RLIMIT_DATA) is per process. Start workers with --nthreads 1 (and "
                    "--nworkers N for more processes), or drop memory_limit and rely on the "
                    "workers' own --memory-limit")

    @property
    def parallelism(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def worker_hosts(self) -> set[str]:
        """Host names or IPs of the cluster's workers."""
        return {urlparse(a).hostname or a for a in self.client.scheduler_info()["workers"]}

    def check_store(self, store: Store) -> None:
        if store.scheme == "memory":
            raise StoreNotSharedError(
                f"store {store.url} lives in this process's memory; Dask workers cannot reach it. "
                "Use s3://bucket/prefix (or a file:// path on a file system every worker mounts, "
                "with shared_filesystem=True)")
        if store.is_local and not self.shared_filesystem:
            remote = self.worker_hosts() - _local_hosts()
            if remote:
                raise StoreNotSharedError(
                    f"store {store.url} is a local directory but Dask workers run on other hosts "
                    f"({', '.join(sorted(remote))}); use s3://bucket/prefix, or, if every worker "
                    "mounts the same path, pass shared_filesystem=True (SHARDWREN_SHARED_FILESYSTEM=1)")

    # -- submission ----------------------------------------------------------------------
    def submit(self, fn_id: str, fn_bytes: bytes, tasks: Sequence[tuple[Future, bytes]]) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
            entry = self._fns.get(fn_id)
            if entry is None:
                fn_future = self.client.submit(dask_worker.function_bytes, fn_bytes, pure=False,
                                               key=f"shardwren-fn-{fn_id}-{next(self._keys)}")
                entry = self._fns[fn_id] = [fn_future, 0]
            entry[1] += 1  # held while this call submits
        try:
            for fut, payload in tasks:
                self._submit_one(fn_id, entry[0], fut, payload)
        finally:
            self._release_fn(fn_id)

    def _submit_one(self, fn_id: str, fn_future: Any, fut: Future, payload: bytes) -> None:
        # A fresh key per copy: Client.submit returns the existing future for a known key,
        # which would turn a backup or a retry into a no-op.
        key = f"shardwren-{fn_id}-{fut.index}-{next(self._keys)}"
        where = f"task {fut.index} of job {fut.job_id}"
        running = _Running(fut, None, fn_id)
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
            self._outstanding[key] = running
            self._fns[fn_id][1] += 1
        # The task stays pending (cancellable) until its worker announces the start. Its
        # books entry exists first, so a cancel() from another thread always finds it.
        if not fut.set_queued(functools.partial(self._withdraw, key)):
            self._finish(key)
            return  # cancelled, or another copy already finished
        self._subscribe()
        timeout = fut.limits.get("timeout")
        try:
            dfut = self.client.submit(
                dask_worker.run, fn_future, fn_id, payload, self.blas_threads,
                fut.limits.get("memory_limit"), timeout, where, self.signed, key,
                pure=False, key=key)
        except BaseException:
            self._finish(key)
            raise
        with self._lock:
            running.dfut = dfut
            withdrawn = key not in self._outstanding  # by a cancel() while it was sent
        if withdrawn:
            dfut.release()
            return
        dfut.add_done_callback(self._on_done)

    def _withdraw(self, key: str) -> bool:
        """Take a queued task back (``Future.cancel``); False once a worker has it.

        The scheduler decides, in one step of its event loop
        (:func:`~shardwren.backends.dask_worker.withdraw`): a task it has not handed
        to a worker is released there and never runs. A task a worker holds counts
        as started, even if it still waits in that worker's own queue. When the
        scheduler cannot be asked (an asynchronous client, a scheduler without
        shardwren or refusing pickled functions, no answer), the task is not
        withdrawn either, and stays pending: True must mean it never runs.
        """
        with self._lock:
            running = self._outstanding.get(key)
            closing = self._closing
        if running is None or closing or getattr(self.client, "asynchronous", False):
            return False  # reported already, or being failed by shutdown
        verdict: Any = None
        deadline = time.monotonic() + WITHDRAW_WAIT
        try:
            while True:
                verdict = self.client.run_on_scheduler(dask_worker.withdraw, key, self.client.id)
                # None: the submission has not reached the scheduler yet (the client
                # sends it on its batched stream, run_on_scheduler on another comm).
                if verdict is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
        except Exception:  # noqa: BLE001 - no answer: the task may run, so it is not withdrawn
            return False
        if verdict is not True:
            if verdict is False:
                running.fut.set_running()  # a worker has it
            return False
        self._finish(key)
        with self._lock:
            dfut = running.dfut  # None: _submit_one sees the key gone and releases it
        if dfut is not None:
            dfut.release()  # the scheduler forgot it; the client's copy goes too
        return True

    def _release_fn(self, fn_id: str) -> None:
        with self._lock:
            entry = self._fns.get(fn_id)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._fns[fn_id]  # Dask forgets the bytes once no task needs them

    def _finish(self, key: str) -> _Running | None:
        """Take a copy out of the books (once: the first of its result and its deadline)."""
        with self._lock:
            running = self._outstanding.pop(key, None)
        if running is not None:
            if running.timer is not None:
                running.timer.cancel()
            self._release_fn(running.fn_id)
        return running

    def _on_done(self, dfut: Any) -> None:
        """A Dask task ended (Dask's callback thread): fetch its result in a fetcher."""
        try:
            self._fetchers.submit(self._deliver, dfut)
        except RuntimeError:  # shut down: shutdown() fails what is still outstanding
            pass

    def _deliver(self, dfut: Any) -> None:
        """Report one finished copy (a fetcher thread). It stays in the books until here,
        so that shutdown(wait=True) waits for the copies being fetched too."""
        running = self._finish(dfut.key)
        if running is None:
            return
        fut = running.fut
        try:
            ok, data, stats = dfut.result()
        except BaseException as exc:  # noqa: BLE001 - infrastructure failures
            fut.set_failure(self._infra_error(exc, fut))
            return
        if ok:
            fut.set_payload(data, stats)
        else:
            fut.set_failure(serialize.loads_exception(data), stats)

    def _infra_error(self, exc: BaseException, fut: Future) -> BaseException:
        where = f"task {fut.index} of job {fut.job_id}"
        name = type(exc).__name__
        if self._closing:
            err: BaseException = ExecutorShutdownError(
                f"{where} was cancelled: the executor shut down")
        elif name == "KilledWorker":
            err = WorkerCrashedError(
                f"{where} killed every Dask worker that ran it ({exc}); it probably crashes its "
                "process or exceeds the worker's memory limit")
        elif isinstance(exc, ImportError):
            err = BackendNotInstalledError(
                f"a Dask worker could not run {where}: {name}: {exc}. Install shardwren (and the "
                "modules your functions import) on every worker: pip install 'shardwren[dask]'")
        else:  # cancelled or lost by the cluster (a scheduler restart, a lost key, ...)
            err = WorkerCrashedError(f"the Dask cluster lost {where} ({name}: {exc})")
        err.__cause__ = exc
        return err

    # -- starts: running state and the driver's own deadline ---------------------------
    def _subscribe(self) -> None:
        with self._lock:
            if self._subscribed:
                return
            self._subscribed = True
        _StartListeners.add(self.client, self)

    def _on_started(self, event: Any) -> None:
        """A task started on a worker (runs on the client's event loop)."""
        msg = event[1] if isinstance(event, tuple) else event
        key = msg.get("key") if isinstance(msg, dict) else None
        with self._lock:
            running = self._outstanding.get(key) if key else None
        if running is None:
            return  # another driver's task, or already done
        running.fut.set_running()
        limit = float(running.fut.limits.get("timeout") or 0)
        if not limit:
            return
        margin = max(DEADLINE_MARGIN, 0.25 * limit)
        with self._lock:
            # The latest start counts: a second event for the key is the same start
            # delivered twice (a direct call answered late, then the batched copy) or a
            # run again after its worker died; the older deadline must not fire.
            if running.timer is not None:
                running.timer.cancel()
            try:
                running.timer = self._timers.call_later(limit + margin, self._expire, key,
                                                        limit, margin, time.time())
            except RuntimeError:
                pass  # shutting down

    def _expire(self, key: str, limit: float, margin: float, since: float) -> None:
        running = self._finish(key)
        if running is None:
            return
        try:
            running.dfut.cancel()
        except Exception:  # noqa: BLE001, S110 - the cluster may be gone; the task is abandoned
            pass
        fut = running.fut
        fut.set_failure(TaskTimeoutError(
            f"task {fut.index} of job {fut.job_id} did not report back {limit + margin:.0f} s "
            f"after it started (its {limit:g} s limit plus {margin:g} s): the Dask worker running "
            "it stopped responding (paused, swapping or cut off), so it was abandoned"))

    # -- lifetime -------------------------------------------------------------------------
    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._closing:
                return
            waiting = [r.fut for r in self._outstanding.values()]
        if wait and waiting:
            cf.wait(waiting)  # our own futures: no default Dask client needed
        with self._lock:
            self._closing = True
            remaining = list(self._outstanding.values())
            self._outstanding.clear()
            self._fns.clear()
        self._timers.close()
        if remaining:
            try:
                self.client.cancel([r.dfut for r in remaining if r.dfut is not None])
            except Exception:  # noqa: BLE001, S110 - the cluster may already be gone
                pass
            for r in remaining:
                r.fut.set_failure(ExecutorShutdownError(
                    f"the executor shut down before task {r.fut.index} of job {r.fut.job_id} "
                    "finished"))
        # Copies being fetched right now finish; the rest were failed above.
        self._fetchers.shutdown(wait=True, cancel_futures=True)
        if self._subscribed:
            _StartListeners.remove(self.client, self)
        if self._own_client:
            self.client.close()
