"""PyWren's API, from what PyWren documents (its README, docstrings and wren.py), on
the local, in-process and Dask backends. PyWren's own suite is run against
``shardwren.pywren`` separately (see the #17 report); these are our own tests."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

import shardwren
from shardwren import pywren
from shardwren.errors import (
    ConfigError,
    ResultLostError,
    TaskCancelledError,
    TaskExitError,
    TaskTimeoutError,
)


@pytest.fixture(scope="module")
def pwex(tmp_path_factory):
    ex = pywren.local_executor(store=f"file://{tmp_path_factory.mktemp('pw')}", workers=2,
                               progress=False)
    yield ex
    ex.shutdown()


@pytest.fixture(params=["local", "dask"])
def anyex(request, pwex, s3_url):
    """A PyWren-flavoured executor on the local backend, or on a real Dask cluster."""
    if request.param == "local":
        yield pwex
        return
    address = request.getfixturevalue("dask_cluster")
    ex = pywren.default_executor(backend="dask", address=address, store=s3_url, progress=False)
    yield ex
    ex.shutdown()


def test_module_surface():
    assert pywren.__version__ == shardwren.__version__
    assert (pywren.wren.ALL_COMPLETED, pywren.wren.ANY_COMPLETED, pywren.wren.ALWAYS) == (
        pywren.ALL_COMPLETED, pywren.ANY_COMPLETED, pywren.ALWAYS)
    assert len({pywren.ALL_COMPLETED, pywren.ANY_COMPLETED, pywren.ALWAYS}) == 3
    assert pywren.runtime.version_str(sys.version_info) == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert any(name.lower() == "numpy" for name, _ in pywren.runtime.get_runtime_info()["pkg_ver_list"])


@pytest.mark.parametrize("url,expected", [
    ("s3://bucket_name/and/the/key", ("bucket_name", "and/the/key")),
    ("s3://b", ("b", "")), ("s3://b/", ("b", "")), ("s3://b/k%20x/ü", ("b", "k%20x/ü")),
])
def test_split_s3_url(url, expected):
    assert pywren.wrenutil.split_s3_url(url) == expected


@pytest.mark.parametrize("bad", ["notS3://foo/bar", "S3://foo/bar", "s3:/foo", "s3://", "s3:///key",
                                 "", "file:///tmp/x", None, b"s3://b/k"])
def test_split_s3_url_refuses(bad):
    with pytest.raises(ValueError):
        pywren.wrenutil.split_s3_url(bad)


def test_b64_round_trip():
    data = bytes(range(256))
    assert pywren.wrenutil.b64str_to_bytes(pywren.wrenutil.bytes_to_b64str(data)) == data


def test_lambda_executor_names_the_lithops_backend():
    from shardwren.backends.base import _REGISTRY

    if "lithops" in _REGISTRY:
        pytest.skip("a lithops backend is registered: lambda_executor builds it")
    with pytest.raises(ConfigError, match='backend="lithops"'):
        pywren.lambda_executor()
    with pytest.raises(ConfigError, match="dask"):
        pywren.remote_executor()


def test_config_map_item_limit(tmp_path):
    conf = pywren.wrenconfig.default()
    conf["s3"]["bucket"] = f"file://{tmp_path}"
    conf["scheduler"]["map_item_limit"] = 5
    ex = pywren.default_executor(config=conf, workers=1, progress=False)
    try:
        assert ex.store.url == f"file://{tmp_path}"
        assert pywren.get_all_results(ex.map(lambda x: x + 1, range(5))) == [1, 2, 3, 4, 5]
        with pytest.raises(ValueError, match="map_item_limit"):
            ex.map(lambda x: x, range(6))
    finally:
        ex.shutdown()
    conf["scheduler"]["map_item_limit"] = "many"
    with pytest.raises(ConfigError, match="map_item_limit"):
        pywren.default_executor(config=conf)


def test_config_edits_reach_the_executor(tmp_path):
    conf = pywren.wrenconfig.default()
    conf["shardwren"]["retries"] = 0
    conf["s3"]["bucket"] = f"file://{tmp_path}"
    ex = pywren.dummy_executor(config=conf)
    try:
        assert ex.settings["retries"] == 0 and ex.backend.name == "inprocess"
    finally:
        ex.shutdown()


def test_call_async_map_and_wait(anyex):
    fut = anyex.call_async(np.sum, np.arange(10))
    assert fut.result() == 45
    fs = anyex.map(lambda x: x + 1, np.arange(10))
    done, not_done = pywren.wait(fs, return_when=pywren.wren.ALL_COMPLETED)
    assert len(done) == 10 and not not_done
    assert pywren.wait(fs) == (fs, [])  # twice: nothing is consumed
    assert [f.result() for f in fs] == list(range(1, 11))
    assert anyex.map(lambda x: x, []) == []


def test_wait_any_and_always_accept_pywren_arguments(pwex):
    fs = pwex.map(time.sleep, [0.0, 3.0])
    done, not_done = pywren.wait(fs, return_when=pywren.ANY_COMPLETED, THREADPOOL_SIZE=4,
                                 WAIT_DUR_SEC=1)
    assert fs[0] in done
    done, not_done = pywren.wait(fs, return_when=pywren.ALWAYS)
    assert len(done) + len(not_done) == 2
    pywren.get_all_results(fs)


def test_exceptions_keep_their_type(anyex):
    def boom(_):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        anyex.call_async(boom, None).result()


def test_reduce(anyex):
    fs = anyex.map(lambda x: x + 1, range(10))
    assert anyex.reduce(sum, fs).result() == 55
    bad = anyex.map(lambda x: 1 / x, [1, 0])
    with pytest.raises(ZeroDivisionError):
        anyex.reduce(sum, bad).result()
    assert anyex.reduce(len, []).result() == 0


def test_extra_env_is_seen_by_the_task_only(anyex):
    fut = anyex.call_async(lambda _: dict(os.environ), None,
                           extra_env={"SHARDWREN_TEST_HELLO": "WORLD"})
    assert fut.result()["SHARDWREN_TEST_HELLO"] == "WORLD"
    # and not by the next task of the same worker process
    later = anyex.map(lambda _: os.environ.get("SHARDWREN_TEST_HELLO"), range(4))
    assert pywren.get_all_results(later) == [None] * 4
    with pytest.raises(ValueError, match="extra_env"):
        anyex.call_async(len, "x", extra_env={"A": 1})


def test_pywren_positional_arguments_keep_their_meaning(pwex):
    """PyWren's call_async(func, data, extra_env, extra_meta) and map(func, iterdata,
    extra_env, extra_meta, invoke_pool_threads, data_all_as_one, use_cached_runtime, ...):
    the third positional argument was shardwren's extra_args, so call_async(f, x, env)
    silently called f(x, 'FOO') with FOO unset; PyWren's other keywords were TypeErrors."""
    env = {"SHARDWREN_TEST_PW": "bar"}

    def getenv(_):
        return os.environ.get("SHARDWREN_TEST_PW")

    assert pwex.call_async(getenv, 1, env).result(timeout=60) == "bar"
    assert pwex.call_async(getenv, 1, env, {"tag": "x"}).result(timeout=60) == "bar"
    fs = pwex.map(getenv, [1, 2], env, {"tag": "x"}, 64, True, True, None, None)
    assert pywren.get_all_results(fs) == ["bar", "bar"]
    fs = pwex.map(getenv, [1], extra_env=env, extra_meta={}, invoke_pool_threads=8,
                  data_all_as_one=False, use_cached_runtime=False, overwrite_invoke_args=None)
    assert pywren.get_all_results(fs) == ["bar"]
    assert pwex.reduce(len, fs, env, {"tag": "x"}).result(timeout=60) == 1
    with pytest.raises(ValueError, match="starmap"):  # concurrent.futures' map(fn, xs, ys)
        pwex.map(max, [1, 2], [3, 4])


def test_pywren_result_check_only_and_throw_except(pwex):
    """future.result(check_only=True) and result(throw_except=False) were TypeErrors; PyWren's
    own wait() uses throw_except=False."""
    slow = pwex.call_async(lambda _: (time.sleep(2), 5)[1], None)
    assert slow.result(check_only=True) is None  # not done: None at once
    assert slow.result(timeout=60) == 5
    assert slow.result(check_only=True, storage_handler=object()) == 5  # done: its value
    bad = pwex.call_async(lambda _: 1 / 0, None)
    assert bad.result(timeout=60, throw_except=False) is None
    with pytest.raises(ZeroDivisionError):
        bad.result()
    running = pwex.call_async(lambda _: time.sleep(3), None)
    with pytest.raises(TimeoutError):  # not finished is not a failure of the task
        running.result(timeout=0.1, throw_except=False)
    assert running.result(timeout=60, throw_except=False) is None  # leaves the workers idle


def test_exclude_modules(anyex):
    import shardwren_exclude_probe as probe  # a module of the tests folder (on PYTHONPATH)

    def uses(x):
        return probe.add_one(x)

    assert anyex.map(uses, [1.0])[0].result() == 2.0
    with pytest.raises(ImportError, match="excluded"):
        anyex.map(uses, [1.0], exclude_modules=["shardwren_exclude_probe"])[0].result()
    assert anyex.map(uses, [1.0])[0].result() == 2.0  # put back for the next task


def test_job_max_runtime(tmp_path):
    ex = pywren.local_executor(store=f"file://{tmp_path}", workers=1, job_max_runtime=0.5,
                               retries=0, progress=False)
    try:
        fut = ex.call_async(time.sleep, 30)
        with pytest.raises(TaskTimeoutError, match="out of time"):
            fut.result(timeout=60)
    finally:
        ex.shutdown()


def test_succeeded_errored_and_statuses(anyex):
    fut = anyex.call_async(lambda x: (time.sleep(0.5), x)[1], 3)
    assert not fut.succeeded() and not fut.errored() and fut.run_status is None
    assert fut.result() == 3
    assert fut.succeeded() and not fut.errored()
    assert fut.run_status["outcome"] == "ok" and fut.run_status["host"]
    assert fut.invoke_status["job_id"] == fut.job_id and "submitted" in fut.invoke_status
    bad = anyex.call_async(lambda _: 1 / 0, None)
    with pytest.raises(ZeroDivisionError):
        bad.result()
    assert bad.errored() and not bad.succeeded()


def test_sys_exit_names_the_return_code(anyex):
    fut = anyex.call_async(lambda _: sys.exit(-1), None)
    with pytest.raises(TaskExitError, match="non-zero return code") as info:
        fut.result()
    assert info.value.exitcode == -1
    fine = anyex.call_async(lambda x: x, 1)  # the worker survived
    assert fine.result() == 1


def test_cancel_of_a_running_call_abandons_it(anyex):
    fut = anyex.call_async(time.sleep, 8)
    deadline = time.time() + 30
    while not fut.running() and time.time() < deadline:
        time.sleep(0.01)
    busy = anyex.backend.busy_worker_pids() if anyex.backend.name == "local" else []
    assert fut.cancel()
    with pytest.raises(TaskCancelledError, match="cancelled"):
        fut.result(timeout=5)
    assert fut.errored() and not fut.succeeded()  # it ended with TaskCancelledError
    if busy:  # the local backend frees the worker: it is replaced, not kept busy for 30 s
        deadline = time.time() + 30
        while busy[0] in anyex.backend.worker_pids() and time.time() < deadline:
            time.sleep(0.05)
        assert busy[0] not in anyex.backend.worker_pids()
        assert anyex.call_async(lambda x: x, 5).result(timeout=60) == 5


def test_dummy_executor_runs_in_this_process():
    ex = pywren.dummy_executor(store="memory://pywren-dummy")
    try:
        fs = ex.map(lambda x: (os.getpid(), x * 2), range(4))
        ex.invoker.run_jobs()
        assert all(f.done() for f in fs)
        assert pywren.get_all_results(fs) == [(os.getpid(), x * 2) for x in range(4)]
        blocker = ex.call_async(time.sleep, 1.0)
        queued = ex.call_async(lambda _: 1, None)
        ex.invoker.run_jobs_threaded()
        assert queued.cancel()  # waits behind the running call: really cancelled
        assert blocker.result() is None and queued.cancelled()
        with pytest.raises(TaskCancelledError, match="cancelled"):
            queued.result()
    finally:
        ex.shutdown()


def test_futures_pickle_before_and_after_they_finish(anyex):
    fs = anyex.map(lambda x: (time.sleep(0.3), x + 1)[1], range(4))
    early = pickle.loads(pickle.dumps(fs))  # still running
    assert [f.result(timeout=60) for f in early] == [1, 2, 3, 4]
    late = pickle.loads(pickle.dumps(fs))  # finished: the outcome travels in the pickle
    assert [f.result() for f in late] == [1, 2, 3, 4]
    bad = anyex.call_async(lambda _: 1 / 0, None)
    copy = pickle.loads(pickle.dumps(bad))
    with pytest.raises(ZeroDivisionError):
        copy.result(timeout=60)


FETCH_LATER = """
import pickle, sys
fs = pickle.load(open(sys.argv[1], "rb"))
print(sorted(f.result(timeout=120) for f in fs))
"""


def test_pickled_futures_are_fetched_from_another_process(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    ex = pywren.local_executor(store=store, workers=2, progress=False)
    try:
        fs = ex.map(lambda x: (time.sleep(1.0), x * x)[1], range(3))
        path = tmp_path / "futures.pkl"
        path.write_bytes(pickle.dumps(fs))
        out = subprocess.run([sys.executable, "-c", FETCH_LATER, str(path)], capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[0, 1, 4]"
    finally:
        ex.shutdown()


def test_a_pickled_future_whose_driver_died_fails_instead_of_hanging(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    driver = (
        "import pickle, sys, time\n"
        "from shardwren import pywren\n"
        f"ex = pywren.local_executor(store={store!r}, workers=1, progress=False)\n"
        "f = ex.call_async(time.sleep, 60)\n"
        "sys.stdout.buffer.write(pickle.dumps(f)); sys.stdout.flush()\n"
        "import os; os._exit(9)  # the driver dies: nothing will write the outcome\n"
    )
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, timeout=120)
    fut = pickle.loads(out.stdout)
    with pytest.raises(ResultLostError, match="never report"):
        fut.result(timeout=60)


def test_outcome_records_of_two_tasks_cannot_be_swapped(tmp_path):
    """Records were signed with a key per job: task 1's record copied over task 0's
    made task 0 return task 1's value."""
    from shardwren.errors import PayloadSignatureError
    from shardwren.executor import RESULTS_PREFIX

    ex = pywren.local_executor(store=f"file://{tmp_path}", workers=2, progress=False)
    try:
        fs = ex.map(lambda x: (time.sleep(0.5), x)[1], [0, 1])
        blob = pickle.dumps(fs)
        pywren.get_all_results(fs)
        keys = [f"{RESULTS_PREFIX}/{f.job_id}/{f.index}" for f in fs]
        deadline = time.time() + 10
        while not all(ex.store.exists(k) for k in keys) and time.time() < deadline:
            time.sleep(0.05)
        a, b = (ex.store.get(k) for k in keys)
        ex.store.put(keys[0], b)
        ex.store.put(keys[1], a)
        for f in pickle.loads(blob):
            with pytest.raises(PayloadSignatureError, match=f"task {f.index} of job"):
                f.result(timeout=30)
    finally:
        ex.shutdown()


def test_outcome_in_store_is_signed(tmp_path):
    from shardwren.errors import PayloadSignatureError
    from shardwren.executor import RESULTS_PREFIX

    ex = pywren.local_executor(store=f"file://{tmp_path}", workers=1, progress=False)
    try:
        f = ex.call_async(lambda _: (time.sleep(0.5), 1)[1], None)
        blob = pickle.dumps(f)
        f.result()
        key = f"{RESULTS_PREFIX}/{f.job_id}/{f.index}"
        deadline = time.time() + 10
        while not ex.store.exists(key) and time.time() < deadline:
            time.sleep(0.05)
        data = bytearray(ex.store.get(key))
        data[-1] ^= 1  # altered in the store
        ex.store.put(key, bytes(data))
        with pytest.raises(PayloadSignatureError):
            pickle.loads(blob).result(timeout=30)
    finally:
        ex.shutdown()
