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
#: Never retried, even when listed in retry_on: running again cannot help.
FINAL: tuple[type[BaseException], ...] = (TaskMemoryError,)


def label(exc: BaseException) -> str:
    """Short label of a failure for stats and summaries."""
    if isinstance(exc, WorkerCrashedError):
        return "crashed"
    if isinstance(exc, TaskTimeoutError):
        return "timeout"
    if isinstance(exc, TaskMemoryError):
        return "memory"
    if isinstance(exc, ConnectionError):
        return "storage"
    return "error"


def should_retry(exc: BaseException, attempt: int, retries: int,
                 retry_on: Sequence[type[BaseException]] = ()) -> bool:
    """Whether a task that failed with ``exc`` on attempt ``attempt`` (1-based) runs again."""
    if attempt > retries or isinstance(exc, FINAL):
        return False
    return isinstance(exc, RETRYABLE + tuple(retry_on))


def backoff(attempt: int, base: float = 0.05, factor: float = 2.0, cap: float = 5.0) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``base * factor**(attempt - 1)``, capped."""
    return min(cap, base * factor ** max(0, attempt - 1))
