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


def _pid_then_sleep(path, seconds=30.0):
    """Write this function process's pid and process group, then sleep (to be killed)."""
    if os.path.exists(path):
        return "second run"
    with open(path, "w") as fh:
        fh.write(f"{os.getpid()} {os.getpgid(0)}")
    time.sleep(seconds)
    return "first run"


def _wait_for(path, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and open(path).read().strip():
            pid, pgid = map(int, open(path).read().split())
            return pid, pgid
        time.sleep(0.05)
    raise AssertionError(f"the task never started ({path})")


def _assert_group_gone(pgid, what, within=15.0):
    """The Lithops runner's process group (runner and call processes) ends within seconds."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the Lithops runner's processes outlived {what}")


def test_function_process_killed_mid_task_is_a_crash_and_retried(lithops_ex, tmp_path):
    marker = str(tmp_path / "pid")
    f = lithops_ex.map(_pid_then_sleep, [marker], retries=1)[0]
    pid, _ = _wait_for(marker)
    os.kill(pid, signal.SIGKILL)
    assert f.result(timeout=120) == "second run"
    assert f.stats["attempt"] == 2 and "WorkerCrashedError" in f.stats["failures"][0]


def test_function_process_killed_without_retries(lithops_ex, tmp_path):
    marker = str(tmp_path / "pid")
    f = lithops_ex.map(_pid_then_sleep, [marker], retries=0)[0]
    os.kill(_wait_for(marker)[0], signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        f.result(timeout=120)


def test_killed_localhost_runner_is_noticed(lithops_ex, tmp_path):
    # Lithops only watches the function's own process: with the whole job's process group
    # gone (runner, pool and function), nothing is ever reported by Lithops.
    marker = str(tmp_path / "pid")
    f = lithops_ex.map(_pid_then_sleep, [marker], retries=0)[0]
    _, pgid = _wait_for(marker)
    os.killpg(pgid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="localhost runner of its job exited"):
        f.result(timeout=120)
    assert lithops_ex.call_async(lambda x: x + 1, 1).result(timeout=60) == 2


def test_silent_function_hits_the_drivers_deadline(lithops_ex, tmp_path, monkeypatch):
    # Where no runner process can be watched (the clouds), the driver's own deadline ends
    # a call whose function vanished without a word: runtime timeout plus a margin.
    from shardwren.backends import lithops as backend_module

    be = lithops_ex.backend
    monkeypatch.setattr(backend_module._Lane, "runner", lambda self, job_key: None)
    monkeypatch.setattr(backend_module, "DEADLINE_MARGIN", 1.0)
    monkeypatch.setattr(be, "runtime_timeout", 2.0)
    marker = str(tmp_path / "pid")
    f = lithops_ex.map(_pid_then_sleep, [marker], retries=0)[0]
    _, pgid = _wait_for(marker)
    os.killpg(pgid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="did not report back"):
        f.result(timeout=120)


def test_timeout_is_task_timeout_and_retried(lithops_ex):
    f = lithops_ex.map(time.sleep, [30], timeout=1, retries=1)[0]
    with pytest.raises(TaskTimeoutError, match="1 s limit"):
        f.result(timeout=120)
    assert f.stats["attempt"] == 2 and "TaskTimeoutError" in f.stats["failures"][0]


def test_task_exception_is_final_with_traceback_and_logs(lithops_ex):
    def fails(x):
        print("about to fail")
        raise MainError(f"no {x}")

    f = lithops_ex.map(fails, [7], retries=3)[0]
    with pytest.raises(MainError, match="no 7") as info:
        f.result(timeout=60)
    assert "fails" in str(info.value.__cause__)  # the remote traceback
    assert f.stats["attempt"] == 1 and f.logs().strip() == "about to fail"


_MAIN_SCRIPT = """
import shardwren, sys
from lithops_env import LOCALHOST

class OnlyInMain(Exception):
    pass

def fails(x):
    raise OnlyInMain(f"main {x}")

if __name__ == "__main__":
    with shardwren.default_executor(backend="lithops", store=sys.argv[1], workers=1,
                                    progress=False, lithops_config=LOCALHOST) as ex:
        try:
            ex.call_async(fails, 5).result(timeout=120)
        except OnlyInMain as exc:
            print("caught", type(exc).__module__, type(exc).__name__, exc)
"""


def test_exception_class_defined_in_main_keeps_its_type(tmp_path):
    # Raw Lithops degrades such an exception to Exception; ours travels in shardwren's payload.
    script = tmp_path / "user_script.py"
    script.write_text(_MAIN_SCRIPT)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    env["TMPDIR"] = str(tmp_path)  # its own Lithops temp dir
    out = subprocess.run([sys.executable, str(script), f"file://{tmp_path}/store"], env=env,
                         capture_output=True, text=True, timeout=240)
    assert "caught __main__ OnlyInMain main 5" in out.stdout, out.stdout + out.stderr


def test_runtime_without_shardwren_is_one_clear_error(tmp_path):
    # A Python interpreter that has Lithops' dependencies but cannot import shardwren.
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoShardwren:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'shardwren' or name.startswith('shardwren.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'shardwren'\", name='shardwren')\n"
        "sys.meta_path.insert(0, _NoShardwren())\n")
    runtime = tmp_path / "python-without-shardwren"
    runtime.write_text(f"#!/bin/sh\nPYTHONPATH={blocker} exec {sys.executable} \"$@\"\n")
    runtime.chmod(0o755)
    config = {"lithops": dict(LOCALHOST["lithops"]), "localhost": {"runtime": str(runtime)}}
    with shardwren.default_executor(backend="lithops", store=f"file://{tmp_path}/s", workers=2,
                                    progress=False, lithops_config=config) as ex:
        fs = ex.map(lambda x: x, range(3), retries=2)
        for f in fs:
            with pytest.raises(BackendNotInstalledError, match="lithops runtime build"):
                f.result(timeout=120)
            assert f.stats["attempt"] == 1  # not retried: it cannot succeed
        t = time.time()
        with pytest.raises(BackendNotInstalledError):  # later maps fail at once
            ex.call_async(lambda x: x, 1).result(timeout=60)
        assert time.time() - t < 30


def test_signed_tasks_take_the_secret_from_the_environment(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="SHARDWREN_SECRET"):
        shardwren.default_executor(backend="lithops", store=f"file://{tmp_path}/s",
                                   secret="s3cret", lithops_config=LOCALHOST)
    monkeypatch.setenv("SHARDWREN_SECRET", "s3cret")
    with shardwren.default_executor(backend="lithops", store=f"file://{tmp_path}/s", workers=1,
                                    progress=False, lithops_config=LOCALHOST) as ex:
        assert ex.backend.signed
        assert ex.call_async(lambda x: x * 3, 4).result(timeout=60) == 12


def test_config_file_the_lithops_way(tmp_path, monkeypatch):
    path = tmp_path / "lithops.yaml"
    path.write_text("lithops:\n  backend: localhost\n  storage: localhost\n  monitoring_interval: 0.1\n"
                    "localhost:\n  worker_processes: 1\n")
    monkeypatch.setenv("LITHOPS_CONFIG_FILE", str(path))
    monkeypatch.setenv("SHARDWREN_BACKEND", "lithops")
    with shardwren.default_executor(store=f"file://{tmp_path}/s", progress=False) as ex:
        assert ex.backend.name == "lithops" and ex.parallelism == 1
        assert ex.backend._lanes[0].fexec.config["localhost"]["version"] == 1
        assert ex.call_async(lambda x: -x, 4).result(timeout=60) == -4
    with pytest.raises(ConfigError, match="no such Lithops config file"):
        shardwren.default_executor(backend="lithops", lithops_config=str(tmp_path / "nope.yaml"))


def test_store_rules(lithops_ex, monkeypatch):
    with pytest.raises(StoreNotSharedError, match="s3://"):
        lithops_ex.backend.check_store(shardwren.open_store("memory://lithops-x"))
    lithops_ex.backend.check_store(shardwren.open_store(lithops_ex.store.url))  # localhost: fine
    monkeypatch.setattr(lithops_ex.backend, "local", False)
    monkeypatch.setattr(lithops_ex.backend, "lithops_backend", "aws_lambda")
    with pytest.raises(StoreNotSharedError, match="aws_lambda functions cannot reach"):
        lithops_ex.backend.check_store(shardwren.open_store(lithops_ex.store.url))


def test_mnist_knn_identical_to_local_backend(lithops_ex, executor, mnist):
    from shardwren.linalg import knn

    X, _, Xt, _ = mnist
    train, query = X[:6000], Xt[:1000]
    d1, i1 = knn(train, query, 3, executor=lithops_ex, block_size=1500)
    d2, i2 = knn(train, query, 3, executor=executor, block_size=1500)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def _moto_config(s3_url):
    bucket = s3_url[len("s3://"):].split("/")[0]
    return bucket, {"lithops": {"backend": "localhost", "storage": "aws_s3", "monitoring_interval": 0.1},
                    "aws_s3": {"storage_bucket": bucket, "region": "us-east-1",
                               "access_key_id": "testing", "secret_access_key": "testing"}}


def test_s3_end_to_end_with_lithops_storage_on_moto(s3_endpoint, s3_url):
    # Lithops keeps its jobs, statuses and results in the same S3 server (moto on
    # 127.0.0.1) as shardwren's blocks: the serverless data path, without a cloud.
    import boto3

    from shardwren.matrix import ShardedMatrix

    bucket, config = _moto_config(s3_url)
    with shardwren.default_executor(backend="lithops", store=s3_url, workers=2, progress=False,
                                    lithops_config=config) as ex:
        assert ex.backend.storage_backend == "aws_s3"
        X = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
        m = ShardedMatrix("x", shape=X.shape, shard_sizes=[70, 20], store=s3_url)
        m.shard_matrix(X, executor=ex)  # blocks written by the functions
        np.testing.assert_array_equal(m.numpy(), X)
        sums = shardwren.get_all_results(ex.map(lambda i: float(m.get_block(i, 0).sum()), range(m.grid[0])))
        np.testing.assert_allclose(sum(sums), X.sum(), rtol=1e-4)
        # Lithops' own job data and statuses went through the moto server too.
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.startswith("lithops.jobs/") for k in keys), keys[:20]
    # shutdown deleted Lithops' job data itself (no cleaner process left behind to do it)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if k.startswith("lithops.jobs/")], keys[:20]
    assert any(k.startswith("prefix/") for k in keys)  # shardwren's own data stays


@pytest.mark.slow
def test_knn_on_s3_through_lithops_identical_to_local(s3_endpoint, s3_url):
    from shardwren.linalg import knn

    _, config = _moto_config(s3_url)
    X = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
    Q = X[:40] + 0.01
    with shardwren.default_executor(backend="lithops", store=s3_url, workers=2, progress=False,
                                    lithops_config=config) as ex:
        d1, i1 = knn(X, Q, 2, executor=ex, block_size=100)
    with shardwren.default_executor(backend="local", workers=1, store=s3_url, progress=False) as ex:
        d2, i2 = knn(X, Q, 2, executor=ex, block_size=100)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_terminate_leaves_no_runner(tmp_path):
    # shutdown(wait=False) lets running tasks finish (concurrent.futures); terminate()
    # fails them at once, and must stop the Lithops runner running them.
    marker = str(tmp_path / "pid")
    ex = shardwren.default_executor(backend="lithops", store=f"file://{tmp_path}/s", workers=1,
                                    progress=False, lithops_config=LOCALHOST)
    f = ex.map(_pid_then_sleep, [marker], retries=0)[0]
    _, pgid = _wait_for(marker)
    ex.terminate()
    from shardwren.errors import ExecutorShutdownError

    assert isinstance(f.exception(timeout=30), ExecutorShutdownError)
    _assert_group_gone(pgid, "shutdown")


def test_new_lanes_created_from_several_threads_at_once(tmp_path):
    # Lithops installs its localhost runner through a temp file named after the process:
    # executors created at once in one process collided on it (FileNotFoundError).
    import threading

    for rep in range(4):  # a race: several tries make it show without the fix
        with shardwren.default_executor(backend="lithops", store=f"file://{tmp_path}/s{rep}",
                                        workers=1, progress=False, lithops_config=LOCALHOST) as ex:
            results = {}

            def run(tag):
                results[tag] = shardwren.get_all_results(ex.map(lambda x, t=tag: (t, x), range(3)))

            threads = [threading.Thread(target=run, args=(t,)) for t in "abcdef"]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert results == {t: [(t, x) for x in range(3)] for t in "abcdef"}


def test_job_that_never_starts_is_noticed(tmp_path):
    # Lithops v1 starts queued jobs from a manager thread; if none runs (it exited in a race
    # with the next invocation), the job stays queued for ever and nothing is reported.
    with shardwren.default_executor(backend="lithops", store=f"file://{tmp_path}/s", workers=1,
                                    progress=False, lithops_config=LOCALHOST) as ex:
        handler = ex.backend._lanes[0].fexec.compute_handler
        handler.start_manager = lambda: None
        f = ex.map(lambda x: x, [1], retries=0)[0]
        with pytest.raises(WorkerCrashedError, match="job manager stopped"):
            f.result(timeout=60)


def test_secret_in_lambda_env_vars():
    from shardwren.backends.lithops import _env_var

    # AWS Lambda's env_vars are a list of name/value items (lithops aws_lambda.py).
    assert _env_var([{"name": "A", "value": "1"}, {"name": "SHARDWREN_SECRET", "value": "s"}],
                    "SHARDWREN_SECRET") == "s"
    assert _env_var({"SHARDWREN_SECRET": "t"}, "SHARDWREN_SECRET") == "t"
    assert _env_var({}, "SHARDWREN_SECRET") is None and _env_var(None, "SHARDWREN_SECRET") is None


def test_calls_waiting_for_a_function_are_pending_not_stragglers(lithops_ex):
    """A call waiting for a free function process has not started: it is pending, and
    the executor's straggler watch must not back it up. Before the fix every call was
    marked running when handed to Lithops, so the last calls of a map looked like
    stragglers and got backups (a second Lithops job competing for the same cores)."""
    fs = lithops_ex.map(time.sleep, [0.4] * 16)
    most = 0
    while not all(f.done() for f in fs):
        most = max(most, sum(f.running() for f in fs))
        time.sleep(0.01)
    assert all(f.exception() is None for f in fs)
    assert most < 8, f"{most} of 16 calls reported running on 2 function processes"
    assert not [f.index for f in fs if f.stats.get("backups")], "queued calls were backed up"


def test_job_monitor_forgets_reported_calls(lithops_ex):
    """Lithops' job monitor lists the statuses of every job it tracks at each poll; calls
    already reported must leave it, or every map costs more than the one before (the
    driver's CPU per map grew from 0.1 to 0.8 s over 14 rounds before the fix)."""
    for _ in range(3):
        shardwren.get_all_results(lithops_ex.map(lambda x: x, range(10)))
    time.sleep(0.3)  # a few collector passes
    tracked = [len(lane.fexec.job_monitor.monitor.futures) for lane in lithops_ex.backend._lanes
               if lane.fexec.job_monitor.monitor is not None]
    assert sum(tracked) == 0, tracked


_DRIVER_SCRIPT = """
import sys, time
import shardwren
from lithops_env import LOCALHOST
from test_backend_lithops import _pid_then_sleep

ex = shardwren.default_executor(backend="lithops", store=sys.argv[1], workers=1, progress=False,
                                lithops_config=LOCALHOST)
ex.map(_pid_then_sleep, [sys.argv[2]], retries=0)
time.sleep(600)  # killed by the test meanwhile
"""


def test_runner_dies_with_a_killed_driver(tmp_path):
    """A SIGKILLed driver leaves no Lithops runner or call process running its job: the
    runner watches its parent (before, it ran the job to its end, for nobody)."""
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER_SCRIPT)
    marker = str(tmp_path / "pid")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    env["TMPDIR"] = str(tmp_path)  # its own Lithops temp dir
    env.pop("SHARDWREN_LITHOPS_TMPDIR", None)
    driver = subprocess.Popen([sys.executable, str(script), f"file://{tmp_path}/store", marker],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid, pgid = _wait_for(marker, timeout=120)
        assert pgid != os.getpgrp()
        driver.kill()
        driver.wait(timeout=30)
        _assert_group_gone(pgid, "their killed driver")
    finally:
        if driver.poll() is None:
            driver.kill()
