"""Driver side: callbacks at given times, from one thread that exists only while needed.

Used by the executor (retry backoff, the straggler watch) and by backends that
keep their own deadlines (Dask, for workers too stopped to report a timeout).
One heap and one daemon thread per owner, started on the first callback and
gone as soon as nothing is scheduled, so an idle or shut-down executor holds no
thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Timer:
    """A scheduled call; :meth:`cancel` it to skip it."""

    __slots__ = ("args", "cancelled", "fn", "seq", "when")

    def __init__(self, when: float, seq: int, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.when, self.seq, self.fn, self.args = when, seq, fn, args
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """Run callbacks after delays, in one on-demand daemon thread named ``name``.

    Callbacks run one at a time, outside the lock; one that raises is logged and
    the others still run.
    """

    def __init__(self, name: str):
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` in ``delay`` seconds; raises RuntimeError once closed."""
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._seq), fn, args)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            heapq.heappush(self._heap, timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif self._heap[0] is timer:
                self._cond.notify()
        return timer

    def close(self) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
        """Stop; return the calls that had not run yet (not cancelled), for the owner to settle."""
        with self._cond:
            self._closed = True
            pending = [(t.fn, t.args) for t in sorted(self._heap) if not t.cancelled]
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        return pending

    def _next(self) -> Timer | None:
        with self._cond:
            while True:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap or self._closed:
                    self._thread = None  # decided under the lock call_later takes
                    return None
                wait = self._heap[0].when - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)
                self._cond.wait(wait)

    def _run(self) -> None:
        while True:
            timer = self._next()
            if timer is None:
                return
            try:
                timer.fn(*timer.args)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                log.exception("%s: a scheduled call failed", self.name)
            # Drop it before waiting for the next: its arguments (futures) must not be kept
            # alive by an idle thread.
            del timer
