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
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from typing import Any, TypeVar, cast

from .serialize import Buffer

from . import serialize
from .errors import ResultUnpicklingError

F = TypeVar("F", bound=cf.Future)

# PyWren's constants, kept for source compatibility with its tutorials.
ALL_COMPLETED = 1
ANY_COMPLETED = 2
ALWAYS = 3

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

    def __repr__(self) -> str:
        return f"<shardwren.Future job={self.job_id} index={self.index} state={self._state}>"

    # -- executor-author API -----------------------------------------------------
    def set_running(self) -> bool:
        """Mark the task as running; False if it must not run.

        Like ``set_running_or_notify_cancel``, but idempotent: a retry or a backup
        of a task that is already running gets True. False means the caller
        cancelled it first, or it is already done (a late backup): the backend
        then drops the task without reporting it.
        """
        with self._condition:
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

    def set_failure(self, exc: BaseException, stats: dict[str, Any] | None = None) -> bool:
        """Report that one copy of the task failed with ``exc``.

        If another copy is still running, it decides. Otherwise the retry hook
        (if any) may schedule another run, and the caller never sees this
        failure; else the future fails with ``exc``. Returns whether this call
        completed the future.
        """
        with self._condition:
            if self._completing or self._state not in (PENDING, RUNNING):
                return False
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

    # -- user side ---------------------------------------------------------------
    def logs(self) -> str:
        """What the task printed to stdout/stderr and logged, in order ("" if nothing)."""
        return self._logs

    def result(self, timeout: float | None = None) -> Any:
        """Return the task's value, waiting up to ``timeout`` seconds.

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
        try:
            value = super().result(timeout)
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
                raise ResultUnpicklingError(
                    f"the result of task {self.index} of job {self.job_id} arrived but cannot be "
                    f"unpickled here ({type(exc).__name__}: {exc}); make the module that defines "
                    "its type importable in the driver too, or return plain data (numbers, "
                    "strings, numpy arrays, dicts)") from exc
            self._payload = None
            self.stats.setdefault("fetched", time.time())
            return self._result


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


def _norm_return_when(return_when: Any) -> int:
    aliases = {ALL_COMPLETED: ALL_COMPLETED, cf.ALL_COMPLETED: ALL_COMPLETED,
               ANY_COMPLETED: ANY_COMPLETED, cf.FIRST_COMPLETED: ANY_COMPLETED,
               ALWAYS: ALWAYS, "ALWAYS": ALWAYS}
    try:
        return aliases[return_when]
    except (KeyError, TypeError):
        raise ValueError(
            f"return_when must be ALL_COMPLETED, ANY_COMPLETED or ALWAYS, got {return_when!r}"
        ) from None


def wait(fs: Iterable[F], return_when: Any = ALL_COMPLETED,
         timeout: float | None = None, progress: bool | None = None
         ) -> tuple[list[F], list[F]]:
    """Wait for futures, PyWren style.

    Parameters
    ----------
    fs : iterable of Future
    return_when : {ALL_COMPLETED, ANY_COMPLETED, ALWAYS}
        ``ALWAYS`` returns at once with the current split.
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
    if mode != ALWAYS:
        pending = [f for f in fs if not f.done()]
        if pending and _show_progress(len(fs), progress):
            _wait_with_bar(fs, pending, mode, timeout)
        elif pending:
            cf.wait(pending, timeout=timeout,
                    return_when=cf.ALL_COMPLETED if mode == ALL_COMPLETED else cf.FIRST_COMPLETED)
    done = [f for f in fs if f.done()]
    not_done = [f for f in fs if not f.done()]
    return done, not_done


def _wait_with_bar(fs: list, pending: list, mode: int, timeout: float | None) -> None:
    bar = _progress_bar(len(fs), "tasks")
    bar.update(len(fs) - len(pending))
    try:
        for _ in cf.as_completed(pending, timeout=timeout):
            bar.update(1)
            if mode == ANY_COMPLETED:
                break
    except TimeoutError:
        pass
    finally:
        bar.close()


def as_completed(fs: Iterable[F], timeout: float | None = None) -> Iterator[F]:
    """Yield futures as they finish (``concurrent.futures.as_completed`` semantics)."""
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
