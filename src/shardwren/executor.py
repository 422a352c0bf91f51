"""The PyWren-compatible executor: ``map``, ``call_async``, ``map_reduce``."""

from __future__ import annotations

import itertools
import os
from collections import deque
import threading
import uuid
from typing import Any, Callable, Iterable, Sequence

from . import config, policy, serialize
from .backends.base import Backend, backend_class
from .errors import NotIterableError
from .futures import ALL_COMPLETED, Future, get_all_results, wait
from .jobs import JobLog, as_table, format_summary, records, summarize
from .storage import Store, open_store

_job_counter = itertools.count()


def _new_job_id() -> str:
    return f"{os.getpid():x}-{uuid.uuid4().hex[:6]}-{next(_job_counter)}"


class Executor:
    """Runs Python functions on a backend and returns futures.

    Create one with :func:`default_executor`. Use it as a context manager, or
    call :meth:`shutdown`, to stop its workers.

    Attributes
    ----------
    backend : Backend
    store : Store
        Default store for data written by jobs (e.g. ShardedMatrix).
    """

    def __init__(self, backend: Backend, store: Store, settings: dict[str, Any],
                 key: bytes | None = None):
        self.backend = backend
        self._key = key  # signs every task's function and arguments (never shown)
        self.store = store
        self.settings = settings
        #: The task's own exception types that are retried too (see :mod:`shardwren.policy`).
        self.retry_on: tuple[type[BaseException], ...] = tuple(settings.get("retry_on") or ())
        backend.check_store(store)
        self._joblog = JobLog(store)
        self._speculating: list[tuple[str, bytes, list[tuple[Future, bytes]]]] = []
        self._spec_lock = threading.Lock()
        self._spec_thread: threading.Thread | None = None
        #: The last maps run: (job id, function name, task records), newest last.
        self.history: deque[tuple[str, str, list[dict[str, Any]]]] = deque(maxlen=100)

    def __repr__(self) -> str:
        return f"<shardwren.Executor backend={self.backend.name} workers={self.parallelism} store={self.store.url}>"

    @property
    def parallelism(self) -> int:
        """How many tasks run at once."""
        return self.backend.parallelism

    # -- submission -----------------------------------------------------------------
    def map(self, fn: Callable[..., Any], iterdata: Iterable[Any],
            extra_args: Sequence[Any] | None = None, starmap: bool = False,
            retries: int | None = None,
            retry_on: Sequence[type[BaseException]] | None = None,
            timeout: float | None = None, memory_limit: int | str | None = None) -> list[Future]:
        """Run ``fn(item, *extra_args)`` for every item, in parallel.

        Parameters
        ----------
        fn : callable
            Any function, lambda or closure (shipped with cloudpickle, once per map).
        iterdata : iterable
            One task per item.
        extra_args : sequence, optional
            Extra positional arguments appended to every call.
        starmap : bool
            Unpack each item as positional arguments: ``fn(*item, *extra_args)``.
        retries : int, optional
            Runs again after a failure outside the task's code (crashed worker,
            timeout, transient storage error); default: the ``retries`` setting (2).
        retry_on : sequence of exception types, optional
            The task's own exceptions that are worth another run too.
        timeout : float, optional
            Seconds a task may run; past it the worker is killed and replaced and
            the task fails with TaskTimeoutError (retried like a crash). Default:
            the ``timeout`` setting (none).
        memory_limit : int or str, optional
            Bytes a task may allocate (``"2GiB"``); past it the task fails alone
            with TaskMemoryError. Default: the ``memory_limit`` setting (none).

        Returns
        -------
        list of Future
            In the order of ``iterdata``.
        """
        try:
            items = list(iterdata)
        except TypeError:
            raise NotIterableError(
                f"map() needs an iterable of task inputs, got {type(iterdata).__name__}; "
                "for a single call use call_async(fn, data)"
            ) from None
        fn_bytes = self._signed(serialize.dumps_function(fn))
        extra = tuple(extra_args or ())
        job_id = _new_job_id()
        tasks = []
        for i, item in enumerate(items):
            args = (tuple(item) if starmap else (item,)) + extra
            payload = self._signed(serialize.dumps_value(args, what=f"argument of task {i}"))
            tasks.append((Future(job_id, i), payload))
        fs = [f for f, _ in tasks]
        retry_policy = (self.settings["retries"] if retries is None else int(retries),
                        tuple(self.retry_on if retry_on is None else retry_on))
        limits = {"timeout": self.settings.get("timeout") if timeout is None else float(timeout),
                  "memory_limit": self.settings.get("memory_limit") if memory_limit is None
                  else config.parse_size(memory_limit)}
        for fut, payload in tasks:
            fut._retry = self._retrier(job_id, fn_bytes, payload, *retry_policy)
            fut.limits = limits
        if tasks:
            self.backend.submit(job_id, fn_bytes, tasks)
            name = getattr(fn, "__qualname__", type(fn).__name__)
            self.history.append((job_id, name, [f.stats for f in fs]))
            self._joblog.track(job_id, name, fs)
            if self.settings.get("speculation", True) and len(tasks) >= 4:
                self._speculate(job_id, fn_bytes, tasks)
        return fs

    def _signed(self, data: bytes) -> bytes:
        return serialize.sign(self._key, data) if self._key else data

    def _retrier(self, fn_id: str, fn_bytes: bytes, payload: bytes, retries: int,
                 retry_on: tuple) -> Callable[[Future, BaseException, Any], bool]:
        """The retry hook of one task: apply the policy, schedule the rerun."""
        def retry(fut: Future, exc: BaseException, stats: Any) -> bool:
            attempt = fut.stats.get("attempt", 1)
            if not policy.should_retry(exc, attempt, retries, retry_on):
                return False
            fut.stats["attempt"] = attempt + 1
            fut.stats.setdefault("failures", []).append(f"{type(exc).__name__}: {exc}"[:300])
            fut._retry = retry

            def resubmit() -> None:
                try:
                    self.backend.submit(fn_id, fn_bytes, [(fut, payload)])
                except BaseException:  # noqa: BLE001 - shut down meanwhile: report the cause
                    fut._retry = None
                    fut._fail(exc, stats)

            timer = threading.Timer(policy.backoff(attempt), resubmit)
            timer.daemon = True
            timer.start()
            return True

        return retry

    def _speculate(self, fn_id: str, fn_bytes: bytes, tasks: list[tuple[Future, bytes]]) -> None:
        """Watch a map for stragglers and give each at most one backup copy."""
        with self._spec_lock:
            self._speculating.append((fn_id, fn_bytes, tasks))
            if self._spec_thread is None:
                self._spec_thread = threading.Thread(target=self._watch_stragglers,
                                                     name="shardwren-speculation", daemon=True)
                self._spec_thread.start()

    def _watch_stragglers(self) -> None:
        import time

        while True:
            time.sleep(0.25)
            with self._spec_lock:
                self._speculating = [m for m in self._speculating
                                     if not all(f.done() for f, _ in m[2])]
                maps = list(self._speculating)
            for fn_id, fn_bytes, tasks in maps:
                by_index = {f.index: (f, p) for f, p in tasks}
                done = [f.stats["finished"] - f.stats["started"] for f, _ in tasks
                        if f.done() and f.stats.get("finished") and f.stats.get("started")]
                running = [(f.index, f.stats["running_since"]) for f, _ in tasks
                           if not f.done() and f.stats.get("running_since")]
                backed = [f.index for f, _ in tasks if f.stats.get("backups")]
                for i in policy.backup_candidates(time.time(), running, done, len(tasks), backed):
                    fut, payload = by_index[i]
                    fut.stats["backups"] = 1
                    try:
                        self.backend.submit(fn_id, fn_bytes, [(fut, payload)])
                    except BaseException:  # noqa: BLE001 - shutting down: nothing to back up
                        fut.stats["backups"] = 0  # no twin: the original's outcome stands
                        return

    def starmap(self, fn: Callable[..., Any], iterdata: Iterable[Sequence[Any]],
                extra_args: Sequence[Any] | None = None) -> list[Future]:
        """Like :meth:`map`, unpacking each item: ``fn(*item, *extra_args)``."""
        return self.map(fn, iterdata, extra_args=extra_args, starmap=True)

    def call_async(self, fn: Callable[..., Any], data: Any,
                   extra_args: Sequence[Any] | None = None) -> Future:
        """Run ``fn(data, *extra_args)`` as one task."""
        return self.map(fn, [data], extra_args=extra_args)[0]

    def map_reduce(self, map_fn: Callable[..., Any], iterdata: Iterable[Any],
                   reduce_fn: Callable[[list[Any]], Any],
                   extra_args: Sequence[Any] | None = None) -> Future:
        """Map, then run ``reduce_fn(list_of_results)`` as one more task.

        Returns the reduce task's future. If a map task fails, it fails with
        that task's exception.
        """
        serialize.dumps_function(reduce_fn)  # fail now, not when the maps finish
        fs = self.map(map_fn, iterdata, extra_args=extra_args)
        out = Future(fs[0].job_id if fs else _new_job_id(), len(fs))
        out.set_running_or_notify_cancel()
        remaining = [len(fs)]
        lock = threading.Lock()

        def start_reduce() -> None:
            try:
                results = [f.result() for f in fs]
                inner = self.call_async(reduce_fn, results)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
                out._fail(exc)
                return
            inner.add_done_callback(lambda f: _copy_outcome(f, out))

        def one_done(_: Future) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                # Never block the backend's thread that delivered the callback.
                threading.Thread(target=start_reduce, daemon=True).start()

        if not fs:
            start_reduce()
        for f in fs:
            f.add_done_callback(one_done)
        return out

    # -- waiting (PyWren's executor methods) ----------------------------------------
    def wait(self, fs: Sequence[Future], return_when: Any = ALL_COMPLETED,
             timeout: float | None = None) -> tuple[list[Future], list[Future]]:
        """Same as :func:`shardwren.wait`, with this executor's progress setting."""
        return wait(fs, return_when, timeout, progress=self.settings.get("progress"))

    def get_all_results(self, fs: Sequence[Future]) -> list[Any]:
        """Same as :func:`shardwren.get_all_results`."""
        return get_all_results(fs, progress=self.settings.get("progress"))

    # -- observability -------------------------------------------------------------
    def job_stats(self, fs: Sequence[Future]):
        """One record per task (see :attr:`Future.stats`): a pandas DataFrame when
        pandas is installed, else a list of dicts."""
        return as_table(records(fs))

    def summary(self, fs: Sequence[Future], file: Any = None) -> dict[str, Any]:
        """Print (and return) a job's figures: tasks, failures by label, retries, wall
        and task time, parallel efficiency, bytes moved, slowest tasks."""
        figures = summarize(records(fs), self.parallelism)
        print(format_summary(figures), file=file)
        return figures

    # -- lifetime ------------------------------------------------------------------
    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers; with ``wait``, let submitted tasks finish first."""
        self.backend.shutdown(wait=wait)
        self._joblog.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=exc[0] is None)


def _copy_outcome(src: Future, dst: Future) -> None:
    exc = src.exception()
    if exc is not None:
        dst._fail(exc, src.stats)
    else:
        dst._payload = None
        dst._decoded = src.result()
        dst.stats.update(src.stats)
        dst.set_result(None)


def default_executor(backend: str | None = None, store: Store | str | None = None,
                     workers: int | None = None, **options: Any) -> Executor:
    """Create an executor from arguments, ``SHARDWREN_*`` variables and the config file.

    Parameters
    ----------
    backend : {"local", "dask"}, optional
        Where tasks run (default: setting ``backend``, else ``"local"``).
    store : str or Store, optional
        Default store URL for data the job writes.
    workers : int, optional
        Local backend: worker processes (default: CPU cores).
    **options
        Other settings (see :mod:`shardwren.config`), plus backend-specific
        arguments such as ``address=`` or ``client=`` for Dask.

    Returns
    -------
    Executor
    """
    backend_opts = {k: options.pop(k) for k in ("address", "client") if k in options}
    retry_on = options.pop("retry_on", None)
    settings = config.load(backend=backend, workers=workers,
                           store=store if isinstance(store, str) else None, **options)
    cls = backend_class(settings["backend"])
    # The signing key: configured, or random for local workers (they get it over their
    # socket). Kept out of the settings so no repr or message can show it.
    secret = settings.pop("secret", None)
    key = secret.encode() if secret else (os.urandom(32) if cls.name == "local" else None)
    impl = cls(workers=settings["workers"], blas_threads=settings["blas_threads"],
               settings=settings, key=key, **backend_opts)
    settings["retry_on"] = tuple(retry_on or ())
    the_store = store if isinstance(store, Store) else open_store(settings["store"])
    try:
        return Executor(impl, the_store, settings, key)
    except BaseException:
        impl.shutdown(wait=False)
        raise
