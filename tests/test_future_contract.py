"""The Future's executor-author API (what backends call), tested without any backend.

The referee is concurrent.futures: a Future here is a ``concurrent.futures.Future`` whose
``set_running_or_notify_cancel`` / ``set_result`` / ``set_exception`` keep their meaning; what
this module adds (copies, retries, lazily decoded payloads) must never leave one pending.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import pickle
import sys
import threading

import pytest

from shardwren.errors import ResultUnpicklingError
from shardwren.futures import Future


def _running(job="j", index=0) -> Future:
    f = Future(job, index)
    assert f.set_running()
    return f


def test_original_and_backup_failing_at_once_never_leave_it_pending():
    # Two copies of one task fail at the same moment, many times over, with the interpreter
    # switching threads as often as it can: one of the two reports must complete the future.
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        pending = 0
        for _ in range(3000):
            f = _running()
            assert f.add_backup()
            barrier = threading.Barrier(2)

            def fail(f=f, barrier=barrier):
                barrier.wait()
                f.set_failure(RuntimeError("both copies failed"))

            threads = [threading.Thread(target=fail) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pending += not f.done()
    finally:
        sys.setswitchinterval(saved)
    assert pending == 0


def test_set_running_on_a_finished_or_cancelled_future_is_false_and_silent(caplog):
    caplog.set_level(logging.DEBUG, logger="concurrent.futures")
    f = _running()
    assert f.set_payload(pickle.dumps(5))
    assert f.set_running() is False  # a late backup: nothing to run, nothing logged
    g = Future("j", 1)
    assert g.cancel()
    assert g.set_running() is False
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f.result() == 5 and g.cancelled()


def test_set_running_is_idempotent_for_retries_and_backups():
    f = _running()
    since = f.stats["running_since"]
    assert f.set_running() and f.stats["running_since"] == since


def test_first_copy_to_finish_wins():
    f = _running()
    assert f.add_backup()
    assert f.set_payload(pickle.dumps("first"), {"worker": 1})
    assert not f.set_payload(pickle.dumps("second"), {"worker": 2})
    assert not f.set_failure(RuntimeError("late"), {"worker": 3})
    assert f.result() == "first" and f.stats["worker"] == 1 and f.stats["outcome"] == "ok"
    assert not f.add_backup()  # done: no more copies


def test_a_failed_copy_waits_for_its_twin():
    f = _running()
    f.add_backup()
    assert not f.set_failure(RuntimeError("original died"))
    assert not f.done()
    assert f.set_payload(pickle.dumps("backup"))
    assert f.result() == "backup"
    f2 = _running()
    f2.add_backup()
    f2.set_failure(RuntimeError("a"))
    assert f2.set_failure(RuntimeError("b")) and isinstance(f2.exception(), RuntimeError)


def test_retry_hook_decides_and_a_declined_retry_fails():
    calls = []

    def hook(fut, exc, stats):
        calls.append((fut, str(exc), stats))
        return len(calls) == 1  # run again once

    f = _running()
    f.set_retry_hook(hook)
    assert not f.set_failure(ConnectionError("hiccup"), {"pid": 1})
    assert not f.done() and calls == [(f, "hiccup", {"pid": 1})]
    assert f.set_failure(ConnectionError("again"), {"pid": 2})
    assert isinstance(f.exception(), ConnectionError) and f.stats["outcome"] == "failed"
    assert f.stats["failure"] == "ConnectionError" and f.stats["pid"] == 2


def test_retry_hook_that_raises_fails_the_future_with_the_task_error():
    def hook(fut, exc, stats):
        raise RuntimeError("hook bug")

    f = _running()
    f.set_retry_hook(hook)
    assert f.set_failure(ValueError("the task's own"))
    assert isinstance(f.exception(), ValueError)


def test_standard_set_result_and_set_exception_still_work():
    f = _running()
    f.set_result([1, 2])
    assert f.result() == [1, 2]
    g = _running()
    g.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        g.result()
    done, _ = cf.wait([f, g])
    assert len(done) == 2


def test_undecodable_payload_names_task_and_job():
    # A class pickled by reference to a module the driver does not have.
    payload = _pickled_from_a_ghost_module()
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(payload)
    f = _running("job-42", 7)
    f.set_payload(payload)
    for _ in range(2):  # the same clear error every time
        with pytest.raises(ResultUnpicklingError, match="task 7 of job job-42") as info:
            f.result()
        assert "ghost_module" in str(info.value)
        assert isinstance(info.value.__cause__, ModuleNotFoundError)
    # exception() is None only when result() returns a value (concurrent.futures' reading):
    # the task succeeded, but its value cannot be had here, which is this future's failure
    assert isinstance(f.exception(), ResultUnpicklingError)
    assert f.errored() and not f.succeeded()


def _pickled_from_a_ghost_module() -> bytes:
    import types

    module = types.ModuleType("ghost_module")
    thing = type("Thing", (), {"__module__": "ghost_module"})
    module.Thing = thing
    sys.modules["ghost_module"] = module
    try:
        return pickle.dumps(thing())
    finally:
        del sys.modules["ghost_module"]


def test_limits_and_stats_are_per_future():
    a, b = Future("j", 0), Future("j", 1)
    a.limits["timeout"] = 3.0
    assert b.limits == {} and a.stats is not b.stats and a.stats["index"] == 0
