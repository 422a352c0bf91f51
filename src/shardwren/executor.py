"""The PyWren-compatible executor: ``map``, ``call_async``, ``map_reduce``.

Driver side. The executor turns a map into signed payloads and futures, hands
them to its :class:`~shardwren.backends.base.Backend`, and owns everything above
"run this function on these inputs": the failure policy (retries with backoff,
:mod:`shardwren.policy`), speculative backups of stragglers, per-task limits
(validated here, enforced by the backend), the job history and the job log.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import config, policy, serialize
from ._timers import Timers
from .backends.base import Backend, backend_class
from .backends.taskenv import KwCall, TaskEnv
from .errors import (
    ConfigError,
    ExecutorBrokenError,
    ExecutorShutdownError,
    InvalidParameterError,
    NotIterableError,
)
from .futures import ALL_COMPLETED, Future, get_all_results, outcome_record, wait
from .jobs import JobHistory, JobLog, JobRecord, as_table, format_summary, records, summarize
from .storage import Store, open_store
from .storage._gc import RESULTS_PREFIX  # where pickled futures' outcomes go (store gc knows it)

_job_counter = itertools.count()
log = logging.getLogger(__name__)

#: Seconds between two looks at running maps for stragglers.
SPECULATION_PERIOD = 0.25
#: Maps with fewer tasks get no backups (too few finished tasks to judge a straggler).
SPECULATION_MIN_TASKS = 4


def _new_job_id() -> str:
    return f"{os.getpid():x}-{uuid.uuid4().hex[:6]}-{next(_job_counter)}"


class _Job:
    """One map while it runs: what retries and backups need, released task by task.

    Holds the futures not yet done (for the straggler watch and ``shutdown(wait=True)``)
    and their payloads (to run them again); each entry goes as its task completes, so a
    finished map holds nothing and keeps no future alive.
    """

    def __init__(self, executor: Executor, job_id: str, fn_bytes: bytes, retries: int,
                 retry_on: tuple[type[BaseException], ...], entry: JobRecord):
        self.executor = executor
        self.job_id, self.fn_bytes = job_id, fn_bytes
        self.retries, self.retry_on = retries, retry_on
        self.entry = entry
        self.created = time.time()
        self.futures: dict[int, Future] = {}
        self.payloads: dict[int, bytes] = {}
        self.stats: list[dict[str, Any]] = []
        self.durations: list[float] = []  # of finished tasks, for the straggler policy
        self.speculate = False
        self.lock = threading.Lock()

    def task_done(self, fut: cf.Future) -> None:
        """Done callback of every future of the map."""
        assert isinstance(fut, Future)
        s = fut.stats
        with self.lock:
            self.futures.pop(fut.index, None)
            self.payloads.pop(fut.index, None)
            if s.get("outcome") == "ok" and s.get("finished") and s.get("started"):
                # how long a task takes to succeed: a crash or timeout (timed on the
                # driver's clock) says nothing of that, and would hold back backups
                self.durations.append(s["finished"] - s["started"])
            last = not self.futures
        if last:
            self.executor._job_finished(self)

    def retry(self, fut: Future, exc: BaseException, stats: dict[str, Any] | None) -> bool:
        """The retry hook of every future of the map: apply the policy, schedule the rerun."""
        attempt = fut.stats.get("attempt", 1)
        if not policy.should_retry(exc, attempt, self.retries, self.retry_on):
            return False
        fut.stats["attempt"] = attempt + 1
        fut.stats.setdefault("failures", []).append(f"{type(exc).__name__}: {exc}"[:300])
        try:
            self.executor._timers.call_later(policy.backoff(attempt), self.executor._rerun,
                                             self, fut, exc)
        except RuntimeError:  # the executor is shutting down: the failure stands
            return False
        return True


class Executor(cf.Executor):
    """Runs Python functions on a backend and returns futures.

    Create one with :func:`default_executor`. Use it as a context manager, or
    call :meth:`shutdown`, to stop its workers.

    It is a :class:`concurrent.futures.Executor`: :meth:`submit`, :meth:`shutdown`
    (``wait=``, ``cancel_futures=``) and the context manager have their standard
    meaning, so it can go wherever one is expected (``loop.run_in_executor``).
    :meth:`map` is PyWren's: it returns the list of futures at once (for
    ``concurrent.futures``' iterator of results, ``get_all_results(ex.map(...))``).

    Attributes
    ----------
    backend : Backend
    store : Store
        Default store for data written by jobs (e.g. ShardedMatrix).
    history : JobHistory
        Recent maps, oldest first: :meth:`job_records` gives a job's task records by id.
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
        self.history = JobHistory()
        self._joblog = JobLog(store, self.history)
        self._lock = threading.Lock()
        self._closed = False
        self._released = False
        self._jobs: dict[str, _Job] = {}  # maps with tasks not yet done
        self._timers = Timers("shardwren-executor")  # retry backoff and the straggler watch
        self._watching = False  # a straggler look is scheduled
        #: PyWren's seatbelt: a map of more items than this raises ValueError (None: no limit).
        self.map_item_limit: int | None = settings.get("map_item_limit")
        #: Futures follow PyWren's cancel (a running call is abandoned); see Future.cancel.
        self.abandon_on_cancel = False
        self._results_key: bytes | None = None  # signs outcomes stored for pickled futures
        self._stopper: threading.Thread | None = None
        self._pid = os.getpid()  # its threads and workers belong to this process only
        self._reduces: set[Future] = set()  # reduce() futures whose inputs are not all done
        # Dropped without shutdown(): release the workers once it is garbage (as
        # concurrent.futures' executors do), not at the program's end.
        self._finalizer = weakref.finalize(self, _release_dropped, self._pid, backend,
                                           self._timers, self._joblog)
        self._finalizer.atexit = False  # at exit, _finish_at_exit waits for the tasks first
        _track(self)

    def __repr__(self) -> str:
        return f"<shardwren.Executor backend={self.backend.name} workers={self.parallelism} store={self.store.url}>"

    @property
    def parallelism(self) -> int:
        """How many tasks run at once."""
        return self.backend.parallelism

    # -- submission -----------------------------------------------------------------
    def map(self, fn: Callable[..., Any], iterdata: Iterable[Any],  # type: ignore[override]  # PyWren map
            extra_env: Mapping[str, str] | None = None, extra_meta: Mapping[str, Any] | None = None,
            invoke_pool_threads: int | None = None, data_all_as_one: bool | None = None,
            use_cached_runtime: bool | None = None,
            overwrite_invoke_args: Mapping[str, Any] | None = None,
            exclude_modules: Sequence[str] | None = None, *,
            extra_args: Sequence[Any] | None = None, starmap: bool = False,
            retries: int | None = None,
            retry_on: Sequence[type[BaseException]] | None = None,
            timeout: float | None = None, memory_limit: int | str | None = None) -> list[Future]:
        """Run ``fn(item, *extra_args)`` for every item, in parallel.

        The positional parameters are PyWren's ``map(func, iterdata, extra_env,
        extra_meta, invoke_pool_threads, data_all_as_one, use_cached_runtime,
        overwrite_invoke_args, exclude_modules)``, so PyWren calls keep their meaning;
        shardwren's own options are keywords.

        Parameters
        ----------
        fn : callable
            Any function, lambda or closure (shipped with cloudpickle, once per map).
        iterdata : iterable
            One task per item.
        extra_meta, invoke_pool_threads, data_all_as_one, use_cached_runtime, overwrite_invoke_args
            PyWren's tuning of Lambda invocations (metadata, invoker threads, one data
            object, runtime cache, injected arguments): accepted, and unused here,
            where tasks are not Lambda invocations.
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
            Seconds a task may run, counted from its start; past it the task fails
            with TaskTimeoutError (retried like a crash). Default: the ``timeout``
            setting (none).
        memory_limit : int or str, optional
            Bytes a task may allocate (``"2GiB"``); past it the task fails alone
            with TaskMemoryError. Default: the ``memory_limit`` setting (none).
        extra_env : mapping of str to str, optional
            Environment variables set in the task's process while it runs (PyWren).
        exclude_modules : sequence of str, optional
            Modules (and their submodules) the task may not import: a function that
            needs one fails with ImportError (PyWren's "not shipped").

        Returns
        -------
        list of Future
            In the order of ``iterdata``. (PyWren's ``map``: not ``concurrent.futures``'
            ``map(fn, *iterables)``, which yields results; a second iterable is refused
            with InvalidParameterError rather than misread.)

        Raises
        ------
        ConfigError
            A limit is invalid, or the backend cannot enforce it (checked before
            anything runs); or the map has more items than :attr:`map_item_limit`
            (a ``ValueError``, as in PyWren).
        ExecutorShutdownError
            After :meth:`shutdown`.
        """
        if os.getpid() != self._pid:
            raise ExecutorBrokenError(
                f"this executor was created in process {self._pid}; its workers and threads "
                f"did not come along into this forked process ({os.getpid()}), so no task "
                "submitted here would ever run: create a new executor in this process")
        if extra_env is not None and not isinstance(extra_env, Mapping) and _iterable(extra_env):
            raise InvalidParameterError(
                "map() takes one iterable of task inputs (PyWren's map, which returns futures; "
                "its third argument is extra_env, a dict of environment variables); extra "
                "arguments for every call go in extra_args=[...], and for concurrent.futures' "
                "map(fn, *iterables) use ex.starmap(fn, zip(*iterables))")
        if extra_meta is not None and not isinstance(extra_meta, Mapping):
            raise InvalidParameterError(
                f"extra_meta must be a dict (PyWren's metadata), got {type(extra_meta).__name__}")
        try:
            source = iter(iterdata)
        except TypeError:
            raise NotIterableError(
                f"map() needs an iterable of task inputs, got {type(iterdata).__name__}; "
                "for a single call use call_async(fn, data)"
            ) from None
        items = list(source)  # an error inside the caller's generator is its own
        if self.map_item_limit is not None and len(items) > self.map_item_limit:
            raise ConfigError(
                f"map() of {len(items)} items exceeds map_item_limit={self.map_item_limit} "
                "(config['scheduler']['map_item_limit']); split the input or raise the limit")
        limits = self._limits(timeout, memory_limit)
        n_retries = (self.settings["retries"] if retries is None
                     else config.check("retries", retries, "map(retries=...)"))
        fn_bytes = serialize.dumps_function(fn)
        env, excluded = _check_env(extra_env), _check_modules(exclude_modules)
        if env or excluded:
            fn_bytes = serialize.dumps_function(TaskEnv(fn_bytes, env, excluded))
        fn_bytes = self._signed(fn_bytes)
        extra = tuple(extra_args or ())
        job_id = _new_job_id()
        fs: list[Future] = []
        payloads: list[bytes] = []
        for i, item in enumerate(items):
            args = (tuple(item) if starmap else (item,)) + extra
            payloads.append(self._signed(serialize.dumps_value(args, what=f"argument of task {i}")))
            fs.append(Future(job_id, i))
        if not fs:
            return fs
        name = getattr(fn, "__qualname__", type(fn).__name__)
        stats = [f.stats for f in fs]
        job = _Job(self, job_id, fn_bytes, n_retries,
                   tuple(self.retry_on if retry_on is None else retry_on),
                   self.history.add(job_id, name, stats))
        job.stats = stats
        job.futures = dict(enumerate(fs))
        job.payloads = dict(enumerate(payloads))
        for f in fs:
            f.limits = limits
            f.set_retry_hook(job.retry)
            self._adopt(f)
        with self._lock:
            if self._closed and not (getattr(_SUBMITTED_EARLIER, "active", False)
                                     and not self._released):
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
            self._jobs[job_id] = job
        for f in fs:
            f.add_done_callback(job.task_done)
        try:
            self.backend.submit(job_id, fn_bytes, list(zip(fs, payloads)))
        except BaseException:
            with self._lock:
                self._jobs.pop(job_id, None)
            raise
        if self.settings.get("speculation", True) and len(fs) >= SPECULATION_MIN_TASKS:
            job.speculate = True
            self._watch()
        return fs

    def _adopt(self, f: Future) -> None:
        """What every future this executor hands out gets: its cancel flavour, and a
        place in the store for its outcome should it be pickled before it finishes."""
        f.abandon_on_cancel = self.abandon_on_cancel
        f._persist = self._persist
        f._abandon = self.backend.abandon

    def _persist(self, fut: Future) -> tuple[Any, ...]:
        """Arrange for ``fut``'s outcome to be written to the store; say where.

        Called when a future is pickled before it finishes. The outcome is signed
        with a key derived for this task of its job (so the pickle, which carries
        that key, can vouch for this task's outcome only) and written when the task ends,
        whatever the end: a copy loaded elsewhere never waits forever.
        """
        import hashlib
        import hmac

        from .storage._owners import hold_lease, owner_tag

        with self._lock:
            if self._results_key is None:
                self._results_key = os.urandom(32)
                hold_lease(self.store)  # lets other machines see that this driver lives
            # One key per task: a record copied over another task's (same job) is refused.
            mac = hmac.new(self._results_key, f"{fut.job_id}/{fut.index}".encode(),
                           hashlib.sha256).digest()
            first = not fut._persisting
            fut._persisting = True
        key = f"{RESULTS_PREFIX}/{fut.job_id}/{fut.index}"
        if first:
            # Written in the thread that completes the future (one small PUT per
            # future pickled while unfinished).
            fut.add_done_callback(lambda f: self._write_outcome(f, key, mac))
        return (self.store, key, mac, owner_tag())

    def _write_outcome(self, fut: cf.Future, key: str, mac: bytes) -> None:
        assert isinstance(fut, Future)
        try:
            self.store.put(key, serialize.sign(mac, outcome_record(fut)))
        except Exception:  # noqa: BLE001 - a copy elsewhere then reports ResultLostError
            log.exception("could not store the outcome of task %d of job %s", fut.index,
                          fut.job_id)

    def _limits(self, timeout: Any, memory_limit: Any) -> Mapping[str, Any]:
        limits = {
            "timeout": self.settings.get("timeout") if timeout is None
            else config.check("timeout", timeout, "map(timeout=...)"),
            "memory_limit": self.settings.get("memory_limit") if memory_limit is None
            else config.check("memory_limit", memory_limit, "map(memory_limit=...)"),
        }
        self.backend.check_limits(limits)
        return MappingProxyType(limits)  # shared by the map's futures: read-only

    def _signed(self, data: bytes) -> bytes:
        return serialize.sign(self._key, data) if self._key else data

    def _rerun(self, job: _Job, fut: Future, exc: BaseException) -> None:
        """Submit a task again after its backoff (or fail it: the executor shut down)."""
        with job.lock:
            payload = job.payloads.get(fut.index)
        try:
            if self._released:
                raise ExecutorShutdownError(
                    f"the executor shut down before task {fut.index} of job {fut.job_id} could "
                    f"run again after {type(exc).__name__}: {exc}")
            if payload is None:  # done meanwhile (a backup won): nothing to run
                return
            self.backend.submit(job.job_id, job.fn_bytes, [(fut, payload)])
        except BaseException as err:  # noqa: BLE001 - reported on the future
            if not isinstance(err, ExecutorShutdownError):
                err = ExecutorShutdownError(f"task {fut.index} of job {fut.job_id} could not "
                                            f"be submitted again: {err}")
            err.__cause__ = exc
            fut.set_retry_hook(None)
            fut.set_failure(err)

    # -- stragglers -------------------------------------------------------------------
    def _watch(self) -> None:
        """Make sure a straggler look is scheduled while some map wants backups."""
        with self._lock:
            if self._watching or self._released:
                return
            self._watching = True
        try:
            self._timers.call_later(SPECULATION_PERIOD, self._look_for_stragglers)
        except RuntimeError:
            pass  # shutting down

    def _look_for_stragglers(self) -> None:
        with self._lock:
            self._watching = False
            jobs = [j for j in self._jobs.values() if j.speculate]
        for job in jobs:
            self._back_up(job)
        if jobs:
            self._watch()

    def _back_up(self, job: _Job) -> None:
        """Give each straggler of ``job`` one backup copy (Cubed's policy, in :mod:`policy`)."""
        now = time.time()
        with job.lock:
            durations = list(job.durations)
            running = [(i, f.stats["running_since"]) for i, f in job.futures.items()
                       if "running_since" in f.stats]
            backed = [i for i, f in job.futures.items() if f.stats.get("backups")]
            total = job.entry.tasks
        for i in policy.backup_candidates(now, running, durations, total, backed):
            with job.lock:
                fut, payload = job.futures.get(i), job.payloads.get(i)
            if fut is None or payload is None or not fut.add_backup():
                continue
            try:
                self.backend.submit(job.job_id, job.fn_bytes, [(fut, payload)])
            except Exception as exc:  # noqa: BLE001 - the backup failed; the original stands
                fut.set_failure(exc)

    def _job_finished(self, job: _Job) -> None:
        with self._lock:
            self._jobs.pop(job.job_id, None)
        self._joblog.finish(job.entry, job.created, job.stats)

    def starmap(self, fn: Callable[..., Any], iterdata: Iterable[Sequence[Any]],
                extra_args: Sequence[Any] | None = None) -> list[Future]:
        """Like :meth:`map`, unpacking each item: ``fn(*item, *extra_args)``."""
        return self.map(fn, iterdata, extra_args=extra_args, starmap=True)

    def call_async(self, fn: Callable[..., Any], data: Any,
                   extra_env: Mapping[str, str] | None = None,
                   extra_meta: Mapping[str, Any] | None = None, *,
                   extra_args: Sequence[Any] | None = None,
                   exclude_modules: Sequence[str] | None = None, **options: Any) -> Future:
        """Run ``fn(data, *extra_args)`` as one task: PyWren's ``call_async(func, data,
        extra_env, extra_meta)``; shardwren's options (as for :meth:`map`) are keywords."""
        return self.map(fn, [data], extra_env, extra_meta, extra_args=extra_args,
                        exclude_modules=exclude_modules, **options)[0]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` as one task (``concurrent.futures.Executor.submit``)."""
        return self.map(KwCall(fn), [(args, kwargs)])[0]

    def map_reduce(self, map_fn: Callable[..., Any], iterdata: Iterable[Any],
                   reduce_fn: Callable[[list[Any]], Any],
                   extra_args: Sequence[Any] | None = None) -> Future:
        """Map, then run ``reduce_fn(list_of_results)`` as one more task.

        Returns the reduce task's future. If a map task fails, it fails with
        that task's exception.
        """
        serialize.dumps_function(reduce_fn)  # fail now, not when the maps finish
        fs = self.map(map_fn, iterdata, extra_args=extra_args)
        return self.reduce(reduce_fn, fs)

    def reduce(self, fn: Callable[[list[Any]], Any], futures: Sequence[cf.Future],
               extra_env: Mapping[str, str] | None = None,
               extra_meta: Mapping[str, Any] | None = None) -> Future:
        """Run ``fn(list_of_results)`` as one task once ``futures`` are done (PyWren's
        ``reduce(function, list_of_futures, extra_env, extra_meta)``; ``extra_meta`` is
        accepted and unused, as in :meth:`map`).

        Returns the reduce task's future; it fails with the first failed input's
        exception if any input failed.
        """
        serialize.dumps_function(fn)  # fail now, not when the inputs finish
        reduce_fn = fn
        fs = list(futures)
        env = _check_env(extra_env)
        first = fs[0] if fs else None
        out = Future(first.job_id if isinstance(first, Future) else _new_job_id(), len(fs))
        self._adopt(out)
        out.set_running()
        remaining = [len(fs)]
        lock = threading.Lock()
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError("cannot submit a reduce: the executor was shut down")
            self._reduces.add(out)  # shutdown (and the program's end) waits for it
        out.add_done_callback(self._reduce_done)

        def start_reduce() -> None:
            try:
                results = [f.result() for f in fs]
                _SUBMITTED_EARLIER.active = True  # accepted before any shutdown
                try:
                    inner = self.call_async(reduce_fn, results, extra_env=env)
                finally:
                    _SUBMITTED_EARLIER.active = False
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
                out.set_failure(exc)
                return
            inner.add_done_callback(lambda f: _copy_outcome(f, out))

        def one_done(_: cf.Future) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                # Never block the backend's thread that delivered the callback.
                threading.Thread(target=start_reduce, name="shardwren-reduce",
                                 daemon=True).start()

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
    def job_stats(self, fs: Sequence[Future]) -> Any:
        """One record per task (see :attr:`Future.stats`): a pandas DataFrame when
        pandas is installed, else a list of dicts."""
        return as_table(records(fs))

    def job_records(self, job_id: str) -> list[dict[str, Any]]:
        """The task records of job ``job_id`` from :attr:`history`, in task order.

        Empty for an old job whose records were dropped to bound memory (its
        ``history.get(job_id).summary`` remains). KeyError if the job is unknown.
        """
        return self.history.get(job_id).records

    def summary(self, fs: Sequence[Future], file: Any = None) -> dict[str, Any]:
        """Print (and return) a job's figures: tasks, failures by label, retries, wall
        and task time, parallel efficiency, bytes moved, slowest tasks."""
        figures = summarize(records(fs), self.parallelism)
        print(format_summary(figures), file=file)
        return figures

    # -- lifetime ------------------------------------------------------------------
    def _outstanding(self) -> list[Future]:
        with self._lock:
            return ([f for j in list(self._jobs.values()) for f in list(j.futures.values())]
                    + list(self._reduces))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; release the workers once the tasks submitted are done.

        ``concurrent.futures`` semantics: tasks already submitted run to the end
        (retries included) either way. With ``wait`` this returns when they have
        and every thread and worker is gone; without, it returns at once and the
        workers go when the last task ends. ``cancel_futures`` cancels the tasks
        that have not started. Idempotent. To stop at once, failing what has not
        finished, use :meth:`terminate`.
        """
        with self._lock:
            self._closed = True
        if cancel_futures:
            for f in self._outstanding():
                f.cancel()
        if not wait:
            with self._lock:
                if self._stopper is None:
                    self._stopper = threading.Thread(target=self._finish_shutdown,
                                                     name="shardwren-shutdown", daemon=True)
                    self._stopper.start()
            return
        self._finish_shutdown()
        if self._stopper is not None and self._stopper is not threading.current_thread():
            self._stopper.join()

    def _finish_shutdown(self) -> None:
        self._wait_outstanding()
        self._release(wait=True)

    def _reduce_done(self, fut: cf.Future) -> None:
        with self._lock:
            self._reduces.discard(fut)

    def _wait_outstanding(self) -> None:
        """Return when every task submitted (and every pending reduce) is done."""
        while True:
            pending = self._outstanding()
            if not pending:
                return
            cf.wait(pending)

    def _release(self, wait: bool) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._finalizer.detach()
        for fn, args in self._timers.close():  # reruns not submitted yet fail now
            fn(*args)
        self.backend.shutdown(wait=wait)
        self._joblog.close()

    def terminate(self) -> None:
        """Stop now: what has not finished fails with ``ExecutorShutdownError``, and the
        workers (with any task still running) are stopped. Idempotent."""
        with self._lock:
            self._closed = True
        self._release(wait=False)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        # Leaving on an exception (Ctrl-C included) stops at once instead of waiting.
        if exc[0] is None:
            self.shutdown(wait=True)
        else:
            self.terminate()


# -- lifetime at the program's end and when dropped -------------------------------------
#
# concurrent.futures: "the program will not exit until all pending futures are done
# executing", with or without shutdown(wait=False). The backends' own exit handlers
# (atexit) stop their workers at once, so the wait happens first, in threading's exit
# hooks, which run before atexit and while threads may still be started.

_LIVE: weakref.WeakSet[Executor] = weakref.WeakSet()
_EXIT_HOOKED = False
_HOOK_LOCK = threading.Lock()


def _track(ex: Executor) -> None:
    global _EXIT_HOOKED
    _LIVE.add(ex)
    with _HOOK_LOCK:
        if _EXIT_HOOKED:
            return
        _EXIT_HOOKED = True
    from .storage._owners import at_exit, before_release

    before_release(_finish_at_exit)  # whichever exit hook runs first waits; the other is a no-op
    at_exit(_finish_at_exit)


def _finish_at_exit() -> None:
    """Wait, at the program's end, for every task submitted; or, when the program ends
    on an uncaught exception (Ctrl-C included) or a Ctrl-C comes during the wait, stop
    them (:meth:`Executor.terminate`). The executors stay open: a non-daemon thread
    may still use one (Python joins those after this hook); the backends' own exit
    handlers stop the workers last."""
    live = [ex for ex in list(_LIVE) if not ex._released and ex._pid == os.getpid()]
    failed = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    try:
        for ex in live:
            if failed is not None:
                ex.terminate()
                continue
            pending = ex._outstanding()
            if pending:
                print(f"shardwren: waiting for {len(pending)} unfinished task(s) of {ex!r} before "
                      "exiting (Ctrl-C stops them)", file=sys.stderr, flush=True)
            ex._wait_outstanding()
    except KeyboardInterrupt:
        for ex in live:
            ex.terminate()
    except Exception:  # noqa: BLE001 - the backends' atexit handlers still stop the workers
        log.exception("could not finish the executors' tasks at exit")


def _release_dropped(pid: int, backend: Backend, timers: Timers, joblog: JobLog) -> None:
    """An executor nobody holds any more (nor any of its unfinished futures): stop its
    threads and workers, in a thread of their own (the collector may run in one of them).
    Only in the process that made it: a forked child must not stop its parent's workers."""
    if os.getpid() != pid:
        return

    def release() -> None:
        timers.close()
        backend.shutdown(wait=True)
        joblog.close()

    threading.Thread(target=release, name="shardwren-release", daemon=True).start()


#: Set while a reduce submits its task: it was accepted before any shutdown.
_SUBMITTED_EARLIER = threading.local()


def _iterable(x: Any) -> bool:
    try:
        iter(x)
    except TypeError:
        return False
    return True


def _check_env(extra_env: Mapping[str, str] | None) -> dict[str, str]:
    if extra_env is None:
        return {}
    if not isinstance(extra_env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k
            for k, v in extra_env.items()):
        raise InvalidParameterError(
            f"extra_env must map variable names to string values, got {extra_env!r}")
    return dict(extra_env)


def _check_modules(names: Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise InvalidParameterError(
            f"exclude_modules must be a list of module names, got {names!r}")
    return tuple(names)


def _copy_outcome(src: cf.Future, dst: Future) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_failure(exc, getattr(src, "stats", None))
        return
    try:
        value = src.result()
    except BaseException as err:  # noqa: BLE001 - e.g. a result that cannot be unpickled
        dst.set_failure(err)
        return
    dst.stats.update(getattr(src, "stats", {}))
    dst.set_result(value)


def default_executor(backend: str | None = None, store: Store | str | None = None,
                     workers: int | None = None, **options: Any) -> Executor:
    """Create an executor from arguments, ``SHARDWREN_*`` variables and the config file.

    Parameters
    ----------
    backend : {"local", "dask", "lithops"}, optional
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

    Raises
    ------
    ConfigError
        A setting has a value it cannot use (naming the setting and what it accepts).
    """
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if store is not None and not isinstance(store, (str, Store)):
        raise ConfigError(f"store must be a URL (str), a path or a Store, got "
                          f"{type(store).__name__} {store!r}")
    retry_on = options.pop("retry_on", None)
    backend_opts = {k: options.pop(k) for k in list(options) if k not in config.NAMES}
    settings = config.load(backend=backend, workers=workers,
                           store=store if isinstance(store, str) else None, **options)
    cls = backend_class(settings["backend"])
    unknown = sorted(set(backend_opts) - set(cls.options))
    if unknown:
        raise ConfigError(f"unknown settings {unknown} for the {cls.name} backend; known settings: "
                          f"{sorted(config.NAMES)}, and for this backend: {list(cls.options)}")
    # The signing key: configured, or random where the backend hands it to its workers
    # privately. Kept out of the settings so no repr or message can show it.
    secret = settings.pop("secret", None)
    key = secret.encode() if secret else (os.urandom(32) if cls.ships_key_privately else None)
    impl = cls(workers=settings["workers"], blas_threads=settings["blas_threads"],
               settings=settings, key=key, **backend_opts)
    settings["retry_on"] = tuple(retry_on or ())
    try:
        the_store = store if isinstance(store, Store) else open_store(settings["store"])
        return Executor(impl, the_store, settings, key)
    except BaseException:
        impl.shutdown(wait=False)
        raise
