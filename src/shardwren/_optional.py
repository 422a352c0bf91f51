"""Optional libraries: imported on first use, or an error naming the pip line that installs them.

Every integration with a library outside the core dependencies goes through
here, so a missing library always fails the same way: a
:class:`~shardwren.errors.MissingDependencyError` (an ``ImportError``) naming the
feature, the library and the ``pip install`` command that brings it. As in
fsspec's protocol registry, nothing is imported before it is needed, so a
core-only install (``pip install shardwren``) pays nothing for what it lacks.

Adding an integration is one line in :data:`INSTALL` (and its extra in pyproject.toml).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

#: Top-level module -> what ``pip install`` needs to bring it: the shardwren extra
#: declared for it in pyproject.toml where there is one.
INSTALL: dict[str, str] = {
    "matplotlib": "shardwren[plot]",
    "pandas": "shardwren[pandas]",
    "s3fs": "shardwren[s3]",
    "distributed": "shardwren[dask]",
    "lithops": "shardwren[lithops]",
    "sklearn": "scikit-learn",
}


def _top(module: str) -> str:
    return module.partition(".")[0]


def install_hint(module: str) -> str:
    """The command that installs ``module`` (a dotted name counts as its top package)."""
    return f"pip install '{INSTALL.get(_top(module), _top(module))}'"


def _not_found(exc: BaseException | None) -> str | None:
    """The module a ModuleNotFoundError in ``exc``'s chain names (fsspec, for one,
    re-raises it as a plain ImportError ``from`` the original)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def missing(feature: str, needs: str, exc: ImportError,
            cls: type[MissingDependencyError] = MissingDependencyError) -> MissingDependencyError:
    """The error for ``feature``, which needs the library ``needs``, when an import failed with ``exc``.

    It tells apart a library that is absent from one that is installed but
    cannot be imported (one of *its* dependencies missing, or a broken build),
    and always gives the ``pip install`` line for ``needs``.
    """
    absent = _not_found(exc)
    if absent is not None and _top(absent) == _top(needs):
        problem = f"{_top(needs)!r}, which is not installed"
    elif absent is not None:
        problem = f"{_top(needs)!r}, which is installed but needs {absent!r}, which is not"
    else:
        problem = f"{_top(needs)!r}, which is installed but failed to import"
    err = cls(f"{feature} needs {problem} ({type(exc).__name__}: {exc}); "
              f"install it with: {install_hint(needs)}")
    err.__cause__ = exc
    return err


def require(module: str, feature: str, needs: str | None = None,
            cls: type[MissingDependencyError] = MissingDependencyError) -> ModuleType:
    """Import ``module`` for ``feature``, or raise an error naming the pip line.

    Parameters
    ----------
    module : str
        Module to import: the optional library itself (``"matplotlib.pyplot"``) or
        shardwren's own module that imports it (``"shardwren.backends.dask"``).
    feature : str
        What needs it, as the subject of a sentence: ``"plot.timeline"``.
    needs : str, optional
        The optional library behind ``module`` when ``module`` is shardwren's own.
    cls : type
        The error class (a :class:`MissingDependencyError`).

    Raises
    ------
    MissingDependencyError
        Naming the library and the ``pip install`` line for it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").startswith("shardwren"):
            raise  # shardwren's own import is broken: not a missing library
        raise missing(feature, needs or module, exc, cls) from exc


def optional(module: str, feature: str) -> ModuleType | None:
    """Import ``module`` if it is installed, else ``None``: for features that degrade without it.

    Only an absent library means ``None``. One that is installed but cannot be
    imported raises :class:`MissingDependencyError`, so the feature never quietly
    behaves as if it were not there.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        absent = _not_found(exc)
        if absent is not None and _top(absent) == _top(module):
            return None
        raise missing(feature, module, exc) from exc
