"""The local backend's holes from issue 15, each reproduced as a test that fails without its fix.

Faults are injected from outside the code under test wherever possible: by a task doing what an
attacker's task could do in its worker (forge a frame on its socket, hand the driver stats that
cannot be decoded), by killing processes, or by breaking one of the manager's system calls.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import shardwren
from shardwren.errors import (
    ExecutorBrokenError,
    ExecutorShutdownError,
    ResultTransferError,
    TaskTimeoutError,
    WorkerCrashedError,
)


@pytest.fixture
def ex(tmp_path):
    with shardwren.default_executor(workers=2, store=f"file://{tmp_path}/s", progress=False) as e:
        yield e


def test_lone_task_past_its_timeout_is_stopped(ex):
    # Nothing else runs, so no other result ever wakes the manager: a timer must.
    before = set(ex.backend.worker_pids())
    f = ex.map(time.sleep, [30], timeout=1, retries=0)[0]
    exc = f.exception(timeout=60)
    assert isinstance(exc, TaskTimeoutError), exc  # not None after 30 s: it was stopped
    assert "1 s limit" in str(exc) and "task 0" in str(exc)
    assert set(ex.backend.worker_pids()) != before  # its worker was killed and replaced
    assert ex.call_async(lambda x: x + 1, 1).result(timeout=60) == 2


class _Undecodable:
    """Unpickling this in the driver raises MemoryError, as decoding a huge frame can."""

    def __reduce__(self):
        return (_raise_memory_error, ())


def _raise_memory_error():
    raise MemoryError("simulated: no memory to decode this frame")


def _poison_stats(x):
    # Runs in the worker: from now on the worker's result frames carry an object the driver
    # cannot decode (a task can do this; so can a real MemoryError on a large frame).
    from shardwren import _iostats

    _iostats.snapshot = lambda: (_Undecodable(), 0)
    return x


def test_undecodable_result_frame_fails_that_task_named(tmp_path):
    with shardwren.default_executor(workers=1, store=f"file://{tmp_path}", retries=0,
                                    speculation=False) as ex:
        f = ex.call_async(_poison_stats, 7)
        exc = f.exception(timeout=60)
        assert isinstance(exc, ResultTransferError), exc
        assert "task 0 of job" in str(exc) and "MemoryError" in str(exc)
        # the worker was replaced; the executor goes on
        assert shardwren.get_all_results(ex.map(lambda x: x * 2, range(20))) == \
            [x * 2 for x in range(20)]


def _forge_frame(x):
    # A task that writes a result frame for a task that does not exist onto its worker's socket.
    import pickle
    from multiprocessing.connection import Connection

    conn = Connection(os.dup(int(sys.argv[1])))
    conn.send_bytes(pickle.dumps(("done", [(987654321, True, b"forged", {})])))
    conn.close()
    time.sleep(1.0)
    return x


def test_unexpected_frame_kills_that_worker_only(tmp_path):
    with shardwren.default_executor(workers=2, store=f"file://{tmp_path}", retries=0,
                                    speculation=False) as ex:
        fs = ex.map(_forge_frame, [1])
        done, not_done = shardwren.wait(fs, timeout=60)
        assert not not_done, "a future hung after an unexpected frame"
        exc = fs[0].exception()
        assert isinstance(exc, WorkerCrashedError) and "unexpected" in str(exc), exc
        assert "task 0 of job" in str(exc)
        assert shardwren.get_all_results(ex.map(lambda x: x + 1, range(10))) == list(range(1, 11))


def test_dying_manager_fails_every_outstanding_future(tmp_path):
    ex = shardwren.default_executor(workers=2, store=f"file://{tmp_path}", retries=0,
                                    speculation=False)
    try:
        pids = ex.backend.worker_pids()
        fs = ex.map(time.sleep, [0.5] * 8)
        selector = ex.backend._selector
        real = selector.select
        calls = [0]

        def broken_select(timeout=None):
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("injected: the manager's select() failed")
            return real(timeout)

        selector.select = broken_select
        ex.backend._wake()  # make the manager go round its loop now
        done, not_done = shardwren.wait(fs, timeout=60)
        assert not not_done, "futures hung after the manager thread died"
        for f in fs:
            if f.exception() is not None:
                assert isinstance(f.exception(), ExecutorBrokenError)
                assert "injected" in str(f.exception())
        assert any(f.exception() is not None for f in fs)
        with pytest.raises(ExecutorBrokenError, match="injected"):
            ex.map(lambda x: x, [1])
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), "workers outlived a broken executor"
    finally:
        ex.shutdown(wait=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between the two looks
        return False


GIL_DRIVER = textwrap.dedent("""
    import re, sys, time, shardwren
    def backtrack(n):
        # Catastrophic backtracking: the regex engine holds the GIL for minutes, so no
        # Python thread in this worker can run.
        return re.match(r"(a+)+$", "a" * n + "b") is not None
    ex = shardwren.default_executor(workers=1, store=sys.argv[1], progress=False)
    ex.call_async(lambda x: x, 1).result()
    f = ex.call_async(backtrack, 40)
    while not ex.backend.busy_worker_pids():
        time.sleep(0.01)
    time.sleep(0.5)
    print(*ex.backend.worker_pids(), flush=True)
    time.sleep(600)
""")


def test_workers_die_with_a_killed_driver_even_holding_the_gil(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(GIL_DRIVER)
    p = subprocess.Popen([sys.executable, str(script), f"file://{tmp_path}/s"],
                         stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    assert pids
    try:
        p.kill()
        p.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids), "a worker outlived its SIGKILLed driver"
    finally:
        for pid in pids:  # never leave a runaway regex on the machine
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled(count, target, seconds=10.0):
    deadline = time.time() + seconds
    while count() > target and time.time() < deadline:
        time.sleep(0.02)
    return count()


def test_no_fd_or_thread_leak_per_executor(tmp_path):
    def cycle():
        with shardwren.default_executor(workers=1, store=f"file://{tmp_path}/s",
                                        progress=False) as e:
            fs = e.map(lambda x: x, range(6))  # enough tasks to start speculation
            shardwren.get_all_results(fs)

    cycle()  # imports, caches and the first store open happen once
    gc.collect()
    fds, threads = _fds(), threading.active_count()
    for _ in range(30):
        cycle()
    gc.collect()
    assert _settled(_fds, fds) == fds, "file descriptors leaked per executor"
    assert _settled(threading.active_count, threads) == threads, \
        [t.name for t in threading.enumerate()]


def test_futures_are_not_kept_alive_after_the_caller_drops_them(ex):
    fs = ex.map(lambda x: x * 2, range(12))
    assert shardwren.get_all_results(fs) == [x * 2 for x in range(12)]
    refs = [weakref.ref(f) for f in fs]
    job = fs[0].job_id
    del fs
    deadline = time.time() + 10
    while time.time() < deadline and any(r() is not None for r in refs):
        gc.collect()
        time.sleep(0.05)
    alive = [r() for r in refs if r() is not None]
    assert not alive, [gc.get_referrers(f) for f in alive[:1]]
    # the records outlive the futures
    recs = ex.job_records(job)
    assert [r["index"] for r in recs] == list(range(12))
    assert all(r["outcome"] == "ok" and r["peak_rss"] > 0 for r in recs)


def test_history_is_bounded_and_records_are_found_by_job_id(ex):
    ex.history.max_tasks = 50
    jobs = []
    for n in (30, 30, 30, 5):
        fs = ex.map(lambda x: x, range(n))
        shardwren.wait(fs)
        jobs.append(fs[0].job_id)
    deadline = time.time() + 10
    while time.time() < deadline and not all(ex.history.get(j).summary for j in jobs):
        time.sleep(0.02)
    kept = sum(len(h.records) for h in ex.history)
    assert kept <= 50 + 5
    # the newest jobs keep their records; older ones keep a summary
    assert len(ex.job_records(jobs[-1])) == 5 and len(ex.job_records(jobs[-2])) == 30
    assert ex.history.get(jobs[0]).records == [] and ex.history.get(jobs[0]).summary["tasks"] == 30
    assert ex.history.get(jobs[0]).summary["max_peak_rss"] > 0
    with pytest.raises(KeyError, match="no-such-job"):
        ex.job_records("no-such-job")


def test_terminate_fails_scheduled_retries(tmp_path):
    ex = shardwren.default_executor(workers=1, store=f"file://{tmp_path}", retries=5)
    f = ex.call_async(lambda x: os.kill(os.getpid(), signal.SIGKILL), 0)
    deadline = time.time() + 30
    while f.stats.get("attempt", 1) < 2 and time.time() < deadline:
        time.sleep(0.01)
    ex.terminate()
    assert isinstance(f.exception(timeout=30), (ExecutorShutdownError, WorkerCrashedError))



def test_a_stopped_worker_is_killed_at_the_task_deadline(ex):
    f = ex.map(time.sleep, [30], timeout=1, retries=0)[0]
    deadline = time.time() + 60
    while not ex.backend.busy_worker_pids() and time.time() < deadline:
        time.sleep(0.01)
    pid = ex.backend.busy_worker_pids()[0]
    os.kill(pid, signal.SIGSTOP)  # a hung worker: it will never report anything
    exc = f.exception(timeout=60)
    assert isinstance(exc, TaskTimeoutError) and "killed and replaced" in str(exc), exc
    assert not _alive(pid)
