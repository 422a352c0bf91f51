"""PyWren compatibility: ``from shardwren import pywren`` runs PyWren tutorial code.

Provides ``default_executor``, ``wait``, ``ALL_COMPLETED``, ``ANY_COMPLETED``,
``ALWAYS``, ``get_all_results`` and ``wrenconfig.default()``.
"""

from __future__ import annotations

from ..executor import default_executor
from ..futures import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, get_all_results, wait
from . import wrenconfig

__all__ = ["ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "default_executor", "get_all_results",
           "wait", "wrenconfig"]
