"""Worker functions for the multi-process storage tests (spawned: importable by name)."""

from __future__ import annotations

import math
import time
import traceback

import numpy as np


def _start_together() -> None:
    """Spin until the next 50 ms tick of the shared clock: processes leaving a barrier
    wake one after another, this lines them up to well under a millisecond."""
    go = math.ceil(time.time() / 0.05) * 0.05 + 0.05
    while time.time() < go:
        pass


def open_or_create_and_write(url: str, index: int, nblocks: int, trials: int, dtype,
                             barrier, results) -> None:
    """In each trial: all processes open-or-create matrix ``t<trial>`` at once, then
    each writes its own block (the natural pattern of tasks sharing an output)."""
    from shardwren.matrix import ShardedMatrix

    for t in range(trials):
        barrier.wait(60)
        _start_together()
        try:
            m = ShardedMatrix(f"t{t}", shape=(4 * nblocks, 3), shard_sizes=(4, 3), dtype=dtype,
                              store=url)
            m.put_block(index, 0, np.full((4, 3), index + 1, np.float32))
            results.put((t, index, None))
        except Exception:  # noqa: BLE001 - reported to the parent
            results.put((t, index, traceback.format_exc()))


def first_writer(url: str, index: int, trials: int, barrier, results) -> None:
    """Two processes write the first blocks of a dtype-pending matrix at once:
    process 0 int32 threes, process 1 float32 halves."""
    from shardwren.errors import DTypeMismatchError
    from shardwren.matrix import ShardedMatrix

    block = (np.full((2, 2), 3, np.int32) if index == 0 else np.full((2, 2), 0.5, np.float32))
    for t in range(trials):
        m = ShardedMatrix(f"d{t}", store=url)  # created (pending) by the parent
        barrier.wait(60)
        _start_together()
        try:
            m.put_block(index, 0, block)
            results.put((t, index, "ok"))
        except DTypeMismatchError:
            results.put((t, index, "refused"))
        except Exception:  # noqa: BLE001
            results.put((t, index, traceback.format_exc()))
