"""The concurrent.futures half of the promise, checked against CPython's documented
semantics (and, where it helps, against ThreadPoolExecutor itself as the referee)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import subprocess
import sys
import time

import pytest

import shardwren
from shardwren.errors import ExecutorShutdownError, TaskCancelledError


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    e = shardwren.default_executor(store=f"file://{tmp_path_factory.mktemp('cf')}", workers=2,
                                   progress=False)
    yield e
    e.shutdown()


def test_is_a_concurrent_futures_executor(ex):
    assert isinstance(ex, cf.Executor)
    f = ex.submit(divmod, 17, 5)
    assert isinstance(f, cf.Future) and f.result() == (3, 2)
    assert ex.submit(lambda *a, **k: (a, k), 1, 2, x=3).result() == ((1, 2), {"x": 3})
    assert ex.submit(sorted, [3, 1, 2], reverse=True).result() == [3, 2, 1]


def test_concurrent_futures_style_map_is_refused_not_misread(ex):
    from shardwren.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="starmap"):
        ex.map(pow, [1, 2], [3, 4])  # cf's map(fn, *iterables); would have been extra_args
    assert shardwren.get_all_results(ex.starmap(pow, zip([1, 2], [3, 4]))) == [1, 16]


def test_dask_executor_is_a_concurrent_futures_executor(dask_cluster, s3_url):
    with shardwren.default_executor(backend="dask", address=dask_cluster, store=s3_url,
                                    progress=False) as e:
        assert isinstance(e, cf.Executor)
        assert e.submit(divmod, 17, 5).result() == (3, 2)

        async def main():
            return await asyncio.get_running_loop().run_in_executor(e, pow, 3, 2)

        assert asyncio.run(main()) == 9
        slow = e.submit(lambda: (time.sleep(1.0), "done")[1])
        fs = [e.submit(lambda: 1 / 0), slow]
        done, not_done = shardwren.wait(fs, return_when=cf.FIRST_EXCEPTION, timeout=60)
        assert fs[0] in done
        e.shutdown(wait=False)  # slow keeps running and finishes
        assert slow.result(timeout=60) == "done"


def test_submit_keywords_named_like_its_own_parameter(ex):
    # submit(fn, /, *args, **kwargs): a keyword called "fn" reaches the function
    assert ex.submit(lambda fn: fn * 2, fn=21).result() == 42


def test_run_in_executor(ex):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, pow, 2, k) for k in range(5)))

    assert asyncio.run(main()) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("make", ["shardwren", "threads"])
def test_wait_first_exception(make, ex):
    pool = cf.ThreadPoolExecutor(2) if make == "threads" else ex

    def fail_fast(x):
        if x == 0:
            raise ValueError("first")
        time.sleep(x)
        return x

    fs = [pool.submit(fail_fast, x) for x in (0, 5)]
    done, not_done = (cf.wait if make == "threads" else shardwren.wait)(
        fs, return_when=cf.FIRST_EXCEPTION, timeout=30)
    assert fs[0] in done and fs[1] in not_done
    assert isinstance(fs[0].exception(), ValueError)
    ok = [pool.submit(fail_fast, 0.01) for _ in range(3)]
    done, not_done = shardwren.wait(ok, return_when=shardwren.FIRST_EXCEPTION, timeout=30)
    assert len(done) == 3 and not not_done  # no failure: FIRST_EXCEPTION waits for all
    if make == "threads":
        pool.shutdown()


def test_as_completed_timeout(ex):
    fs = [ex.submit(time.sleep, 0.0), ex.submit(time.sleep, 5.0)]
    fs[0].result()
    seen = []
    with pytest.raises(TimeoutError):
        for f in shardwren.as_completed(fs, timeout=0.5):
            seen.append(f)
    assert seen == [fs[0]]  # the finished one first, then the timeout (the other sleeps 5 s)
    while not fs[1].running():
        time.sleep(0.01)
    assert fs[1].cancel() is False  # running: concurrent.futures cannot cancel it


def test_cancel_semantics_are_concurrent_futures_ones(tmp_path):
    e = shardwren.default_executor(store=f"file://{tmp_path}", workers=1, progress=False)
    try:
        running = e.submit(time.sleep, 3.0)
        while not running.running():
            time.sleep(0.01)
        queued = e.submit(time.sleep, 0.0)
        assert running.cancel() is False  # running: not cancelled, finishes normally
        assert queued.cancel() is True and queued.cancelled()
        with pytest.raises(cf.CancelledError):
            queued.result()
        with pytest.raises(TaskCancelledError, match="cancelled before it started"):
            queued.exception()
        assert running.result() is None
    finally:
        e.shutdown()


def test_cancelled_tasks_queued_on_a_worker_never_run(tmp_path):
    """Tasks batched onto a worker stay pending until they start, so cancel() takes them
    back; a task reported cancelled must leave no trace, one not cancelled must run."""
    marks = tmp_path / "ran"
    marks.mkdir()
    e = shardwren.default_executor(store=f"file://{tmp_path / 's'}", workers=1, progress=False)
    try:
        shardwren.get_all_results(e.map(lambda x: x, range(64)))  # tiny tasks: batches follow

        def touch(i):
            time.sleep(0.001)
            open(marks / str(i), "w").close()

        fs = e.map(touch, range(400))
        cancelled = {i for i, f in enumerate(fs) if i % 2 and f.cancel()}
        shardwren.wait(fs, timeout=120)
        ran = {int(p.name) for p in marks.iterdir()}
        assert cancelled, "nothing could be cancelled"
        assert not cancelled & ran, "a task reported cancelled ran"
        assert ran | cancelled == set(range(400)), "a task neither ran nor was cancelled"
        assert all(fs[i].cancelled() for i in cancelled)
        assert all(fs[i].result() is None for i in set(range(400)) - cancelled)
    finally:
        e.shutdown()


def test_every_task_queued_behind_a_running_one_can_be_cancelled(tmp_path):
    """The batch sent to a worker waits behind its first task: each of them can still be
    cancelled, and none of those runs (before the fix, batched tasks were marked running
    when sent and cancel() returned False)."""
    marks = tmp_path / "ran"
    marks.mkdir()
    e = shardwren.default_executor(store=f"file://{tmp_path / 's'}", workers=1, progress=False)
    try:
        shardwren.get_all_results(e.map(lambda x: x, range(64)))  # tiny tasks: batches follow

        def task(i):
            time.sleep(1.0 if i == 0 else 0.0)
            open(marks / str(i), "w").close()

        fs = e.map(task, range(50))
        while not fs[0].running():
            time.sleep(0.001)
        assert [f.cancel() for f in fs[1:]] == [True] * 49
        shardwren.wait(fs, timeout=60)
        assert fs[0].result() is None
        assert sorted(p.name for p in marks.iterdir()) == ["0"]
    finally:
        e.shutdown()


def test_batched_tasks_are_not_reported_running_before_they_start(tmp_path):
    e = shardwren.default_executor(store=f"file://{tmp_path}", workers=1, progress=False)
    try:
        shardwren.get_all_results(e.map(lambda x: x, range(64)))
        fs = e.map(time.sleep, [0.002] * 200)
        running = sum(f.running() for f in fs)
        assert running <= 1  # one worker runs one task at a time
        shardwren.wait(fs)
    finally:
        e.shutdown()


def test_shutdown_without_wait_lets_running_tasks_finish(tmp_path):
    e = shardwren.default_executor(store=f"file://{tmp_path}", workers=1, progress=False)
    f = e.submit(lambda: (time.sleep(1.0), "done")[1])
    while not f.running():
        time.sleep(0.01)
    queued = e.submit(lambda: "also done")
    e.shutdown(wait=False)
    with pytest.raises(ExecutorShutdownError):
        e.submit(len, "x")
    assert f.result(timeout=60) == "done"
    assert queued.result(timeout=60) == "also done"
    e.shutdown()  # idempotent, waits for the release
    assert e.backend.worker_pids() == []


def test_shutdown_cancel_futures(tmp_path):
    e = shardwren.default_executor(store=f"file://{tmp_path}", workers=1, progress=False)
    f = e.submit(time.sleep, 1.0)
    while not f.running():
        time.sleep(0.01)
    queued = [e.submit(time.sleep, 0.0) for _ in range(5)]
    e.shutdown(wait=True, cancel_futures=True)
    assert f.done() and not f.cancelled() and f.exception() is None
    assert all(q.cancelled() for q in queued)


def test_context_manager_waits(tmp_path):
    with shardwren.default_executor(store=f"file://{tmp_path}", workers=1, progress=False) as e:
        f = e.submit(lambda: (time.sleep(0.5), 7)[1])
    assert f.done() and f.result() == 7


def test_lazy_submodules_in_a_fresh_interpreter():
    code = ("import shardwren, sys\n"
            "assert 'shardwren.linalg' not in sys.modules\n"
            "assert callable(shardwren.linalg.knn)\n"
            "assert shardwren.pywren.wrenutil.split_s3_url('s3://b/k') == ('b', 'k')\n"
            "assert 'linalg' in dir(shardwren)\n"
            "try:\n    shardwren.no_such_thing\nexcept AttributeError as e:\n    print('ok', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SHARDWREN_STORE": "memory://lazy"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_task_runtime_imports_neither_executor_nor_storage():
    """A worker that only runs tasks (a Lithops localhost job starts a fresh interpreter
    per job) must not pay for the executor, storage and fsspec: importing them took
    0.17 s of the 0.2 s a job's runner spent before its first call."""
    code = ("import sys\n"
            "from shardwren.backends import runtime, lithops_worker\n"
            "heavy = {'shardwren.executor', 'shardwren.storage', 'fsspec', 'shardwren.linalg'}\n"
            "print(sorted(heavy & set(sys.modules)))\n"
            "import shardwren\n"
            "assert callable(shardwren.default_executor) and shardwren.ALL_COMPLETED\n"
            "from shardwren import get_all_results, Store, ShardedMatrix\n"
            "assert 'shardwren.executor' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_cancelled_queued_tasks_count_as_done_for_as_completed_and_cf_wait(tmp_path):
    """concurrent.futures' wait() and as_completed() count a cancelled future as done only
    once it is CANCELLED_AND_NOTIFIED: a task withdrawn from a worker's queue must be
    notified at once, or as_completed() over it waits for ever (it did)."""
    e = shardwren.default_executor(store=f"file://{tmp_path}", workers=1, progress=False)
    try:
        shardwren.get_all_results(e.map(lambda x: x, range(64)))  # tiny tasks: batches follow
        fs = e.map(time.sleep, [0.5] + [0.0] * 20)
        while not fs[0].running():
            time.sleep(0.001)
        cancelled = [f for f in fs[1:] if f.cancel()]
        assert cancelled
        seen = list(shardwren.as_completed(fs, timeout=60))
        assert len(seen) == len(fs)
        done, not_done = cf.wait(cancelled, timeout=5)
        assert not not_done and all(f.cancelled() for f in cancelled)
    finally:
        e.shutdown()
