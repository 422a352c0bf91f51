"""The Lithops backend on Lithops' own ``localhost`` backend (no cloud), and its S3 path
against moto's server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shardwren
from shardwren.errors import (
    BackendNotInstalledError,
    ConfigError,
    StoreNotSharedError,
    TaskTimeoutError,
    WorkerCrashedError,
)

from executor_conformance import ExecutorConformance

if importlib.util.find_spec("lithops") is None:
    pytest.skip("lithops is not installed (pip install 'shardwren[lithops]')", allow_module_level=True)

from lithops_env import LOCALHOST, private_tmpdir  # noqa: E402 - after the skip

private_tmpdir()  # before anything imports lithops: its temp dir is fixed at import


@pytest.fixture(scope="module")
def lithops_ex(tmp_path_factory):
    store = f"file://{tmp_path_factory.mktemp('lithops-store')}"
    ex = shardwren.default_executor(backend="lithops", store=store, workers=2, progress=False,
                                    lithops_config=LOCALHOST)
    yield ex
    ex.shutdown()


class TestLithopsConformance(ExecutorConformance):
    @pytest.fixture
    def ex(self, lithops_ex):
        return lithops_ex


class MainError(Exception):
    """Defined in the test module, like a class in a user's __main__."""
