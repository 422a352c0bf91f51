"""PyWren compatibility: ``from shardwren import pywren`` runs PyWren code unchanged.

Executors: :func:`default_executor` (the configured backend, ``local`` unless set),
:func:`local_executor` (worker processes on this machine), :func:`dummy_executor`
(threads of this process, for tests) and :func:`lambda_executor` /
:func:`remote_executor` (AWS: the ``lithops`` backend). Each accepts PyWren's
``config=`` (a :func:`wrenconfig.default` dict: ``['s3']['bucket']`` names the store,
``['scheduler']['map_item_limit']`` caps a map) and ``job_max_runtime=`` (seconds a
task may run). Their futures follow PyWren's ``cancel()``: a running call is
abandoned and its ``result()`` raises an error saying it was cancelled.

Also: :func:`wait` (with PyWren's ``THREADPOOL_SIZE``/``WAIT_DUR_SEC``, accepted and
not needed: completion is pushed, not polled), :func:`get_all_results`,
``ALL_COMPLETED``/``ANY_COMPLETED``/``ALWAYS`` (here and in :mod:`.wren`),
:mod:`.wrenconfig`, :mod:`.wrenutil`, :mod:`.runtime` and ``__version__``.
See the README's "From PyWren" table for every call and its differences.
"""

from __future__ import annotations

from . import runtime, wren, wrenconfig, wrenutil
from .wren import (
    ALL_COMPLETED,
    ALWAYS,
    ANY_COMPLETED,
    default_executor,
    dummy_executor,
    get_all_results,
    lambda_executor,
    local_executor,
    remote_executor,
    standalone_executor,
    wait,
)
from .wren import __version__

__all__ = ["ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "__version__", "default_executor",
           "dummy_executor", "get_all_results", "lambda_executor", "local_executor",
           "remote_executor", "runtime", "standalone_executor", "wait", "wren", "wrenconfig",
           "wrenutil"]
