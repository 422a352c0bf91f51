"""Behaviour every backend must have. Test modules bind `ex` to a backend's executor."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import shardwren
from shardwren.errors import (
    NotIterableError,
    ResultUnpicklingError,
    UnpicklableArgumentError,
    UnpicklableFunctionError,
    UnpicklableResultError,
)


class CustomError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.code = code


def _raise_custom(x):
    raise CustomError(f"bad input {x}", code=x)


class ExecutorConformance:
    """Subclass and provide an `ex` fixture."""

    def test_map_results_in_order(self, ex):
        fs = ex.map(lambda x: x * x, range(50))
        assert shardwren.get_all_results(fs) == [x * x for x in range(50)]
        assert [f.index for f in fs] == list(range(50))

    def test_tutorial_section_1(self, ex):
        def my_function(b):
            x = np.random.normal(0, b, 1024)
            A = np.random.normal(0, b, (1024, 1024))
            return np.dot(A, x)

        res = ex.map(my_function, np.linspace(0.1, 10, 20))
        done, not_done = shardwren.wait(res)
        assert len(done) == 20 and not not_done
        assert all(f.result().shape == (1024,) for f in res)

    def test_closure_extra_args_starmap_call_async(self, ex):
        offset = 100
        assert ex.map(lambda x, a, b: x + a + b + offset, [1, 2], extra_args=(10, 20))[1].result() == 132
        assert [f.result() for f in ex.starmap(lambda a, b: a * b, [(2, 3), (4, 5)])] == [6, 20]
        assert ex.call_async(lambda d: d["k"] + offset, {"k": 1}).result() == 101

    def test_map_reduce(self, ex):
        f = ex.map_reduce(lambda x: x * 2, range(10), lambda results: sum(results))
        assert f.result(timeout=60) == 90

    def test_map_reduce_map_failure_propagates(self, ex):
        f = ex.map_reduce(_raise_custom, [7], sum)
        with pytest.raises(CustomError):
            f.result(timeout=60)

    def test_custom_exception_type_and_remote_traceback(self, ex):
        f = ex.call_async(_raise_custom, 42)
        with pytest.raises(CustomError) as info:
            f.result()
        assert info.value.code == 42
        assert isinstance(info.value.__cause__, shardwren.errors.RemoteTraceback)
        assert "_raise_custom" in str(info.value.__cause__)
        assert isinstance(f.exception(), CustomError)

    def test_numpy_arrays_round_trip(self, ex):
        a = np.arange(300_000, dtype=np.float32).reshape(600, 500)
        out = ex.call_async(lambda m: m.T @ m, a).result()
        np.testing.assert_allclose(out, a.T @ a, rtol=1e-5)

    def test_three_concurrent_maps_do_not_mix(self, ex):
        results = {}

        def run(tag):
            fs = ex.map(lambda x, t=tag: (t, x), range(40))
            results[tag] = [f.result() for f in fs]

        threads = [threading.Thread(target=run, args=(t,)) for t in "abc"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for tag in "abc":
            assert results[tag] == [(tag, x) for x in range(40)]

    def test_interleaved_maps_from_one_thread(self, ex):
        fa = ex.map(lambda x: ("a", x), range(30))
        fb = ex.map(lambda x: ("b", x), range(30))
        fc = ex.map(lambda x: ("c", x), range(30))
        for tag, fs in zip("abc", (fa, fb, fc)):
            assert [f.result() for f in fs] == [(tag, x) for x in range(30)]
        assert len({fa[0].job_id, fb[0].job_id, fc[0].job_id}) == 3

    def test_wait_return_when(self, ex, tmp_path):
        # The second task finishes only once the test lets it (a file appears). The first
        # is done before the second is submitted: a backend may run both on one worker,
        # one after the other (Dask did), so nothing here assumes they run side by side.
        go = str(tmp_path / "go")

        def task(wait_for):
            deadline = time.time() + 120
            while wait_for and not os.path.exists(wait_for) and time.time() < deadline:
                time.sleep(0.02)
            return wait_for

        first = ex.map(task, [""])[0]
        first.result(timeout=120)
        fs = [first, ex.map(task, [go])[0]]
        done, not_done = shardwren.wait(fs, return_when=shardwren.ALWAYS)
        assert done == [fs[0]] and not_done == [fs[1]]
        done, not_done = shardwren.wait(fs, return_when=shardwren.ANY_COMPLETED)
        assert fs[0] in done and fs[1] in not_done, [
            (f.done(), f.exception(0) if f.done() else None, f.stats) for f in fs]
        open(go, "w").close()
        done, not_done = shardwren.wait(fs, return_when=shardwren.ALL_COMPLETED)
        assert len(done) == 2 and not not_done
        assert fs[1].result() == go

    def test_wait_timeout_returns_split(self, ex):
        fs = ex.map(lambda s: time.sleep(s), [2.0])
        done, not_done = shardwren.wait(fs, timeout=0.1)
        assert not done and not_done == fs
        fs[0].result()

    def test_result_timeout_expires_then_succeeds(self, ex):
        f = ex.call_async(lambda s: time.sleep(s) or "late", 1.5)
        with pytest.raises(TimeoutError, match="did not finish within 0.1"):
            f.result(timeout=0.1)
        assert f.result(timeout=60) == "late"

    def test_as_completed(self, ex):
        fs = ex.map(lambda s: time.sleep(s) or s, [1.0, 0.0])
        order = [f.result() for f in shardwren.as_completed(fs)]
        assert sorted(order) == [0.0, 1.0]

    def test_add_done_callback_and_stats(self, ex):
        seen = []
        event = threading.Event()
        f = ex.call_async(lambda x: x + 1, 1)
        f.add_done_callback(lambda fut: (seen.append(fut.result()), event.set()))
        assert event.wait(30) and seen == [2]
        s = f.stats
        assert s["submitted"] <= s["started"] <= s["finished"]
        assert s["pid"] > 0 and "worker" in s and s["host"]
        if ex.backend.isolates_tasks:
            assert s["peak_rss"] > 10_000_000
        else:  # tasks share a process: a per-task peak cannot be measured, so none is claimed
            assert s["peak_rss"] is None

    def test_peak_rss_is_per_task(self, ex):
        if not ex.backend.isolates_tasks:
            pytest.skip("tasks share a process on this backend: peak_rss is None (tested above)")
        big = ex.call_async(lambda n: np.ones(n).sum(), 50_000_000).result(timeout=120)
        assert big == 50_000_000
        fs = ex.map(lambda n: np.ones(n).sum(), [50_000_000, 10])
        shardwren.wait(fs)
        assert fs[0].stats["peak_rss"] > fs[1].stats["peak_rss"] + 300_000_000

    def test_cancel_pending(self, ex):
        fs = ex.map(lambda s: time.sleep(s), [1.0] * (2 * ex.parallelism + 4))
        cancelled = fs[-1].cancel()
        shardwren.wait(fs[:-1])
        if cancelled:
            assert fs[-1].cancelled()
        else:  # already dispatched to a worker: it runs to completion
            fs[-1].result()

    def test_unpicklable_function_names_culprit(self, ex):
        lock = threading.Lock()
        with pytest.raises(UnpicklableFunctionError, match="'lock'"):
            ex.map(lambda x: lock.locked() or x, [1])

    def test_unpicklable_argument(self, ex):
        with pytest.raises(UnpicklableArgumentError, match="lock"):
            ex.map(lambda x: x, [1, threading.Lock()])

    def test_unpicklable_result(self, ex):
        f = ex.call_async(lambda x: threading.Lock(), 1)
        with pytest.raises(UnpicklableResultError, match="lock"):
            f.result()

    def test_not_iterable(self, ex):
        with pytest.raises(NotIterableError, match="int"):
            ex.map(lambda x: x, 5)

    def test_blas_threads_limited_in_workers(self, ex):
        def blas_threads(_):
            from threadpoolctl import threadpool_info

            return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

        counts = ex.call_async(blas_threads, 0).result()
        cores = os.cpu_count() or 1
        assert counts and all(c * ex.parallelism <= max(cores, ex.parallelism) for c in counts)

    def test_records_and_logs_per_task(self, ex):
        def talk(i):
            print(f"hello from {i}")
            return i

        fs = ex.map(talk, range(4))
        shardwren.wait(fs)
        for i, f in enumerate(fs):
            s = f.stats
            assert s["submitted"] <= s["started"] <= s["finished"] and s["attempt"] == 1
            assert s["outcome"] == "ok" and s["bytes_read"] == 0 and s["host"]
            assert f.logs().strip() == f"hello from {i}"

    def test_a_task_may_write_bytes_to_stdout(self, ex):
        """sys.stdout.buffer did not exist inside a task: code writing bytes failed there."""
        import sys

        def raw(i):
            sys.stdout.buffer.write(b"bytes from %d \xff\n" % i)
            sys.stdout.buffer.flush()
            return i

        fs = ex.map(raw, range(2))
        assert shardwren.get_all_results(fs) == [0, 1]
        for i, f in enumerate(fs):
            assert f.logs().strip() == f"bytes from {i} \\xff"

    def test_task_timeout(self, ex):
        from shardwren.errors import TaskTimeoutError

        fs = ex.map(lambda s: time.sleep(s) or s, [60, 0.1, 0.1], timeout=1.5, retries=0)
        with pytest.raises(TaskTimeoutError, match="1.5 s"):
            fs[0].result(timeout=60)
        assert [fs[1].result(timeout=60), fs[2].result(timeout=60)] == [0.1, 0.1]
        assert ex.call_async(lambda x: x, 5).result(timeout=60) == 5  # still working

    def test_memory_limit_fails_only_that_task(self, ex):
        from shardwren.errors import ConfigError, TaskMemoryError

        def alloc(n):
            return float(np.ones(n, dtype=np.uint8).sum())

        if not ex.backend.enforces_memory_limit:  # refused up front, never half-enforced
            with pytest.raises(ConfigError, match="memory_limit"):
                ex.map(alloc, [1000], memory_limit="256MiB")
            return
        fs = ex.map(alloc, [3_000_000_000, 1000], memory_limit="256MiB")
        with pytest.raises(TaskMemoryError, match="256 MiB"):
            fs[0].result(timeout=60)
        assert fs[0].stats["attempt"] == 1  # not retried: it would fail again
        assert fs[1].result(timeout=60) == 1000.0
        assert ex.call_async(alloc, 50_000_000).result(timeout=60) == 5e7  # limit lifted

    def test_lone_task_past_its_timeout(self, ex):
        from shardwren.errors import TaskTimeoutError

        f = ex.map(time.sleep, [30], timeout=1, retries=0)[0]
        assert isinstance(f.exception(timeout=60), TaskTimeoutError)

    def test_logs_kept_apart_while_tasks_run_side_by_side(self, ex):
        def chatty(i):
            import logging
            import sys

            for line in range(5):
                print(f"task {i} line {line}")
                print(f"task {i} err {line}", file=sys.stderr)
                logging.getLogger("chatty").warning("task %d log %d", i, line)
                time.sleep(0.02)
            return i

        fs = ex.map(chatty, range(8))
        assert shardwren.get_all_results(fs) == list(range(8))
        for i, f in enumerate(fs):
            lines = f.logs().splitlines()
            assert sorted(lines) == sorted([f"task {i} line {n}" for n in range(5)]
                                           + [f"task {i} err {n}" for n in range(5)]
                                           + [f"WARNING chatty: task {i} log {n}" for n in range(5)])

    def test_result_that_cannot_be_unpickled_in_the_driver(self, ex):
        def ghost(_):
            import sys
            import types

            module = types.ModuleType("shardwren_ghost_module")
            module.Thing = type("Thing", (), {"__module__": "shardwren_ghost_module"})
            sys.modules["shardwren_ghost_module"] = module
            return module.Thing()

        f = ex.map(ghost, [0, 1])[1]
        with pytest.raises(ResultUnpicklingError, match=f"task 1 of job {f.job_id}.*shardwren_ghost"):
            f.result(timeout=60)
        # concurrent.futures: exception() is None only when result() returns a value
        assert isinstance(f.exception(), ResultUnpicklingError)
        assert f.errored() and not f.succeeded()

    def test_a_type_error_inside_the_callers_generator_is_its_own(self, ex):
        def items():
            yield 1
            raise TypeError("bad item 2")

        with pytest.raises(TypeError, match="bad item 2") as info:
            ex.map(abs, items())
        assert not isinstance(info.value, NotIterableError)
        with pytest.raises(NotIterableError):
            ex.map(abs, 5)

    def test_straggler_is_backed_up(self, ex, tmp_path):
        # The backup must really run (a fresh copy, not the original under another name) and
        # the first copy to finish wins.
        marker = str(tmp_path / "straggler")
        fs = ex.map(_slow_first_time, range(10), extra_args=(marker,))
        assert fs[6].result(timeout=60) == "backup"
        assert fs[6].stats["backups"] == 1
        assert [f.result(timeout=60) for i, f in enumerate(fs) if i != 6] == [0, 1, 2, 3, 4, 5, 7, 8, 9]


def _slow_first_time(i, marker, slow=6, seconds=8.0):
    if i == slow and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(seconds)
        return "original"
    time.sleep(0.3)
    return "backup" if i == slow else i
