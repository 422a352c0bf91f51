"""Driver side: the contract every backend implements, and the backend registry.

Following Cubed's runtime design, a backend only ever sees "a function and its
inputs": an opaque pickled function with an id, and a list of ``(future,
pickled arguments)`` pairs. Planning, retries, speculative backups and data
layout live above it, in the executor and the linear-algebra layer; the failure
policy is one set of pure functions (:mod:`shardwren.policy`) for every backend.

The contract
------------
**Construction.** ``cls(workers=, blas_threads=, settings=, key=, **options)``,
keywords only, called by :func:`shardwren.default_executor`:

* ``workers``: how many tasks to run at once where the backend decides that
  (local processes); ``None`` for the backend's default. Backends that attach to
  capacity they do not own (a Dask cluster) ignore it.
* ``blas_threads``: BLAS threads per task (``None``: the backend's choice, never
  more than the cores a task has).
* ``settings``: every resolved setting (:mod:`shardwren.config`), for backend
  specific ones (``dask_address``, ``connect_timeout``, ...).
* ``key``: the executor's signing key, or ``None``. Every function and argument
  blob the backend receives is signed with it; the backend's workers must check
  them (:func:`shardwren.serialize.open_signed`, done by
  :func:`shardwren.backends.runtime.run_task`) before unpickling anything. A
  backend that can hand ``key`` to its workers over a private channel sets
  :attr:`Backend.ships_key_privately` and gets a random key when the user
  configured none; others get ``None`` unless ``secret`` is configured, and then
  their workers must hold the same secret (``SHARDWREN_SECRET``).
* ``options``: the names listed in :attr:`Backend.options` (``address=``,
  ``client=`` for Dask), passed through from ``default_executor``.

A constructor that fails must release everything it started.

**Submission.** :meth:`Backend.submit` may be called from any thread, several at
once (the caller's threads, the executor's retry and straggler timers), and again
for a future it has seen before (a retry, or a speculative backup while the
first copy still runs). For each ``(future, payload)`` it must

1. call ``future.set_running()`` and skip the task if that returns False;
2. run ``fn(*args)`` on a worker through
   :func:`shardwren.backends.runtime.run_task` (same capture, limits, stats and
   error pickling everywhere), with ``fn`` unpickled at most once per worker and
   map (``fn_id``);
3. report the copy exactly once: ``future.set_payload(value_bytes, stats)`` or
   ``future.set_failure(exception, stats)``. Infrastructure failures are
   reported as shardwren errors: :class:`~shardwren.errors.WorkerCrashedError`
   (the worker died), :class:`~shardwren.errors.TaskTimeoutError`,
   :class:`~shardwren.errors.ExecutorShutdownError`,
   :class:`~shardwren.errors.ExecutorBrokenError` (the backend's own machinery
   failed: every outstanding future fails with it).

``submit`` must not block on the tasks, must raise
:class:`~shardwren.errors.ExecutorShutdownError` after :meth:`Backend.shutdown`,
and must never call ``set_payload``/``set_failure`` while holding a lock it
takes itself: those run the future's callbacks (user code) in the calling thread.

**Limits.** ``future.limits`` holds ``timeout`` (seconds, counted from the
task's start) and ``memory_limit`` (bytes); ``None`` means none. Past its
timeout a task fails with ``TaskTimeoutError``: its worker is killed and replaced
where :attr:`Backend.kills_on_timeout`, otherwise the task is abandoned (its
thread finishes in the background, beside the worker's next tasks: task code must
then be thread-safe). ``memory_limit`` is enforced per task where
:attr:`Backend.enforces_memory_limit`; elsewhere :meth:`Backend.check_limits`
refuses it up front with a ``ConfigError``: a limit is never half-enforced.

**Reports.** ``stats`` is what ``run_task`` returns (``started``, ``finished``,
``pid``, ``host``, ``peak_rss``, ``bytes_read``, ``bytes_written``, ``logs``)
plus ``worker`` (a backend-specific worker name). ``peak_rss`` is the task's
own peak where :attr:`Backend.isolates_tasks`, else ``None``.

**Threading.** Futures may be completed from any backend thread. A backend's own
threads must not outlive :meth:`Backend.shutdown`, and its workers must not
outlive the driver process.

**Abandoning.** :meth:`Backend.abandon` (optional) may stop the running copy of a
task whose future the caller already failed (PyWren's cancel of a running call).

**Shutdown.** :meth:`Backend.shutdown` is idempotent. With ``wait=True`` it
returns once every submitted task is done; with ``wait=False`` it fails what has
not finished with ``ExecutorShutdownError`` and returns promptly. Afterwards no
thread, process or file descriptor of the backend remains.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .._optional import install_hint, require
from ..errors import BackendNotInstalledError, ConfigError, UnknownBackendError

if TYPE_CHECKING:
    from ..futures import Future
    from ..storage import Store


class Backend(abc.ABC):
    """A place where tasks run. See the module documentation for the full contract."""

    #: Registry name, e.g. ``"local"``.
    name: ClassVar[str] = ""
    #: Extra constructor keywords ``default_executor`` passes through (e.g. ``"address"``).
    options: ClassVar[tuple[str, ...]] = ()
    #: A task past its timeout has its worker killed (True) or is abandoned in the
    #: background (False: Python threads cannot be killed).
    kills_on_timeout: bool = False
    #: ``memory_limit`` is enforced for each task on its own.
    enforces_memory_limit: bool = False
    #: Each task has its worker process to itself while it runs, so process-wide
    #: measurements (peak RSS) are the task's own.
    isolates_tasks: bool = False
    #: The backend gives the signing key to its workers privately (so a random key
    #: per executor works without configuration).
    ships_key_privately: bool = False

    @abc.abstractmethod
    def __init__(self, *, workers: int | None = None, blas_threads: int | None = None,
                 settings: Mapping[str, Any] | None = None, key: bytes | None = None,
                 **options: Any):
        """Start (or attach to) the workers; see "Construction" in the module docs."""

    @property
    @abc.abstractmethod
    def parallelism(self) -> int:
        """How many tasks can run at once (at least 1)."""

    @abc.abstractmethod
    def submit(self, fn_id: str, fn_bytes: bytes,
               tasks: Sequence[tuple[Future, bytes]]) -> None:
        """Start running ``fn(*loads(payload))`` for each ``(future, payload)``.

        Parameters
        ----------
        fn_id : str
            Identifies the function: the same id always comes with the same
            ``fn_bytes`` (the map's job id), so workers cache by it.
        fn_bytes : bytes
            The pickled function, signed when the executor has a key.
        tasks : sequence of (Future, bytes)
            Each future with its task's pickled (and signed) argument tuple.

        Raises
        ------
        ExecutorShutdownError
            After :meth:`shutdown`.
        ExecutorBrokenError
            If the backend's machinery failed earlier.
        """

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers and release every thread, process and descriptor.

        With ``wait``, tasks already submitted finish first; without, they fail
        with ``ExecutorShutdownError``. Idempotent.
        """

    def abandon(self, future: Future) -> None:  # noqa: B027 - optional, not abstract
        """The caller gave up on ``future``'s running copy (PyWren's cancel of a running
        call; the future has already failed): stop it if that is cheap and safe, so
        it frees its worker. Default: nothing (the copy runs to its end, and its
        report is ignored). Must not block, and must not fail other tasks."""

    def check_store(self, store: Store) -> None:  # noqa: B027 - optional, not abstract
        """Raise :class:`~shardwren.errors.StoreNotSharedError` if the workers cannot
        reach ``store`` (default: they can)."""

    def check_limits(self, limits: Mapping[str, Any]) -> None:
        """Refuse, before anything runs, limits this backend cannot enforce.

        Parameters
        ----------
        limits : mapping
            ``timeout`` and ``memory_limit`` of a map, already validated.

        Raises
        ------
        ConfigError
            Naming the limit, why, and what to do instead.
        """
        if limits.get("memory_limit") and not self.enforces_memory_limit:
            raise ConfigError(
                f"memory_limit cannot be enforced per task on the {self.name} backend: its "
                "tasks share a process; drop memory_limit or use a backend that isolates tasks")


# name -> (module, class, the optional library it needs or None). Imported only when
# asked for, so a missing optional dependency costs nothing until it is needed
# (fsspec's registry); shardwren._optional.INSTALL says which pip extra brings it.
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "local": ("shardwren.backends.local", "LocalBackend", None),
    "dask": ("shardwren.backends.dask", "DaskBackend", "distributed"),
    "inprocess": ("shardwren.backends.inprocess", "InProcessBackend", None),
    "lithops": ("shardwren.backends.lithops", "LithopsBackend", "lithops"),
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
    found: type[Backend] = getattr(
        require(module, f"backend {name!r}", needs, BackendNotInstalledError), cls)
    return found
