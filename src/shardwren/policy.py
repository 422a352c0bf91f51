"""The failure policy, as pure functions of plain data (tested without processes).

One policy for every backend, applied by the executor: a task that fails for a
reason outside its own code (its worker died, it timed out, the store had a
transient error) is run again after an exponential backoff, up to ``retries``
times; the task's own exceptions are final unless ``retry_on`` names them.
"""

from __future__ import annotations

from typing import Sequence

from .errors import TaskMemoryError, TaskTimeoutError, WorkerCrashedError

#: Failures that are not the task's own doing, so a second run can succeed.
RETRYABLE: tuple[type[BaseException], ...] = (WorkerCrashedError, TaskTimeoutError,
                                              ConnectionError)
#: Network failures of object-store clients that are not builtin ConnectionErrors,
#: as (module, class name) anywhere in an exception's MRO: matched by name so that
#: the policy needs neither library installed.
TRANSIENT_NETWORK: frozenset[tuple[str, str]] = frozenset({
    ("botocore.exceptions", "ConnectionError"),      # endpoint unreachable, connect timeout
    ("botocore.exceptions", "HTTPClientError"),      # connection closed, read timeout
    ("aiohttp.client_exceptions", "ClientConnectionError"),  # server disconnected, ...
    ("aiohttp.client_exceptions", "ClientPayloadError"),     # body cut short
})
#: Never retried, even when listed in retry_on: running again cannot help.
FINAL: tuple[type[BaseException], ...] = (TaskMemoryError,)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a network failure
    (s3fs, for one, re-raises botocore's errors as OSError)."""
    cur: BaseException | None = exc
    seen = 0
    while cur is not None and seen < 8:
        if isinstance(cur, ConnectionError) or any(
                (k.__module__, k.__name__) in TRANSIENT_NETWORK for k in type(cur).__mro__):
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


def label(exc: BaseException) -> str:
    """Short label of a failure for stats and summaries."""
    if isinstance(exc, WorkerCrashedError):
        return "crashed"
    if isinstance(exc, TaskTimeoutError):
        return "timeout"
    if isinstance(exc, TaskMemoryError):
        return "memory"
    if is_transient(exc):
        return "storage"
    return "error"


def should_retry(exc: BaseException, attempt: int, retries: int,
                 retry_on: Sequence[type[BaseException]] = ()) -> bool:
    """Whether a task that failed with ``exc`` on attempt ``attempt`` (1-based) runs again."""
    if attempt > retries or isinstance(exc, FINAL):
        return False
    return isinstance(exc, RETRYABLE + tuple(retry_on)) or is_transient(exc)


def backup_candidates(now: float, running: Sequence[tuple[int, float]],
                      finished_durations: Sequence[float], total: int,
                      already: Sequence[int] = (), min_done: float = 0.8,
                      slowness: float = 3.0, min_seconds: float = 1.0) -> list[int]:
    """Tasks worth a speculative backup copy (stragglers), as in Cubed.

    Once ``min_done`` of a map's ``total`` tasks have finished, a task running for
    more than ``slowness`` times the median finished duration (and at least
    ``min_seconds``) gets one backup; ``running`` holds (index, start time).
    """
    if total == 0 or len(finished_durations) < min_done * total or not finished_durations:
        return []
    durations = sorted(finished_durations)
    median = durations[len(durations) // 2]
    limit = max(min_seconds, slowness * median)
    skip = set(already)
    return [i for i, started in running if i not in skip and now - started > limit]


def backoff(attempt: int, base: float = 0.05, factor: float = 2.0, cap: float = 5.0) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``base * factor**(attempt - 1)``, capped."""
    return min(cap, base * factor ** max(0, attempt - 1))
