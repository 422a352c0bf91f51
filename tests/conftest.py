"""Shared fixtures: real moto S3 server on 127.0.0.1, stores, executors."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

import shardwren

try:  # property-based tests: reproducible by default, `HYPOTHESIS_PROFILE=thorough` digs deeper
    from hypothesis import HealthCheck, settings

    _quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    settings.register_profile("default", deadline=None, max_examples=40, derandomize=True,
                              suppress_health_check=_quiet)
    settings.register_profile("thorough", deadline=None, max_examples=500,
                              suppress_health_check=_quiet)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:
    pass


# tools/ (the chaos suite, a Dask cluster of processes) is importable from the tests.
sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))

from dask_cluster import free_port  # noqa: E402


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server over real HTTP on loopback; yields its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # The standard AWS variables, exactly as a user would set them for any S3 service;
    # workers inherit them.
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3_url(s3_endpoint):
    """A fresh bucket on the moto server, as an s3:// store URL."""
    import boto3

    bucket = f"sw-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefix"


@pytest.fixture(params=["file", "memory", "s3"])
def store(request, tmp_path):
    """The same tests against every kind of store."""
    if request.param == "file":
        return shardwren.open_store(f"file://{tmp_path}/store")
    if request.param == "memory":
        return shardwren.open_store(f"memory://t-{uuid.uuid4().hex[:8]}")
    return shardwren.open_store(request.getfixturevalue("s3_url"))


@pytest.fixture(scope="session")
def executor(tmp_path_factory):
    """One local executor shared by the tests that only need a working one."""
    store = f"file://{tmp_path_factory.mktemp('exec-store')}"
    ex = shardwren.default_executor(backend="local", store=store, workers=2, progress=False)
    yield ex
    ex.shutdown()


def _dask_cluster(tmp_path_factory, workers: int, nthreads: int):
    """Start a real `dask scheduler` and ``workers`` `dask worker` processes on 127.0.0.1
    (tools/dask_cluster.py, shared with the chaos suite)."""
    pytest.importorskip("distributed")
    from dask_cluster import Cluster

    cluster = Cluster(workers, tmp_path_factory.mktemp("dask-logs"), nthreads=nthreads,
                      pythonpath=[str(Path(__file__).parent)])
    try:
        yield cluster.address
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def dask_cluster(s3_endpoint, tmp_path_factory):
    """A real `dask scheduler` and two single-threaded `dask worker` processes on 127.0.0.1.

    Workers see the tests folder on their PYTHONPATH (as a cluster would have
    the user's code installed) and the moto S3 endpoint in their environment.
    """
    yield from _dask_cluster(tmp_path_factory, workers=2, nthreads=1)


@pytest.fixture(scope="session")
def dask_cluster_threaded(s3_endpoint, tmp_path_factory):
    """One `dask worker` running four task threads in one process (``--nthreads 4``),
    as clusters commonly do: worker-side caches and per-task state must hold under threads."""
    yield from _dask_cluster(tmp_path_factory, workers=1, nthreads=4)


def _dataset(name: str):
    from shardwren import datasets
    from shardwren.errors import DatasetNotFoundError

    try:
        return datasets.load(name, download=False)
    except DatasetNotFoundError:
        pytest.skip(f"{name} not available: set SHARDWREN_DATA_DIR to a folder holding {name}/")


@pytest.fixture(scope="session")
def mnist():
    """MNIST as (X_train, y_train, X_test, y_test), float32 pixels; skips when absent."""
    return _dataset("mnist")


@pytest.fixture(scope="session")
def fashion_mnist():
    """Fashion-MNIST, like ``mnist``."""
    return _dataset("fashion-mnist")
