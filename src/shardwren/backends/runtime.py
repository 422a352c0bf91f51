"""Worker side: what runs around every task, on every backend.

Nothing here runs in the driver. A backend's worker (a local worker process, a
Dask worker thread, a Lithops function) gets a function's bytes and a task's
argument bytes and calls :func:`run_task`, which never raises and returns
``(ok, pickled value or pickled exception, stats)``. Around the task it

* captures stdout, stderr and log records into the task's own buffer, routed by
  thread, so tasks running side by side in one process keep their logs apart;
* applies the task's ``memory_limit`` (``RLIMIT_DATA``, Linux), reference-counted
  so that overlapping tasks never leave the process capped (:func:`limit_memory`);
* measures the task's own peak RSS when the task has its process to itself
  (``exclusive=True``), and reports ``None`` otherwise: a process-wide peak says
  nothing about one of several tasks running in threads;
* counts the task's store I/O (per thread, :mod:`shardwren._iostats`).

:class:`FunctionCache` keeps unpickled functions per worker (an LRU keyed by
the map's id), so a map's function is unpickled once per worker, not per task.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .. import _iostats, serialize
from ..errors import PayloadSignatureError, TaskExitError, TaskMemoryError

#: Functions kept per worker; the local driver mirrors this LRU exactly.
FN_CACHE_SIZE = 64

HOST = socket.gethostname()

# --- functions ------------------------------------------------------------------------


class FunctionCache:
    """Unpickled functions by map id, least recently used evicted first. Thread-safe.

    A function that fails to load (unsigned, altered, or needing a module this
    worker lacks) is cached as its exception, which :func:`run_task` then
    reports as each task's failure: one clear error per task, not a dead worker.
    """

    def __init__(self, size: int = FN_CACHE_SIZE):
        self.size = size
        self._fns: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, fn_id: str) -> bool:
        return fn_id in self._fns

    def load(self, fn_id: str, fn_bytes: bytes, key: bytes | None = None) -> Any:
        """The function in ``fn_bytes`` (verified with ``key`` first), cached as ``fn_id``."""
        with self._lock:
            if fn_id in self._fns:
                self._fns.move_to_end(fn_id)
                return self._fns[fn_id]
            try:
                fn = pickle.loads(serialize.open_signed(key, fn_bytes, "function")
                                  if key else fn_bytes)
            except BaseException as exc:  # noqa: BLE001 - reported per task by run_task
                fn = exc
            self._fns[fn_id] = fn
            while len(self._fns) > self.size:
                self._fns.popitem(last=False)
            return fn

    def get(self, fn_id: str) -> Any:
        """A function loaded before (or, if it is not cached, an exception saying so)."""
        with self._lock:
            try:
                self._fns.move_to_end(fn_id)
                return self._fns[fn_id]
            except KeyError:
                return LookupError(f"function {fn_id} is not cached in this worker (the driver "
                                   "and the worker disagree about its cache: a bug)")


def worker_key(signed: bool, who: str = "this worker") -> bytes | None:
    """The signing key of a worker that is not handed one privately: ``SHARDWREN_SECRET``.

    Checked against the driver's choice (``signed``), so that a driver and its
    workers that disagree fail with a clear error instead of an unreadable payload.
    """
    secret = os.environ.get("SHARDWREN_SECRET")
    if signed and not secret:
        raise PayloadSignatureError(
            f"the driver signs its tasks but {who} has no SHARDWREN_SECRET to check them with; "
            "give the workers the driver's SHARDWREN_SECRET in their environment")
    if secret and not signed:
        raise PayloadSignatureError(
            f"refusing an unsigned task: {who} requires signed payloads (SHARDWREN_SECRET is set "
            "here); give the driver the same SHARDWREN_SECRET")
    return secret.encode() if secret else None


# --- output capture ---------------------------------------------------------------------

_TASK = threading.local()  # .buf: the running task's log buffer in this thread, if any
_CAPTURE_LOCK = threading.Lock()


class Router(io.TextIOBase):
    """Stands in for sys.stdout/stderr: text goes to the running task's buffer, if any.

    Routing by thread keeps the logs of tasks running side by side in one
    process (Dask worker threads) apart; other threads write through.
    """

    def __init__(self, original: TextIO):
        self.original = original
        self.buffer = _BytesRouter(self)  # code that writes bytes: sys.stdout.buffer.write

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        buf = getattr(_TASK, "buf", None)
        return (buf if buf is not None else self.original).write(text)

    def flush(self) -> None:
        if getattr(_TASK, "buf", None) is None:
            self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return False


class _BytesRouter(io.RawIOBase):
    """``Router.buffer``: bytes written by a task go to its log as text (undecodable
    bytes kept as escapes); outside a task, to the original stream's own buffer."""

    def __init__(self, router: Router):
        self.router = router

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raw = bytes(data)
        if getattr(_TASK, "buf", None) is None:
            original = getattr(self.router.original, "buffer", None)
            if original is not None:
                return original.write(raw)
        self.router.write(raw.decode(self.router.encoding, errors="backslashreplace"))
        return len(raw)

    def flush(self) -> None:
        self.router.flush()


class TaskLogHandler(logging.Handler):
    """A root-logger handler that copies records logged by a task into its buffer."""

    def emit(self, record: logging.LogRecord) -> None:
        buf = getattr(_TASK, "buf", None)
        if buf is not None:
            buf.write(self.format(record) + "\n")


def install_capture() -> None:
    """Route sys.stdout/stderr and root log records through the per-thread task buffers.

    Idempotent and thread-safe; wraps the streams again if something (a test
    runner, a notebook) replaced them since.
    """
    with _CAPTURE_LOCK:
        if not isinstance(sys.stdout, Router):
            sys.stdout = Router(sys.stdout)
        if not isinstance(sys.stderr, Router):
            sys.stderr = Router(sys.stderr)
        root = logging.getLogger()
        if not any(isinstance(h, TaskLogHandler) for h in root.handlers):
            handler = TaskLogHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)


# --- memory ------------------------------------------------------------------------------


def proc_status_bytes(field: bytes) -> int | None:
    """A size field of /proc/self/status (``b"VmHWM"``, ``b"VmData"``) in bytes (Linux)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(field + b":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (VmHWM) of this process (Linux; else no-op).

    Process-wide: only for a task that has its process to itself.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """This process's peak RSS in bytes since the last :func:`reset_peak_rss`."""
    peak = proc_status_bytes(b"VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _DataLimit:
    """The process's RLIMIT_DATA, shared by the tasks that asked for a limit.

    A limit is process-wide, so tasks that overlap in one process (a thread
    abandoned past its deadline, or several worker threads) must agree: the
    process's own limit is saved when the first limited task starts and put back
    when the last one ends, and while several run the loosest of their limits
    holds (none of them is then enforced exactly, which is why backends refuse
    ``memory_limit`` where tasks share a process by design).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[int, int] = {}  # token -> soft limit wanted
        self.saved: tuple[int, int] | None = None
        self.tokens = iter(range(1, 1 << 62))

    def enter(self, limit: int) -> int:
        import resource

        with self.lock:
            if not self.active:
                self.saved = resource.getrlimit(resource.RLIMIT_DATA)
            token = next(self.tokens)
            self.active[token] = (proc_status_bytes(b"VmData") or 0) + int(limit)
            self._apply()
            return token

    def exit(self, token: int) -> None:
        import resource

        with self.lock:
            self.active.pop(token, None)
            if self.active:
                self._apply()
            elif self.saved is not None:
                resource.setrlimit(resource.RLIMIT_DATA, self.saved)
                self.saved = None

    def _apply(self) -> None:
        import resource

        assert self.saved is not None
        hard = self.saved[1]
        soft = max(self.active.values())
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


_DATA_LIMIT = _DataLimit()


@contextmanager
def limit_memory(limit: int | None) -> Iterator[None]:
    """Cap the data the calling task may allocate to ``limit`` more bytes (Linux RLIMIT_DATA).

    An allocation past it raises MemoryError inside the task, which then fails
    alone instead of the machine meeting the OOM killer. Lifted on exit.
    """
    if not limit:
        yield
        return
    token = _DATA_LIMIT.enter(limit)
    try:
        yield
    finally:
        _DATA_LIMIT.exit(token)


# --- the task ------------------------------------------------------------------------------


def _exit_error(exc: SystemExit, where: str | None) -> BaseException:
    """``sys.exit()`` inside a task ends the task, not the worker: a clear error instead.

    PyWren reports such a task as "python process failed, returned a non-zero return
    code"; the wording is kept so that code matching on it goes on working.
    """
    code = exc.code
    what = where or "the task"
    if code in (0, None):
        msg = f"{what} called sys.exit({code!r}) before returning a value"
    else:
        msg = (f"{what} called sys.exit({code!r}): the task failed with a non-zero return code "
               f"({code!r}); its output is in the future's logs()")
    err = TaskExitError(msg, exitcode=code)
    err.__cause__ = exc
    return err



def run_task(fn: Callable[..., Any] | BaseException, payload: bytes,
             memory_limit: int | None = None, key: bytes | None = None,
             exclusive: bool = True, where: str | None = None) -> tuple[bool, bytes, dict[str, Any]]:
    """Run ``fn(*args)``; return ``(ok, pickled value or pickled exception, stats)``.

    Parameters
    ----------
    fn : callable or BaseException
        The task's function, or the exception raised while loading it (reported
        as the task's failure).
    payload : bytes
        The pickled argument tuple, signed with ``key`` when one is given.
    memory_limit : int, optional
        Bytes the task may allocate (see :func:`limit_memory`).
    key : bytes, optional
        The executor's signing key: ``payload`` is refused unless signed with it.
    exclusive : bool
        Whether the task has its process to itself. If not (threads of one Dask
        worker), the process-wide peak RSS is neither reset nor reported.
    where : str, optional
        The task's name for errors raised here ("task 3 of job ...").

    Returns
    -------
    (ok, data, stats)
        ``stats`` has ``started``, ``finished``, ``pid``, ``host``, ``peak_rss``
        (bytes, or None when not ``exclusive``), ``bytes_read``,
        ``bytes_written`` and ``logs`` (what the task printed or logged).

    Never raises: every failure, an unpicklable result included, comes back as a
    pickled exception with its traceback.
    """
    install_capture()
    if exclusive:
        reset_peak_rss()
    _iostats.reset()
    _TASK.buf = io.StringIO()
    started = time.time()
    try:
        if isinstance(fn, BaseException):  # the function itself failed to load here
            raise fn
        args = serialize.loads(serialize.open_signed(key, payload, "arguments") if key else payload)
        with limit_memory(memory_limit):
            value = fn(*args)
        ok, data = True, serialize.dumps_value(value, what="result")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
        if isinstance(exc, SystemExit) and not isinstance(fn, BaseException):
            exc = _exit_error(exc, where)
        elif isinstance(exc, KeyboardInterrupt) and not isinstance(fn, BaseException):
            exc = RuntimeError(f"task raised {type(exc).__name__}({exc})")
        elif isinstance(exc, MemoryError) and memory_limit:
            exc = TaskMemoryError(
                f"{where or 'the task'} tried to use more than its memory limit of "
                f"{memory_limit / 2**20:.0f} MiB ({exc}); use smaller blocks or raise memory_limit")
        ok, data = False, serialize.dumps_exception(exc)
    finished = time.time()
    logs, _TASK.buf = _TASK.buf.getvalue(), None
    read, written = _iostats.snapshot()
    stats = {"started": started, "finished": finished, "pid": os.getpid(), "host": HOST,
             "peak_rss": peak_rss() if exclusive else None, "bytes_read": read,
             "bytes_written": written, "logs": logs}
    return ok, data, stats
