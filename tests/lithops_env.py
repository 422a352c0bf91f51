"""Lithops set-up shared by the tests and the benchmark: a private temp dir and a fast
localhost configuration."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

#: Lithops' localhost backend, local storage, statuses looked at often.
LOCALHOST = {"lithops": {"backend": "localhost", "storage": "localhost",
                         "monitoring_interval": 0.1}}


def private_tmpdir() -> str:
    """Give this process its own TMPDIR for Lithops (call before importing lithops).

    Two Lithops drivers sharing ``$TMPDIR`` race while copying Lithops into
    ``$TMPDIR/lithops-root`` (``ModuleNotFoundError: lithops.worker.invoker``, then a
    hang), and other engineers' test runs share /tmp. Lithops fixes its temp dir when
    it is imported; its localhost runner inherits TMPDIR from this process.
    """
    current = os.environ.get("SHARDWREN_LITHOPS_TMPDIR")
    if current and os.path.isdir(current):
        return current
    path = tempfile.mkdtemp(prefix="shardwren-lithops-")
    os.environ["SHARDWREN_LITHOPS_TMPDIR"] = os.environ["TMPDIR"] = path
    saved, tempfile.tempdir = tempfile.tempdir, path
    try:
        import lithops.constants  # noqa: F401 - fixes its TEMP_DIR now, under `path`
    finally:
        tempfile.tempdir = saved
    atexit.register(shutil.rmtree, path, True)
    # The functions import the tests' helper modules by name, as a runtime would have
    # the user's code installed; the localhost runner inherits this environment.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return path
