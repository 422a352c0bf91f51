"""The failure policy as pure functions, with plain data."""

from __future__ import annotations

import pytest

from shardwren import policy
from shardwren.errors import TaskMemoryError, TaskTimeoutError, WorkerCrashedError


@pytest.mark.parametrize("exc,attempt,retries,retry_on,expected", [
    (WorkerCrashedError("x"), 1, 2, (), True),
    (WorkerCrashedError("x"), 2, 2, (), True),
    (WorkerCrashedError("x"), 3, 2, (), False),     # retries used up
    (TaskTimeoutError("x"), 1, 2, (), True),
    (ConnectionResetError("x"), 1, 2, (), True),   # transient storage error
    (ValueError("x"), 1, 2, (), False),             # the task's own error
    (ValueError("x"), 1, 2, (ValueError,), True),   # ... unless asked
    (TaskMemoryError("x"), 1, 2, (MemoryError,), False),  # never: it would fail again
    (WorkerCrashedError("x"), 1, 0, (), False),
])
def test_should_retry(exc, attempt, retries, retry_on, expected):
    assert policy.should_retry(exc, attempt, retries, retry_on) is expected


def test_backoff_grows_and_is_capped():
    delays = [policy.backoff(a) for a in range(1, 12)]
    assert delays[0] == 0.05 and delays[1] == 0.1 and delays[2] == 0.2
    assert all(b >= a for a, b in zip(delays, delays[1:])) and max(delays) == 5.0


def test_labels():
    assert [policy.label(e) for e in (WorkerCrashedError("a"), TaskTimeoutError("b"),
                                      TaskMemoryError("c"), ConnectionError("d"), KeyError("e"))] \
        == ["crashed", "timeout", "memory", "storage", "error"]
