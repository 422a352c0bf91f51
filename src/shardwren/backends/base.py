"""What every backend implements, and the task runner every worker uses.

Following cubed's runtime design, a backend only ever sees "a function and its
inputs": an opaque pickled function with an id, and a list of (future, pickled
arguments) pairs. Planning, retries of whole algorithms and data layout live
above it, in the executor and the linear-algebra layer.
"""

from __future__ import annotations

import abc
import io
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

from .. import _iostats, serialize
from .._optional import install_hint, require
from ..errors import BackendNotInstalledError, TaskMemoryError, UnknownBackendError

if TYPE_CHECKING:
    from ..futures import Future
    from ..storage import Store


class Backend(abc.ABC):
    """A place where tasks run."""

    #: Registry name, e.g. ``"local"``.
    name: str = ""

    @property
    @abc.abstractmethod
    def parallelism(self) -> int:
        """How many tasks can run at once."""

    @abc.abstractmethod
    def submit(self, fn_id: str, fn_bytes: bytes,
               tasks: Sequence[tuple[Future, bytes]]) -> None:
        """Start running ``fn(*loads(args))`` for each task; complete each future.

        ``fn_bytes`` is the same for every call with the same ``fn_id`` and is
        deserialised at most once per worker.
        """

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers. With ``wait``, unfinished tasks finish first."""

    def check_store(self, store: Store) -> None:
        """Raise if the workers cannot reach ``store`` (default: they can)."""


# name -> (module, class, the optional library it needs or None). Imported only when
# asked for, so a missing optional dependency costs nothing until it is needed
# (fsspec's registry); shardwren._optional.INSTALL says which pip extra brings it.
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "local": ("shardwren.backends.local", "LocalBackend", None),
    "dask": ("shardwren.backends.dask", "DaskBackend", "distributed"),
}


def available_backends() -> str:
    """A one-line description of every backend and how to install it."""
    return ", ".join(
        f"{name!r}" + (f" ({install_hint(needs)})" if needs else " (built in)")
        for name, (_, _, needs) in _REGISTRY.items()
    )


def backend_class(name: str) -> type[Backend]:
    """Look a backend class up by name, importing it on first use."""
    try:
        module, cls, needs = _REGISTRY[name]
    except KeyError:
        raise UnknownBackendError(
            f"unknown backend {name!r}; available backends: {available_backends()}"
        ) from None
    return getattr(require(module, f"backend {name!r}", needs, BackendNotInstalledError), cls)


# --- worker side -----------------------------------------------------------------

_HOST = socket.gethostname()


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets the kernel's high-water mark (VmHWM), which
    # gives a per-task peak in a long-lived worker. Linux only; elsewhere the
    # process-lifetime peak is reported.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _proc_status_bytes(field: bytes) -> int | None:
    """A size field of /proc/self/status (``b"VmHWM"``, ``b"VmData"``) in bytes (Linux)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(field + b":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    peak = _proc_status_bytes(b"VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Router(io.TextIOBase):
    """Stands in for sys.stdout/stderr: text goes to the running task's buffer, if any.

    Routing by thread keeps the logs of tasks running side by side in one
    process (Dask worker threads) apart.
    """

    def __init__(self, original):
        self.original = original

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


class _TaskLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        buf = getattr(_TASK, "buf", None)
        if buf is not None:
            buf.write(self.format(record) + "\n")


_TASK = threading.local()
_CAPTURE_INSTALLED = []


def _install_capture() -> None:
    if _CAPTURE_INSTALLED:
        return
    sys.stdout, sys.stderr = _Router(sys.stdout), _Router(sys.stderr)
    handler = _TaskLogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    _CAPTURE_INSTALLED.append(handler)


class _MemoryLimit:
    """Caps the data a task may allocate (RLIMIT_DATA, Linux), lifted afterwards.

    An allocation past it raises MemoryError inside the task, which then fails
    alone, instead of the machine meeting the OOM killer.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.saved = None

    def __enter__(self) -> _MemoryLimit:
        if self.limit:
            import resource

            self.saved = resource.getrlimit(resource.RLIMIT_DATA)
            hard = self.saved[1]
            soft = (_proc_status_bytes(b"VmData") or 0) + int(self.limit)
            resource.setrlimit(resource.RLIMIT_DATA,
                               (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, self.saved)


def run_task(fn: Any, payload: bytes, memory_limit: int | None = None,
             key: bytes | None = None) -> tuple[bool, bytes, dict[str, Any]]:
    """Run ``fn(*args)`` on a worker; return ``(ok, pickled value or error, stats)``.

    Never raises: every failure, including an unpicklable result, comes back as
    a pickled exception with its traceback. The task's stdout, stderr and log
    records are captured into ``stats["logs"]``; its store I/O into
    ``bytes_read`` / ``bytes_written``.
    """
    _install_capture()
    _reset_peak_rss()
    _iostats.reset()
    _TASK.buf = io.StringIO()
    started = time.time()
    try:
        if isinstance(fn, BaseException):  # the function itself failed to load here
            raise fn
        args = serialize.loads(serialize.open_signed(key, payload, "arguments") if key else payload)
        with _MemoryLimit(memory_limit):
            value = fn(*args)
        ok, data = True, serialize.dumps_value(value, what="result")
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(fn, BaseException):
            exc = RuntimeError(f"task raised {type(exc).__name__}({exc})")
        elif isinstance(exc, MemoryError) and memory_limit:
            exc = TaskMemoryError(
                f"the task tried to use more than its memory limit of {memory_limit / 2**20:.0f} MiB "
                f"({exc}); use smaller blocks or raise memory_limit")
        ok, data = False, serialize.dumps_exception(exc)
    finished = time.time()
    logs, _TASK.buf = _TASK.buf.getvalue(), None
    read, written = _iostats.snapshot()
    stats = {"started": started, "finished": finished, "pid": os.getpid(), "host": _HOST,
             "peak_rss": _peak_rss(), "bytes_read": read, "bytes_written": written,
             "logs": logs}
    return ok, data, stats
