"""PyWren's ``pywren.runtime``: what the task runtime is (here: this Python environment).

PyWren's tasks ran in a prebuilt Lambda runtime described by a metadata file in S3.
shardwren's local and Dask workers run the driver's own environment, so the
runtime's description is this interpreter and its installed packages.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any


def version_str(version_info: Any) -> str:
    """``"3.11"`` from a ``sys.version_info``."""
    return f"{version_info[0]}.{version_info[1]}"


def get_runtime_info(runtime_config: Any = None) -> dict[str, Any]:
    """The runtime's Python version and installed packages (``pkg_ver_list``)."""
    pkgs = sorted({(d.metadata["Name"], d.version) for d in metadata.distributions()
                   if d.metadata["Name"]}, key=lambda p: p[0].lower())
    return {"python_ver": version_str(sys.version_info), "pkg_ver_list": pkgs,
            "preinstalls": [name for name, _ in pkgs]}


def runtime_valid(runtime_meta: dict[str, Any]) -> bool:
    """Whether a runtime description matches this interpreter's Python version."""
    return runtime_meta.get("python_ver") == version_str(sys.version_info)
