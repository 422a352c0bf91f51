"""Futures and the module-level ``wait`` / ``as_completed`` / ``get_all_results``.

:class:`Future` is a :class:`concurrent.futures.Future` (so its state machine,
``result(timeout)``, ``cancel`` and callbacks are CPython's well-tested ones, and
``concurrent.futures.wait`` accepts it) with a task identity and per-task stats.
Results arrive as bytes and are unpickled on first access, in the caller's thread,
so the backend's I/O thread never spends time decoding large arrays.

What a backend calls on a future is public and documented (the *executor-author
API*, as CPython documents ``set_running_or_notify_cancel``): :meth:`Future.set_running`,
:meth:`Future.set_payload`, :meth:`Future.set_failure`; the executor itself also uses
:meth:`Future.add_backup` and :meth:`Future.set_retry_hook`. Each is thread-safe: a
speculative backup and its original may report at the same moment from two threads,
and exactly one report completes the future.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, TypeVar, cast

from . import serialize
from .errors import ResultLostError, ResultUnpicklingError, TaskCancelledError
from .policy import is_transient
from .serialize import Buffer

F = TypeVar("F", bound=cf.Future)

# PyWren's constants, kept for source compatibility with its tutorials.
ALL_COMPLETED = 1
ANY_COMPLETED = 2
ALWAYS = 3
#: ``concurrent.futures``' mode: return when a task fails (or when all are done).
FIRST_EXCEPTION = cf.FIRST_EXCEPTION

#: Maps with more futures than this show a progress bar when progress is "auto".
PROGRESS_MIN_TASKS = 8

log = logging.getLogger(__name__)

#: ``hook(future, exc, stats) -> bool``: whether the task will run again (see set_retry_hook).
RetryHook = Callable[["Future", BaseException, "dict[str, Any] | None"], bool]


class Future(cf.Future):
    """The result of one task.

    Attributes
    ----------
    job_id : str
        Identifier of the map (or call) the task belongs to.
    index : int
        Position of the task in its map.
    stats : dict
        One record per task: ``job_id``, ``index``, ``attempt``, ``worker``, ``pid``,
        ``host``, ``submitted``, ``started``, ``finished``, ``fetched`` (epoch
        seconds), ``bytes_read``, ``bytes_written`` (store I/O), ``peak_rss``
        (bytes, this task's own peak; ``None`` where tasks share a process and it
        cannot be known), ``outcome`` (``"ok"`` or ``"failed"``) and ``failure``
        (the exception's class name); ``backups`` and ``failures`` when relevant.
    limits : dict
        What the backend enforces for this task: ``timeout`` (seconds) and
        ``memory_limit`` (bytes), each ``None`` for no limit.

    Notes
    -----
    **Executor-author API.** A backend given ``(future, payload)`` pairs must:

    1. call :meth:`set_running` before it starts the task, and drop the task if it
       returns False (the caller cancelled it, or another copy already finished);
    2. report every copy it ran exactly once: :meth:`set_payload` with the pickled
       value, or :meth:`set_failure` with the exception (its own infrastructure
       errors included). Reporting on a future that is already done is allowed
       and ignored.

    The executor counts copies with :meth:`add_backup` (a speculative second copy)
    and decides about reruns through the hook given to :meth:`set_retry_hook`, so a
    backend never retries on its own and never needs to know about backups.
    """

    def __init__(self, job_id: str, index: int):
        super().__init__()
        self.job_id = job_id
        self.index = index
        self.stats: dict[str, Any] = {"job_id": job_id, "index": index,
                                      "submitted": time.time(), "attempt": 1}
        self.limits: Mapping[str, Any] = {}
        self._payload: Buffer | None = None  # a result still to decode
        self._logs = ""
        self._copies = 1  # copies submitted that may still report (the original)
        self._completing = False  # a report has won; set under _condition
        self._retry_hook: RetryHook | None = None
        self._decode_lock = threading.Lock()  # not _condition: decoding may take a while
        #: Set by a backend while the task waits in a worker's queue behind another task:
        #: ``withdraw() -> bool`` takes it back (True) or reports that it already started
        #: (False, after marking the future running). See :meth:`cancel`.
        self._withdraw: Callable[[], bool] | None = None
        #: PyWren's cancel: a running call is abandoned (see :meth:`cancel`).
        self.abandon_on_cancel = False
        #: ``persist(future) -> (store, key, mac, owner)``: where the executor will write
        #: this task's outcome so that a copy unpickled elsewhere can fetch it.
        self._persist: Callable[[Future], tuple[Any, ...]] | None = None
        self._persisting = False  # its outcome will be written to the store
        #: ``abandon(future)``: the backend may stop the run of a call abandoned by
        #: PyWren's cancel (the local backend replaces the worker running it).
        self._abandon: Callable[[Future], None] | None = None

    def __repr__(self) -> str:
        return f"<shardwren.Future job={self.job_id} index={self.index} state={self._state}>"

    # -- executor-author API -----------------------------------------------------
    def set_queued(self, withdraw: Callable[[], bool]) -> bool:
        """The task waits in a queue the backend no longer controls (a worker's own
        queue, behind the task it runs); False if it must not run at all.

        The future stays pending, so :meth:`cancel` can still succeed: it calls
        ``withdraw()``, which must take the task back and return True, or, if the
        task has started, call :meth:`set_running` and return False. The backend
        calls :meth:`set_running` itself when the task starts. For a task already
        running (a retry) this just returns True.
        """
        with self._condition:
            if self._state == RUNNING:
                return not self._completing
            if self._state != PENDING:
                return False
            self._withdraw = withdraw
            return True

    def set_running(self) -> bool:
        """Mark the task as running; False if it must not run.

        Like ``set_running_or_notify_cancel``, but idempotent: a retry or a backup
        of a task that is already running gets True. False means the caller
        cancelled it first, or it is already done (a late backup): the backend
        then drops the task without reporting it.
        """
        with self._condition:
            self._withdraw = None
            if self._state == RUNNING:
                return not self._completing
            if self._state not in (PENDING, CANCELLED):
                return False
            if not self.set_running_or_notify_cancel():
                return False
            self.stats["running_since"] = time.time()  # for the straggler watch
            return True

    def set_payload(self, payload: Buffer, stats: dict[str, Any] | None = None) -> bool:
        """Complete the future with a pickled result, unpickled on first ``result()``.

        ``stats`` (from the worker: times, pid, peak RSS, logs, ...) update
        :attr:`stats`. The first copy to report a result wins; returns whether
        this call completed the future.
        """
        with self._condition:
            if self._completing or self._state not in (PENDING, RUNNING):
                return False
            self._completing = True
            self._record(stats, "ok", None)
            self._payload = payload
        super().set_result(None)
        return True

    def set_failure(self, exc: BaseException, stats: dict[str, Any] | None = None,
                    final: bool = False) -> bool:
        """Report that one copy of the task failed with ``exc``.

        If another copy is still running, it decides. Otherwise the retry hook
        (if any) may schedule another run, and the caller never sees this
        failure; else the future fails with ``exc``. With ``final``, the future
        fails with ``exc`` at once whatever runs (an abandoned task). Returns
        whether this call completed the future.
        """
        hook = None
        with self._condition:
            if self._completing or self._state not in (PENDING, RUNNING):
                return False
            if not final:
                self._copies -= 1
                if self._copies > 0:  # its twin is still running: let it decide
                    self.stats.setdefault("failures", []).append(_describe(exc))
                    return False
                hook = self._retry_hook
                if hook is not None:
                    self._copies = 1  # the run the hook may schedule
        if hook is not None:
            try:
                if hook(self, exc, stats):
                    return False
            except Exception:  # noqa: BLE001 - a broken hook must not leave it pending
                log.exception("retry hook of task %d of job %s failed", self.index, self.job_id)
        with self._condition:
            if self._completing:
                return False
            self._completing = True
            self._copies = 0
            self._record(stats, "failed", type(exc).__name__)
        super().set_exception(exc)
        return True

    def add_backup(self) -> bool:
        """Count one more copy of the task, about to be submitted (speculation).

        False if the task is not running any more: then submit nothing.
        """
        with self._condition:
            if self._completing or self._state != RUNNING:
                return False
            self._copies += 1
            self.stats["backups"] = self.stats.get("backups", 0) + 1
            return True

    def set_retry_hook(self, hook: RetryHook | None) -> None:
        """Install ``hook(future, exc, stats) -> bool``, asked when the task's last running
        copy fails: True means it scheduled another run (and will submit it itself)."""
        self._retry_hook = hook

    def _record(self, stats: dict[str, Any] | None, outcome: str, failure: str | None) -> None:
        if stats:
            stats = dict(stats)
            self._logs = stats.pop("logs", self._logs)
            self.stats.update(stats)
        self.stats["outcome"] = outcome
        self.stats["failure"] = failure
        if outcome == "failed" and not self.stats.get("finished"):
            # A crash or a timeout the driver noticed: the worker reported no times, so
            # the record spans from when the task was seen running to now (driver's
            # clock), and timelines and summaries show the time it held a worker.
            if not self.stats.get("started") and self.stats.get("running_since"):
                self.stats["started"] = self.stats["running_since"]
            if self.stats.get("started"):
                self.stats["finished"] = time.time()

    # -- user side ---------------------------------------------------------------
    def logs(self) -> str:
        """What the task printed to stdout/stderr and logged, in order ("" if nothing)."""
        return self._logs

    def cancel(self) -> bool:
        """Cancel the task if it has not started; return whether it is cancelled.

        ``concurrent.futures`` semantics: a task that is running or done cannot be
        cancelled (False). A task waiting in a worker's queue is taken back from
        the worker, so True really means it will never run.

        Futures made by :mod:`shardwren.pywren`'s executors follow PyWren instead
        (:attr:`abandon_on_cancel`): cancelling a *running* call abandons it, and
        its :meth:`result` raises :class:`~shardwren.errors.TaskCancelledError`
        ("... was cancelled"); the worker finishes the call in the background and
        its result is ignored.
        """
        with self._condition:
            withdraw = self._withdraw
        # withdraw() takes the backend's lock, then this future's: never call it holding ours.
        if withdraw is not None and not withdraw():
            return self._cancel_running()  # it started meanwhile
        with self._condition:
            # The check and the change are one step, under the lock set_queued takes:
            # a task the backend is queueing right now is either seen cancelled by it,
            # or has its withdraw hook installed and seen here.
            retry = self._withdraw is not None and self._withdraw is not withdraw
            now = False
            if not retry:
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    return True
                if self._state == PENDING:
                    self._state = CANCELLED
                    self._withdraw = None
                    self.stats["outcome"] = "cancelled"  # summaries and timelines count it
                    self._condition.notify_all()
                    now = True
        if retry:  # queued on a worker between our two looks: ask that worker
            return self.cancel()
        if now:
            self._invoke_callbacks()  # type: ignore[attr-defined]  # CPython private, stable since 3.2
            # concurrent.futures' wait() and as_completed() count a cancelled future as done
            # once it is CANCELLED_AND_NOTIFIED, which the executor's worker does when it
            # dequeues it; a task that never reaches one (withdrawn from a worker's queue,
            # released by Dask's scheduler) is notified here, or they would wait for ever.
            with self._condition:  # an RLock; a backend may have notified it meanwhile
                if self._state == CANCELLED:
                    self.set_running_or_notify_cancel()
            return True
        return self._cancel_running()

    def _cancel_running(self) -> bool:
        if not self.abandon_on_cancel:
            return False
        with self._condition:
            if self._state != RUNNING or self._completing:
                return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
        if not self.set_failure(TaskCancelledError(
                f"task {self.index} of job {self.job_id} was cancelled while running: it was "
                "abandoned and its result, if it ever comes, is ignored"), final=True):
            return False
        abandon = self._abandon
        if abandon is not None:
            try:
                abandon(self)
            except Exception:  # noqa: BLE001 - the call is abandoned either way
                log.exception("stopping abandoned task %d of job %s failed", self.index,
                              self.job_id)
        return True

    def _cancelled_error(self) -> TaskCancelledError:
        return TaskCancelledError(f"task {self.index} of job {self.job_id} was cancelled "
                                  "before it started")

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception (None if it succeeded), waiting up to ``timeout`` seconds.

        Raises :class:`~shardwren.errors.TaskCancelledError` (a ``CancelledError``)
        naming the task if it was cancelled.
        """
        try:
            exc = super().exception(timeout)
        except cf.CancelledError as err:
            if isinstance(err, TaskCancelledError):
                raise
            raise self._cancelled_error() from None
        if exc is None and self._payload is not None:
            if self._decode_error is not None:  # known: not unpickled again on every call
                return self._decode_error
            try:  # a value that cannot be unpickled here is this future's failure too
                self.result()
            except ResultUnpicklingError as err:
                return err
        return exc

    _decode_error: ResultUnpicklingError | None = None

    # -- PyWren's status methods -------------------------------------------------
    def succeeded(self) -> bool:
        """Whether the task finished and returned a value that can be read here (PyWren)."""
        with self._condition:
            if self._state != FINISHED or self._exception is not None:
                return False
        return self.exception() is None

    def errored(self) -> bool:
        """Whether the task finished with an exception, or with a value that cannot be
        unpickled here (PyWren); cancelled is neither."""
        with self._condition:
            if self._state != FINISHED:
                return False
            if self._exception is not None:
                return True
        return self.exception() is not None

    @property
    def run_status(self) -> dict[str, Any] | None:
        """PyWren's remote status: what the worker reported (see :attr:`stats`), or
        ``None`` until the task is done."""
        return dict(self.stats) if self.done() else None

    @property
    def invoke_status(self) -> dict[str, Any]:
        """PyWren's local status: when and how the task was submitted."""
        keys = ("job_id", "index", "submitted", "attempt", "backups", "running_since")
        return {k: self.stats[k] for k in keys if k in self.stats}

    # -- pickling ----------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        """Futures pickle (PyWren users save them and fetch results later).

        A finished future carries its outcome. An unfinished one carries where its
        executor will write the outcome (a signed key in the executor's store), so a
        copy loaded in another process completes once the task does; it fails with
        :class:`~shardwren.errors.ResultLostError` if the driver ends without writing it.
        """
        with self._condition:
            state = self._state
        outcome: tuple[Any, ...]
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            outcome = ("cancelled",)
        elif state == FINISHED:
            if self._exception is not None:
                outcome = ("err", serialize.dumps_exception(self._exception))
            else:
                payload = self._payload
                outcome = ("ok", bytes(payload) if payload is not None
                           else serialize.dumps_value(self._result, what="result"))
        elif self._remote is not None:
            outcome = ("remote", *self._remote)
        elif self._persist is not None:
            outcome = ("remote", *self._persist(self))
        else:
            raise TypeError(f"{self!r} cannot be pickled before it finishes: it was not made "
                            "by an executor that can store its result; wait for it first")
        return (_rebuild, (self.job_id, self.index, dict(self.stats), self._logs, outcome))

    _remote: tuple[Any, ...] | None = None

    def result(self, timeout: float | None = None, check_only: bool = False,
               throw_except: bool = True, storage_handler: Any = None) -> Any:
        """Return the task's value, waiting up to ``timeout`` seconds.

        ``check_only``, ``throw_except`` and ``storage_handler`` are PyWren's: with
        ``check_only`` an unfinished task gives ``None`` at once instead of a wait;
        with ``throw_except=False`` a task that failed (or was cancelled) gives
        ``None`` instead of raising; ``storage_handler`` is accepted and unused.

        Raises
        ------
        TimeoutError
            If the task is not done within ``timeout``.
        ResultUnpicklingError
            If the value arrived but cannot be unpickled here (e.g. its class is in
            a module only the workers have); names the task and the job.
        Exception
            The task's own exception, with the remote traceback as ``__cause__``.
        """
        if check_only and not self.done():
            return None
        if not throw_except:
            try:
                return self.result(timeout)
            except TimeoutError:
                if not self.done():
                    raise  # not finished: that is no failure of the task's
                return None
            except Exception:  # noqa: BLE001 - PyWren's throw_except=False: None instead
                return None
        try:
            value = super().result(timeout)
        except cf.CancelledError as exc:
            if isinstance(exc, TaskCancelledError):
                raise
            raise self._cancelled_error() from None
        except TimeoutError:
            if self.done():  # the task's own failure (TaskTimeoutError is a TimeoutError too)
                raise
            raise TimeoutError(
                f"task {self.index} of job {self.job_id} did not finish within {timeout} s; "
                "it is still running: call result() again to keep waiting"
            ) from None
        if self._payload is None:
            return value
        with self._decode_lock:
            payload = self._payload
            if payload is None:  # decoded by another thread meanwhile
                return self._result
            try:
                self._result = serialize.loads(payload)
            except Exception as exc:
                err = ResultUnpicklingError(
                    f"the result of task {self.index} of job {self.job_id} arrived but cannot be "
                    f"unpickled here ({type(exc).__name__}: {exc}); make the module that defines "
                    "its type importable in the driver too, or return plain data (numbers, "
                    "strings, numpy arrays, dicts)")
                self._decode_error = err  # result() tries again (the module may come)
                raise err from exc
            self._decode_error = None
            self._payload = None
            self.stats.setdefault("fetched", time.time())
            return self._result


def _rebuild(job_id: str, index: int, stats: dict[str, Any], logs: str,
             outcome: tuple[Any, ...]) -> Future:
    """Unpickle a :class:`Future` (see :meth:`Future.__reduce__`)."""
    f = Future(job_id, index)
    f.stats.update(stats)
    f._logs = logs
    kind = outcome[0]
    if kind == "ok":
        f.set_payload(outcome[1])
    elif kind == "err":
        f.set_failure(serialize.loads_exception(outcome[1]), final=True)
    elif kind == "cancelled":
        f.cancel()
    else:
        f._remote = outcome[1:]
        _POLLER.add(f)
    return f


class _ResultPoller:
    """Completes futures unpickled before their task finished, from the store.

    One daemon thread while there are any: it looks for each outcome every
    :data:`POLL_SECONDS`, and checks every :data:`OWNER_CHECK_SECONDS` that the
    driver which will write it is alive (:mod:`shardwren.storage._owners`), so that
    a result that will never come fails the future instead of hanging it.
    """

    POLL_SECONDS = 0.2
    OWNER_CHECK_SECONDS = 2.0
    #: How long the store may stay unreachable before a future gives up on it.
    UNREACHABLE_SECONDS = 600.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.futures: list[Future] = []
        self.unreachable: dict[int, float] = {}  # id(future) -> when its store stopped answering
        self.thread: threading.Thread | None = None

    def add(self, fut: Future) -> None:
        with self.lock:
            self.futures.append(fut)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="shardwren-results",
                                               daemon=True)
                self.thread.start()

    def _run(self) -> None:
        last_owner_check = 0.0
        while True:
            with self.lock:
                self.futures = [f for f in self.futures if not f.done()]
                if not self.futures:
                    self.thread = None
                    return
                todo = list(self.futures)
            check_owner = time.monotonic() - last_owner_check > self.OWNER_CHECK_SECONDS
            if check_owner:
                last_owner_check = time.monotonic()
            for f in todo:
                try:
                    self._poll(f, check_owner)
                    self.unreachable.pop(id(f), None)
                except Exception as exc:  # noqa: BLE001 - reported on that future only
                    if is_transient(exc):  # the store is unreachable for now: ask again
                        since = self.unreachable.setdefault(id(f), time.monotonic())
                        if time.monotonic() - since < self.UNREACHABLE_SECONDS:
                            continue
                    self.unreachable.pop(id(f), None)
                    f.set_failure(exc, final=True)
            time.sleep(self.POLL_SECONDS)

    @staticmethod
    def _poll(f: Future, check_owner: bool) -> None:
        from .storage._owners import owner_alive

        assert f._remote is not None
        store, key, mac, owner = f._remote
        if not store.exists(key):
            if not check_owner or owner_alive(store, owner) or store.exists(key):
                return
            f.set_failure(ResultLostError(
                f"task {f.index} of job {f.job_id} will never report: the driver that ran it "
                f"({owner}) ended without writing its outcome to {store.url}/{key}"), final=True)
            return
        kind, data, stats, logs = pickle.loads(serialize.open_signed(
            mac, store.get(key), "result",
            f"The record at {store.url}/{key} was not written for task {f.index} of job "
            f"{f.job_id} by the driver that ran it; nothing from it was used"))
        f._logs = logs
        if kind == "ok":
            f.set_payload(data, stats)
        elif kind == "cancelled":
            f.set_failure(TaskCancelledError(f"task {f.index} of job {f.job_id} was cancelled"),
                          stats, final=True)
        else:
            f.set_failure(serialize.loads_exception(data), stats, final=True)


_POLLER = _ResultPoller()


def outcome_record(f: Future) -> bytes:
    """The pickled outcome of a done future, as :class:`_ResultPoller` reads it."""
    if f.cancelled():
        kind, data = "cancelled", b""
    elif f._exception is not None:
        kind, data = "err", serialize.dumps_exception(f._exception)
    else:
        payload = f._payload
        kind, data = "ok", (bytes(payload) if payload is not None
                            else serialize.dumps_value(f._result, what="result"))
    stats = {k: v for k, v in f.stats.items() if isinstance(v, (int, float, str, type(None)))}
    return pickle.dumps((kind, data, stats, f._logs), protocol=serialize.PROTOCOL)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _show_progress(n: int, progress: bool | None) -> bool:
    if progress is not None:
        return progress
    if n <= PROGRESS_MIN_TASKS:
        return False
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", leave=True, dynamic_ncols=True)


def _norm_return_when(return_when: Any) -> Any:
    aliases = {ALL_COMPLETED: ALL_COMPLETED, cf.ALL_COMPLETED: ALL_COMPLETED,
               ANY_COMPLETED: ANY_COMPLETED, cf.FIRST_COMPLETED: ANY_COMPLETED,
               ALWAYS: ALWAYS, "ALWAYS": ALWAYS,
               FIRST_EXCEPTION: FIRST_EXCEPTION, cf.FIRST_EXCEPTION: FIRST_EXCEPTION}
    try:
        return aliases[return_when]
    except (KeyError, TypeError):
        raise ValueError(
            "return_when must be ALL_COMPLETED, ANY_COMPLETED (FIRST_COMPLETED), ALWAYS or "
            f"FIRST_EXCEPTION, got {return_when!r}"
        ) from None


_CF_MODE = {ALL_COMPLETED: cf.ALL_COMPLETED, ANY_COMPLETED: cf.FIRST_COMPLETED,
            FIRST_EXCEPTION: cf.FIRST_EXCEPTION}


def _failed(f: cf.Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is not None


def wait(fs: Iterable[F], return_when: Any = ALL_COMPLETED,
         timeout: float | None = None, progress: bool | None = None
         ) -> tuple[list[F], list[F]]:
    """Wait for futures, PyWren style.

    Parameters
    ----------
    fs : iterable of Future
    return_when : {ALL_COMPLETED, ANY_COMPLETED, ALWAYS, FIRST_EXCEPTION}
        ``ALWAYS`` returns at once with the current split; ``FIRST_EXCEPTION``
        returns when a task fails, or when all are done. ``concurrent.futures``'
        constants are accepted too (``FIRST_COMPLETED`` is ``ANY_COMPLETED``).
    timeout : float, optional
        Seconds to wait at most; on expiry the split so far is returned.
    progress : bool, optional
        Force the progress bar on or off (default: on for more than
        :data:`PROGRESS_MIN_TASKS` futures when interactive).

    Returns
    -------
    (done, not_done) : tuple of lists, each in the order of ``fs``.
    """
    fs = list(fs)
    mode = _norm_return_when(return_when)
    # ANY_COMPLETED is met by a future that is already done (concurrent.futures'
    # FIRST_COMPLETED too): then nothing is waited for.
    if mode != ALWAYS and not (mode == ANY_COMPLETED and any(f.done() for f in fs)):
        pending = [f for f in fs if not f.done()]
        if pending and _show_progress(len(fs), progress):
            _wait_with_bar(fs, pending, mode, timeout)
        elif pending and not (mode == FIRST_EXCEPTION and any(_failed(f) for f in fs)):
            cf.wait(pending, timeout=timeout, return_when=_CF_MODE[mode])
    done = [f for f in fs if f.done()]
    not_done = [f for f in fs if not f.done()]
    return done, not_done


def _wait_with_bar(fs: list, pending: list, mode: int, timeout: float | None) -> None:
    bar = _progress_bar(len(fs), "tasks")
    bar.update(len(fs) - len(pending))
    try:
        if mode == FIRST_EXCEPTION and any(_failed(f) for f in fs):
            return
        for f in cf.as_completed(pending, timeout=timeout):
            bar.update(1)
            if mode == ANY_COMPLETED or mode == FIRST_EXCEPTION and _failed(f):
                break
    except TimeoutError:
        pass
    finally:
        bar.close()


def as_completed(fs: Iterable[F], timeout: float | None = None) -> Iterator[F]:
    """Yield futures as they finish (``concurrent.futures.as_completed`` semantics).

    With ``timeout``, raises ``TimeoutError`` once that many seconds have passed
    since the call with futures still unfinished.
    """
    return cast(Iterator[F], cf.as_completed(list(fs), timeout=timeout))


def get_all_results(fs: Sequence[cf.Future], progress: bool | None = None) -> list[Any]:
    """Wait for every future and return their results in order.

    The first failed task's exception is raised (with its remote traceback).
    """
    wait(fs, ALL_COMPLETED, progress=progress)
    return [f.result() for f in fs]


def fold_results(fs: Iterable[cf.Future], fn: Callable[[int, Any], None],
                 progress: bool | None = None, desc: str = "tasks") -> None:
    """Hand each result to ``fn(position, result)`` as soon as its task finishes.

    Unlike :func:`get_all_results`, nothing is kept: once ``fn`` returns, the
    future is dropped, so a caller that folds results into a fixed-size answer
    (a running top-k, a sum) needs memory independent of the number of tasks.
    ``position`` is the future's index in ``fs``; the order of calls is the order
    of completion. A list ``fs`` is emptied at the start (the futures are this
    function's from then on): a list the caller still held would keep every
    result alive until the end.

    The first task to fail raises its exception (with its remote traceback) once
    the tasks not yet started are cancelled; results already handed over stay
    with ``fn``'s owner.
    """
    # Only this dict holds the futures from here on (as_completed drops those it
    # has yielded; the executor drops a task's future when it completes).
    pending = {f: n for n, f in enumerate(fs)}
    if isinstance(fs, list):
        fs.clear()
    bar = _progress_bar(len(pending), desc) if _show_progress(len(pending), progress) else None
    try:
        for f in cf.as_completed(list(pending)):
            n = pending.pop(f)
            try:
                value = f.result()
            except BaseException:
                for other in pending:
                    other.cancel()
                raise
            del f
            fn(n, value)
            del value
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
