"""Shared executors for the scikit-learn estimators (driver side).

An estimator's parameters must clone, deep-copy and pickle; a live
:class:`~shardwren.Executor` cannot (it holds locks, threads and worker
processes). So an estimator's ``executor`` parameter is usually a *description*
of where to run (``None``, a backend name, or a dict of
:func:`~shardwren.default_executor` settings), and this module maps each distinct
description to one executor shared by every estimator in the process, as loky's
reusable executor does for joblib:

* started on first use (tiny problems never start one: the estimators compute
  them in-process);
* held by a :class:`Lease` per fitted estimator that needs it; the estimator's
  finalizer (``weakref.finalize``) returns the lease when the estimator goes away;
* shut down :data:`LINGER_SECONDS` after the last lease is returned, so that
  ``GridSearchCV``'s clones, fitted one after another, reuse the same workers;
* shut down at interpreter exit in any case.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..executor import Executor, default_executor

#: Seconds a shared executor stays up after its last estimator went away. With
#: 0 it is shut down at once, by whoever returns the last lease.
LINGER_SECONDS = 10.0


def settings_of(spec: None | str | Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`default_executor` keyword arguments a description stands for."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {"backend": spec}
    return dict(spec)


def key_of(spec: None | str | Mapping[str, Any]) -> tuple:
    """A hashable identity for a description: equal settings share one executor."""
    return tuple(sorted((str(k), repr(v)) for k, v in settings_of(spec).items()))


class _Pool:
    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.executor: Executor | None = None
        self.holders = 0
        self.timer: threading.Timer | None = None


# An RLock: a lease can be returned by a finalizer that the garbage collector runs
# in the middle of acquire() on the same thread.
_LOCK = threading.RLock()
_POOLS: dict[tuple, _Pool] = {}
_PID = os.getpid()
_CLOSING = False


def _own_pools() -> dict[tuple, _Pool]:
    """The pools of this process (a forked child does not own its parent's workers)."""
    global _PID
    if os.getpid() != _PID:
        _POOLS.clear()
        _PID = os.getpid()
    return _POOLS


class Lease:
    """One holder's claim on a shared executor; :meth:`release` is idempotent."""

    def __init__(self, key: tuple, settings: dict[str, Any]):
        self.key = key
        self.settings = settings
        self._released = False

    @property
    def executor(self) -> Executor:
        """The shared executor, started again if :func:`shutdown_all` stopped it."""
        with _LOCK:
            if self._released:
                raise RuntimeError("this lease was released")
            pools = _own_pools()
            pool = pools.get(self.key)
            if pool is None:  # forked since: this process starts its own
                pool = pools[self.key] = _Pool(dict(self.settings))
                pool.holders = 1
            if pool.executor is None:
                pool.executor = default_executor(**pool.settings)
            return pool.executor

    def release(self) -> None:
        with _LOCK:
            if self._released:
                return
            self._released = True
        _release(self.key)


def acquire(spec: None | str | Mapping[str, Any]) -> Lease:
    """A lease on the shared executor for ``spec``, starting it if it is not running."""
    key = key_of(spec)
    with _LOCK:
        pools = _own_pools()
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = _Pool(settings_of(spec))
        # Counted first, so that a lease returned meanwhile (by a finalizer) cannot
        # shut down the executor this call is about to hand out.
        pool.holders += 1
        if pool.timer is not None:
            pool.timer.cancel()
            pool.timer = None
        lease = Lease(key, pool.settings)
        try:
            lease.executor  # noqa: B018 - start it now: errors in settings surface here
        except BaseException:
            pool.holders -= 1
            raise
        return lease


def _release(key: tuple) -> None:
    doomed = None
    with _LOCK:
        pool = _own_pools().get(key)
        if pool is None:
            return
        pool.holders -= 1
        if pool.holders > 0 or pool.executor is None or _CLOSING:
            return
        if LINGER_SECONDS <= 0:
            doomed, pool.executor = pool.executor, None
        else:
            pool.timer = threading.Timer(LINGER_SECONDS, _expire, (key, pool))
            pool.timer.daemon = True
            pool.timer.start()
    if doomed is not None:
        doomed.shutdown()


def _expire(key: tuple, pool: _Pool) -> None:
    with _LOCK:
        if _own_pools().get(key) is not pool or pool.holders > 0 or pool.executor is None:
            return
        if pool.timer is not threading.current_thread():
            return  # cancelled and replaced meanwhile
        doomed, pool.executor, pool.timer = pool.executor, None, None
    doomed.shutdown()


def running() -> list[Executor]:
    """The shared executors that are up now (for tests and diagnostics)."""
    with _LOCK:
        return [p.executor for p in _own_pools().values() if p.executor is not None]


def shutdown_all() -> None:
    """Shut down every shared executor now (estimators holding one start it again on
    their next call that needs workers)."""
    with _LOCK:
        doomed = []
        for pool in _own_pools().values():
            if pool.timer is not None:
                pool.timer.cancel()
                pool.timer = None
            if pool.executor is not None:
                doomed.append(pool.executor)
                pool.executor = None
    for ex in doomed:
        ex.shutdown()


def _at_exit() -> None:
    global _CLOSING
    _CLOSING = True
    shutdown_all()


atexit.register(_at_exit)
