"""PyWren's ``pywren.wren``: the executor constructors, ``wait`` and its constants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import __version__
from ..errors import ConfigError
from ..executor import Executor
from ..executor import default_executor as _shardwren_executor
from ..futures import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, Future
from ..futures import get_all_results as _get_all_results
from ..futures import wait as _wait
from . import wrenconfig

__all__ = ["ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "__version__", "default_executor",
           "dummy_executor", "get_all_results", "lambda_executor", "local_executor",
           "remote_executor", "standalone_executor", "wait"]


def _executor(backend: str | None, config: Mapping[str, Any] | None,
              job_max_runtime: float | None, **options: Any) -> Executor:
    """A shardwren executor configured from PyWren's arguments."""
    if job_max_runtime is not None:
        options.setdefault("timeout", job_max_runtime)
    limit = None
    if config is not None:
        if not isinstance(config, Mapping):
            raise ConfigError(f"config must be a dict like pywren.wrenconfig.default(), got "
                              f"{type(config).__name__}")
        options = {**wrenconfig.settings_from(config), **options}
        limit = (config.get("scheduler") or {}).get("map_item_limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise ConfigError(f"config['scheduler']['map_item_limit'] must be a whole number "
                              f">= 0, got {limit!r}")
    ex = _shardwren_executor(backend=backend, **options)
    ex.map_item_limit = limit
    ex.abandon_on_cancel = True  # PyWren's cancel(): a running call is abandoned
    return ex


def default_executor(config: Mapping[str, Any] | None = None,
                     job_max_runtime: float | None = None, **options: Any) -> Executor:
    """PyWren's ``default_executor``: the configured backend (``local`` unless set).

    Parameters
    ----------
    config : dict, optional
        As returned by :func:`wrenconfig.default` and edited by the caller.
    job_max_runtime : float, optional
        Seconds a task may run; past it the task fails with TaskTimeoutError ("ran
        out of time"). Default: the ``timeout`` setting (none; PyWren's Lambda had 280).
    **options
        Any :func:`shardwren.default_executor` argument (``backend=``, ``store=``, ...).
    """
    return _executor(options.pop("backend", None), config, job_max_runtime, **options)


def local_executor(config: Mapping[str, Any] | None = None,
                   job_max_runtime: float | None = None, **options: Any) -> Executor:
    """PyWren's ``local_executor``: worker processes on this machine (the local backend)."""
    return _executor("local", config, job_max_runtime, **options)


def dummy_executor(config: Mapping[str, Any] | None = None,
                   job_max_runtime: float | None = None, **options: Any) -> Executor:
    """PyWren's ``dummy_executor``: tasks run in a thread of this process, for tests.

    Tasks start as soon as they are submitted; ``executor.invoker.run_jobs()``
    (PyWren's way to run the queued calls) waits for them, and
    ``run_jobs_threaded()`` returns at once.
    """
    ex = _executor("inprocess", config, job_max_runtime, **options)
    ex.invoker = _Invoker(ex)  # type: ignore[attr-defined]
    return ex


class _Invoker:
    """PyWren's DummyInvoker surface: the calls already run; these wait or return."""

    def __init__(self, ex: Executor):
        self._ex = ex

    def run_jobs(self) -> None:
        """Wait until every call submitted so far has finished."""
        _wait(self._ex._outstanding(), ALL_COMPLETED, progress=False)

    def run_jobs_threaded(self) -> None:
        """Return at once: the calls already run in their own thread."""


def lambda_executor(config: Mapping[str, Any] | None = None,
                    job_max_runtime: float | None = None, **options: Any) -> Executor:
    """PyWren's ``lambda_executor``: AWS Lambda, through the ``lithops`` backend.

    Raises
    ------
    ConfigError
        If no ``lithops`` backend is registered in this installation (it names
        what to use instead).
    MissingDependencyError
        If the backend exists but the ``lithops`` library is not installed.
    """
    from ..backends.base import _REGISTRY

    if "lithops" not in _REGISTRY:
        raise ConfigError(
            "PyWren's lambda_executor runs tasks on AWS Lambda, which shardwren reaches through "
            "its serverless backend, backend=\"lithops\" (pip install 'shardwren[lithops]' and "
            "default_executor(backend=\"lithops\")); this installation has no such backend. "
            "For this machine use pywren.local_executor() or pywren.default_executor()")
    return _executor("lithops", config, job_max_runtime, **options)


def remote_executor(config: Mapping[str, Any] | None = None,
                    job_max_runtime: float | None = None, **options: Any) -> Executor:
    """PyWren's ``remote_executor`` (EC2 "standalone" workers fed from SQS): use the
    ``dask`` backend on your own machines, or ``lithops`` for serverless."""
    raise ConfigError(
        "PyWren's remote_executor (standalone EC2 workers fed by SQS) has no shardwren "
        "equivalent of its own: run a Dask cluster on the machines and use "
        "pywren.default_executor(backend=\"dask\", address=...), or backend=\"lithops\" for "
        "serverless")


standalone_executor = remote_executor


def wait(fs: Sequence[Future], return_when: Any = ALL_COMPLETED, THREADPOOL_SIZE: int = 64,  # noqa: N803
         WAIT_DUR_SEC: float = 5, timeout: float | None = None,  # noqa: N803
         progress: bool | None = None) -> tuple[list[Future], list[Future]]:
    """PyWren's ``wait``: ``(done, not_done)``.

    ``THREADPOOL_SIZE`` and ``WAIT_DUR_SEC`` (PyWren's polling of S3) are accepted
    and unused: completion is pushed to the futures, so nothing polls.
    """
    return _wait(fs, return_when, timeout=timeout, progress=progress)


def get_all_results(fs: Sequence[Future]) -> list[Any]:
    """PyWren's ``get_all_results``: every result in order; the first failure raises."""
    return _get_all_results(fs)
