"""The worker-side task runtime (``shardwren.backends.runtime``) in this process: what every
worker of every backend runs around a task."""

from __future__ import annotations

import pickle
import resource
import threading
import time

import pytest

from shardwren import serialize
from shardwren.backends import runtime
from shardwren.errors import TaskMemoryError


def _rlimit_data():
    return resource.getrlimit(resource.RLIMIT_DATA)


def test_overlapping_memory_limits_never_leave_the_process_capped():
    # Task A's thread is abandoned past its deadline (Dask) while task B starts, and A ends
    # first: whatever the interleaving, once both are done the process has its own limit back.
    original = _rlimit_data()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def task_a():
        with runtime.limit_memory(256 << 20):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def task_b():
        a_in.wait(10)
        with runtime.limit_memory(512 << 20):
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=task_a), threading.Thread(target=task_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _rlimit_data() == original


def test_a_memory_limit_is_lifted_after_the_task(tmp_path):
    original = _rlimit_data()

    def alloc(n):
        import numpy as np

        return float(np.ones(n, dtype=np.uint8).sum())

    ok, data, _ = runtime.run_task(alloc, pickle.dumps((2_000_000_000,)), memory_limit=128 << 20)
    assert not ok and isinstance(serialize.loads_exception(data), TaskMemoryError)
    assert _rlimit_data() == original
    ok, data, _ = runtime.run_task(alloc, pickle.dumps((1000,)))
    assert ok and pickle.loads(data) == 1000.0


def test_shared_process_reports_no_peak_rss_and_keeps_logs_per_thread():
    results = {}

    def talk(i):
        for n in range(20):
            print(f"{i}:{n}")
            time.sleep(0.001)
        return i

    def run(i):
        results[i] = runtime.run_task(talk, pickle.dumps((i,)), exclusive=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (ok, data, stats) in results.items():
        assert ok and pickle.loads(data) == i
        assert stats["peak_rss"] is None
        assert stats["logs"].splitlines() == [f"{i}:{n}" for n in range(20)]
    ok, _, stats = runtime.run_task(talk, pickle.dumps((9,)))
    assert stats["peak_rss"] > 0


def test_function_cache_is_an_lru_and_keeps_load_errors():
    cache = runtime.FunctionCache(size=2)
    assert cache.load("a", serialize.dumps_function(lambda: "a"))() == "a"
    cache.load("b", serialize.dumps_function(lambda: "b"))
    cache.get("a")
    cache.load("c", serialize.dumps_function(lambda: "c"))  # evicts b, the least recent
    assert "b" not in cache and "a" in cache and "c" in cache
    broken = cache.load("d", b"not a pickle")
    assert isinstance(broken, BaseException)
    missing = cache.get("zzz")
    assert isinstance(missing, BaseException) and "zzz" in str(missing)


def test_install_capture_is_idempotent_under_threads():
    import logging
    import sys

    threads = [threading.Thread(target=runtime.install_capture) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, runtime.TaskLogHandler)]
    assert len(handlers) == 1
    assert not isinstance(getattr(sys.stdout, "original", None), runtime.Router)


@pytest.mark.parametrize("limit", [None, 64 << 20])
def test_run_task_never_raises(limit):
    ok, data, stats = runtime.run_task(ValueError("could not load"), b"", memory_limit=limit)
    assert not ok and isinstance(serialize.loads_exception(data), ValueError)
    assert {"started", "finished", "pid", "host", "peak_rss", "logs"} <= set(stats)


def test_exceptions_survive_a_copyreg_reducer_that_cannot_rebuild_them(monkeypatch):
    # distributed installs tblib's pickling support, which registers a reducer for every
    # exception class; it rebuilds with MemoryError.__new__(TaskMemoryError), which CPython
    # refuses for a class with two builtin bases: the driver then saw a RemoteError.
    import copyreg

    tblib = pytest.importorskip("tblib.pickling_support")
    monkeypatch.setitem(copyreg.dispatch_table, TaskMemoryError, tblib.pickle_exception)
    exc = serialize.loads_exception(serialize.dumps_exception(TaskMemoryError("over the limit")))
    assert type(exc) is TaskMemoryError and str(exc) == "over the limit"
