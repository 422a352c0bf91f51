"""Worker side: a map's function wrapped with what its process must look like while it runs.

PyWren's ``call_async(..., extra_env=)`` sets environment variables for the call and
``map(..., exclude_modules=)`` keeps modules out of the task. Both are per map, so
they travel inside the map's (signed) function bytes as a :class:`TaskEnv`, and every
backend gets them without a change to its contract.

Both change process-wide state (``os.environ``, the import system) while the task
runs and put it back afterwards. Where tasks share a process (Dask worker threads,
the in-process backend), tasks running at the same moment see that state too.
"""

from __future__ import annotations

import importlib.abc
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

# One task at a time changes the process-wide state (save and restore must pair up).
_STATE_LOCK = threading.RLock()


class _Blocker(importlib.abc.MetaPathFinder):
    """Refuses to import the excluded modules (and their submodules)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)

    def excluded(self, fullname: str) -> bool:
        return any(fullname == n or fullname.startswith(n + ".") for n in self.names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if self.excluded(fullname):
            raise ModuleNotFoundError(
                f"module {fullname!r} is excluded from this task (map(..., exclude_modules=...))",
                name=fullname)
        return None


@contextmanager
def _excluded(names: Sequence[str]) -> Iterator[None]:
    if not names:
        yield
        return
    blocker = _Blocker(names)
    with _STATE_LOCK:
        hidden = {k: m for k, m in sys.modules.items() if blocker.excluded(k)}
        for k in hidden:
            del sys.modules[k]
        sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        with _STATE_LOCK:
            try:
                sys.meta_path.remove(blocker)
            except ValueError:
                pass
            sys.modules.update(hidden)


@contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    if not extra:
        yield
        return
    with _STATE_LOCK:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
    try:
        yield
    finally:
        with _STATE_LOCK:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class TaskEnv:
    """``fn`` (pickled) run with ``extra_env`` set and ``exclude_modules`` unimportable.

    The inner function is unpickled inside the task, under the exclusion, so a
    function that needs an excluded module fails with ``ImportError`` as PyWren's
    does when the module is not shipped.
    """

    def __init__(self, fn_bytes: bytes, extra_env: Mapping[str, str] | None = None,
                 exclude_modules: Sequence[str] = ()):
        self.fn_bytes = fn_bytes
        self.extra_env = dict(extra_env or {})
        self.exclude_modules = tuple(exclude_modules)
        self._fn: Callable[..., Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"fn_bytes": self.fn_bytes, "extra_env": self.extra_env,
                "exclude_modules": self.exclude_modules}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fn = None

    def __call__(self, *args: Any) -> Any:
        with _environment(self.extra_env), _excluded(self.exclude_modules):
            fn = self._fn
            if fn is None:
                fn = self._fn = pickle.loads(self.fn_bytes)
            return fn(*args)


class KwCall:
    """``fn(*args, **kwargs)`` as a one-argument task (``Executor.submit``)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = call
        return self.fn(*args, **kwargs)
