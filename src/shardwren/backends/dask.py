"""Cluster backend: tasks run on an existing Dask distributed cluster.

The function's bytes are scattered to the cluster once per map and every task
depends on them, so Dask ships them to each worker once; the worker unpickles
them once (cached by map id). Each task runs through the same ``run_task`` as
the local backend, so results, user exceptions with remote tracebacks and stats
look identical. A worker that dies mid-task is Dask's to handle: the scheduler
reschedules the task on another worker (up to ``distributed.scheduler.allowed-failures``
times, then ``KilledWorker``, reported as :class:`WorkerCrashedError`).
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlparse

from ..errors import (
    ConfigError,
    ExecutorShutdownError,
    SchedulerUnreachableError,
    StoreNotSharedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from .base import Backend, run_task

if TYPE_CHECKING:
    from ..futures import Future
    from ..storage import Store

import distributed

# --- worker side ---------------------------------------------------------------------

_FNS: OrderedDict = OrderedDict()
_FNS_LOCK = threading.Lock()
_BLAS_SET: list[int] = []


def _worker_key(signed: bool) -> bytes | None:
    """This worker's signing key (SHARDWREN_SECRET), checked against the driver's choice."""

    from ..errors import PayloadSignatureError

    secret = os.environ.get("SHARDWREN_SECRET")
    if signed and not secret:
        raise PayloadSignatureError(
            "the driver signs its tasks but this Dask worker has no SHARDWREN_SECRET to check "
            "them with; start workers with the driver's SHARDWREN_SECRET")
    if secret and not signed:
        raise PayloadSignatureError(
            "refusing an unsigned task: this Dask worker requires signed payloads "
            "(SHARDWREN_SECRET is set here); give the driver the same SHARDWREN_SECRET")
    return secret.encode() if secret else None


def _load_fn(fn_id: str, fn_bytes: bytes, key: bytes | None = None):
    import pickle

    from .. import serialize

    with _FNS_LOCK:
        if fn_id in _FNS:
            _FNS.move_to_end(fn_id)
            return _FNS[fn_id]
        try:
            fn = pickle.loads(serialize.open_signed(key, fn_bytes, "function") if key else fn_bytes)
        except BaseException as exc:  # noqa: BLE001 - reported by run_task
            fn = exc
        _FNS[fn_id] = fn
        while len(_FNS) > 64:
            _FNS.popitem(last=False)
        return fn


def _dask_task(fn_bytes: bytes, fn_id: str, payload: bytes, blas_threads: int,
               memory_limit: int | None = None, timeout: float | None = None,
               where: str = "", signed: bool = False):
    """What a Dask worker runs for one shardwren task. Never raises."""
    if _BLAS_SET != [blas_threads]:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads)
        _BLAS_SET[:] = [blas_threads]
    try:
        key = _worker_key(signed)
        fn = _load_fn(fn_id, fn_bytes, key)
    except BaseException as exc:  # noqa: BLE001 - reported by run_task as the task's error
        key, fn = None, exc
    if timeout:
        ok, data, stats = _run_with_deadline(fn, payload, memory_limit, timeout, where, key)
    else:
        ok, data, stats = run_task(fn, payload, memory_limit, key)
    try:
        stats["worker"] = distributed.get_worker().address
    except ValueError:
        stats["worker"] = None
    return ok, data, stats


def _tune_malloc(mmap_threshold: int, trim_threshold: int) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (glibc's mallopt)
    return bool(libc.mallopt(-3, mmap_threshold)) and bool(libc.mallopt(-1, trim_threshold))


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
    return client.run(_tune_malloc, mmap_threshold, trim_threshold)


def _run_with_deadline(fn, payload, memory_limit, timeout, where, key=None):
    """Run the task in a helper thread and give up on it after ``timeout`` seconds.

    A Python thread cannot be killed: past the limit the task's result is
    abandoned (the thread finishes in the background) and TaskTimeoutError is
    returned, counted from the task's start on the worker.
    """
    import time

    from .. import serialize

    box: list = []
    started = time.time()
    thread = threading.Thread(target=lambda: box.append(run_task(fn, payload, memory_limit, key)),
                              daemon=True)
    thread.start()
    thread.join(timeout)
    if box:
        return box[0]
    exc = TaskTimeoutError(f"{where} ran longer than its {timeout:g} s limit; the Dask worker "
                           "abandoned it (its thread finishes in the background)")
    return False, serialize.dumps_exception(exc), {"started": started, "finished": time.time()}


# --- driver side -------------------------------------------------------------------------


def _local_hosts() -> set[str]:
    names = {"127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


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
    """

    name = "dask"

    def __init__(self, workers: int | None = None, blas_threads: int | None = None,
                 settings: dict[str, Any] | None = None, address: str | None = None,
                 client: Any = None, key: bytes | None = None):
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
        self._outstanding: dict[Any, Future] = {}
        self._closing = False

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

    def submit(self, fn_id: str, fn_bytes: bytes, tasks: Sequence[tuple[Future, bytes]]) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
        fn_ref = self.client.scatter(fn_bytes, hash=False)
        for fut, payload in tasks:
            if not fut._start():
                continue
            dfut = self.client.submit(_dask_task, fn_ref, fn_id, payload, self.blas_threads,
                                      fut.limits.get("memory_limit"), fut.limits.get("timeout"),
                                      f"task {fut.index} of job {fut.job_id}", self.signed,
                                      pure=False,
                                      key=f"shardwren-{fn_id}-{fut.index}-{fut.stats['attempt']}")
            with self._lock:
                self._outstanding[dfut] = fut
            dfut.add_done_callback(self._on_done)

    def _on_done(self, dfut: Any) -> None:
        with self._lock:
            fut = self._outstanding.pop(dfut, None)
        if fut is None or fut.done():
            return
        try:
            ok, data, stats = dfut.result()
        except BaseException as exc:  # noqa: BLE001 - infrastructure failures
            fut._fail(self._infra_error(exc, fut))
            return
        from .. import serialize

        if ok:
            fut._set_payload(data, stats)
        else:
            fut._fail(serialize.loads_exception(data), stats)

    def _infra_error(self, exc: BaseException, fut: Future) -> BaseException:
        if type(exc).__name__ == "KilledWorker":
            return WorkerCrashedError(
                f"task {fut.index} of job {fut.job_id} killed every Dask worker that ran it ({exc}); "
                "it probably crashes its process or exceeds the worker's memory limit")
        if type(exc).__name__ == "CancelledError" or self._closing:
            return ExecutorShutdownError(f"task {fut.index} of job {fut.job_id} was cancelled: "
                                         "the executor shut down or the cluster went away")
        return exc

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._closing:
                return
            pending = list(self._outstanding)
        if wait and pending:
            distributed.wait(pending)
        with self._lock:
            self._closing = True
            pending = list(self._outstanding)
        if pending:
            self.client.cancel(pending)
        if self._own_client:
            self.client.close()
