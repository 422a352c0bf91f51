"""Worker-side memory: one thread-safe, byte-bounded cache and per-thread scratch buffers.

Block algorithms run many tasks per worker process, and consecutive tasks often
need the same prepared input block (a training block's float32 copy, its norms, a
projected block). Workers may run several tasks at once in threads (Dask's
``--nthreads 4``), so everything here is safe under threads:

* :class:`WorkerCache` is an LRU keyed by tuples, bounded by the bytes of the
  arrays it holds, that computes each value once even when several threads ask for
  it at the same moment (the others wait for the first). Values are shared between
  threads, so they must be treated as read-only, which every caller does.
* :func:`scratch` hands each thread its own reusable output buffer: a buffer
  shared between threads would let one tile's GEMM overwrite another's result.

Keys start with a per-call token (:func:`shardwren.linalg._common.new_token`), so a
later call never sees blocks of a matrix that was rewritten in between.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

import numpy as np

T = TypeVar("T")

#: Default bound of the process-wide cache; ``SHARDWREN_WORKER_CACHE`` (bytes) overrides it.
DEFAULT_CACHE_BYTES = 1 << 30


def nbytes(value: Any) -> int:
    """Bytes held by a cached value: arrays, and tuples/lists/dicts of them."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return int(getattr(value, "nbytes", 0) or 0)


class WorkerCache:
    """A least-recently-used cache bounded in bytes, safe under threads.

    Parameters
    ----------
    max_bytes : int
        Entries are evicted, oldest use first, while the total exceeds this. The
        newest entry always stays, so a single value larger than the bound still
        works (it is simply not kept alongside others).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Event] = {}

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value for ``key``, calling ``make()`` (once, in one thread) if absent."""
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key][0]
                event = self._making.get(key)
                if event is None:
                    event = self._making[key] = threading.Event()
                    break
            # Another thread is making it: wait, then look again (if it failed, this
            # thread makes it itself and sees the error first-hand).
            event.wait()
        try:
            value = make()
        except BaseException:
            with self._lock:
                del self._making[key]
            event.set()
            raise
        self.put(key, value)
        with self._lock:
            del self._making[key]
        event.set()
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` (replacing any), then evict down to the bound."""
        size = nbytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def _default_bytes() -> int:
    try:
        return int(os.environ.get("SHARDWREN_WORKER_CACHE", DEFAULT_CACHE_BYTES))
    except ValueError:
        return DEFAULT_CACHE_BYTES


#: The one cache of this process, shared by every algorithm's tasks.
CACHE = WorkerCache(_default_bytes())

_SCRATCH = threading.local()


def scratch(shape: tuple[int, ...], dtype: Any = np.float32, slot: str = "") -> np.ndarray:
    """A reusable buffer of ``shape`` owned by the calling thread.

    A fresh multi-megabyte result per tile costs page faults and zeroing on every
    task (badly so under allocators that return memory eagerly, as Dask's workers
    do); reusing the buffer keeps a tile's cost its arithmetic's. Each thread has
    its own buffers (one per ``slot``), so concurrent tasks never share one; the
    caller must be done with the previous contents before asking again.
    """
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    dtype = np.dtype(dtype)
    buf = bufs.get(slot)
    if buf is None or buf.dtype != dtype or buf.size < int(np.prod(shape)):
        buf = bufs[slot] = np.empty(int(np.prod(shape)), dtype=dtype)
    return buf[:int(np.prod(shape))].reshape(shape)
