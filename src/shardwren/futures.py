"""Futures and the module-level ``wait`` / ``as_completed`` / ``get_all_results``.

:class:`Future` is a :class:`concurrent.futures.Future` (so its state machine,
``result(timeout)``, ``cancel`` and callbacks are CPython's well-tested ones, and
``concurrent.futures.wait`` accepts it) with a task identity and per-task stats.
Results arrive as bytes and are unpickled on first access, in the caller's thread,
so the backend's I/O thread never spends time decoding large arrays.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Sequence

from . import serialize

# PyWren's constants, kept for source compatibility with its tutorials.
ALL_COMPLETED = 1
ANY_COMPLETED = 2
ALWAYS = 3

#: Maps with more futures than this show a progress bar when progress is "auto".
PROGRESS_MIN_TASKS = 8

_UNSET = object()


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
        (bytes, this task's own peak), ``outcome`` (``"ok"`` or ``"failed"``) and
        ``failure`` (the exception's class name).
    """

    def __init__(self, job_id: str, index: int):
        super().__init__()
        self.job_id = job_id
        self.index = index
        self.stats: dict[str, Any] = {"job_id": job_id, "index": index,
                                      "submitted": time.time(), "attempt": 1}
        self._payload: bytes | None = None
        self._logs = ""
        self._retry = None  # set by the executor: decides and schedules retries
        #: Per-task limits the backend enforces: ``timeout`` (s), ``memory_limit`` (bytes).
        self.limits: dict[str, Any] = {}
        self._decoded: Any = _UNSET
        self._decode_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<shardwren.Future job={self.job_id} index={self.index} state={self._state}>"

    # -- backend side --------------------------------------------------------
    def _record(self, stats: dict[str, Any] | None, outcome: str, failure: str | None) -> None:
        if stats:
            stats = dict(stats)
            self._logs = stats.pop("logs", self._logs)
            self.stats.update(stats)
        self.stats["outcome"] = outcome
        self.stats["failure"] = failure

    def _set_payload(self, payload: bytes, stats: dict[str, Any] | None = None) -> None:
        """Complete the future with a pickled result (decoded lazily).

        With a speculative backup, two copies may finish: the first wins.
        """
        with self._condition:
            if self._state == "FINISHED":
                return
            self._record(stats, "ok", None)
            self._payload = payload
        try:
            self.set_result(None)
        except cf.InvalidStateError:
            pass

    def _fail(self, exc: BaseException, stats: dict[str, Any] | None = None) -> None:
        if self.done():
            return  # the other copy of a backed-up task finished first
        if self.stats.get("backups") and not getattr(self, "_backup_failed", False):
            self._backup_failed = True  # its twin may still succeed: let it decide
            return
        retry, self._retry = self._retry, None
        if retry is not None and retry(self, exc, stats):
            return  # the executor runs it again; the caller never sees this failure
        self._record(stats, "failed", type(exc).__name__)
        try:
            self.set_exception(exc)
        except cf.InvalidStateError:
            pass

    def _start(self) -> bool:
        """Backend side: mark running; False if the caller cancelled it first.

        A retried task is already running, which is fine.
        """
        with self._condition:
            running = self._state == "RUNNING"
        if running or self.set_running_or_notify_cancel():
            self.stats["running_since"] = time.time()  # for the straggler watch
            return True
        return False

    def logs(self) -> str:
        """What the task printed to stdout/stderr and logged, in order ("" if nothing)."""
        return self._logs

    # -- user side ---------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Return the task's value, waiting up to ``timeout`` seconds.

        Raises
        ------
        TimeoutError
            If the task is not done within ``timeout``.
        Exception
            The task's own exception, with the remote traceback as ``__cause__``.
        """
        try:
            super().result(timeout)
        except TimeoutError:
            if self.done():  # the task's own failure (TaskTimeoutError is a TimeoutError too)
                raise
            raise TimeoutError(
                f"task {self.index} of job {self.job_id} did not finish within {timeout} s; "
                "it is still running: call result() again to keep waiting"
            ) from None
        if self._decoded is _UNSET:
            with self._decode_lock:
                if self._decoded is _UNSET:
                    self._decoded = serialize.loads(self._payload)
                    self._payload = None
                    self.stats.setdefault("fetched", time.time())
        return self._decoded


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


def wait(fs: Iterable[cf.Future], return_when: Any = ALL_COMPLETED,
         timeout: float | None = None, progress: bool | None = None
         ) -> tuple[list[cf.Future], list[cf.Future]]:
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


def as_completed(fs: Iterable[cf.Future], timeout: float | None = None) -> Iterator[cf.Future]:
    """Yield futures as they finish (``concurrent.futures.as_completed`` semantics)."""
    return cf.as_completed(list(fs), timeout=timeout)


def get_all_results(fs: Sequence[cf.Future], progress: bool | None = None) -> list[Any]:
    """Wait for every future and return their results in order.

    The first failed task's exception is raised (with its remote traceback).
    """
    wait(fs, ALL_COMPLETED, progress=progress)
    return [f.result() for f in fs]
