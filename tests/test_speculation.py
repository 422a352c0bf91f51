"""Stragglers get a speculative backup; the first copy to finish wins."""

from __future__ import annotations

import os

import shardwren
from shardwren import policy

from executor_conformance import _slow_first_time


def test_backup_candidates_policy():
    done = [1.0] * 8
    # 8 of 10 done, median 1 s: a task running 5 s is a straggler, one running 2 s is not
    assert policy.backup_candidates(100.0, [(3, 95.0), (4, 98.0)], done, 10) == [3]
    assert policy.backup_candidates(100.0, [(3, 95.0)], done[:5], 10) == []   # too early
    assert policy.backup_candidates(100.0, [(3, 95.0)], done, 10, already=[3]) == []
    assert policy.backup_candidates(100.0, [(3, 99.5)], [0.01] * 9, 10) == []  # under min_seconds


def test_speculation_can_be_turned_off(tmp_path):
    marker = str(tmp_path / "m")
    with shardwren.default_executor(workers=2, store=f"file://{tmp_path}/s", speculation=False) as ex:
        fs = ex.map(lambda i, m: _slow_first_time(i, m, slow=3) if i != 3 else "x", range(6),
                    extra_args=(marker,))
        shardwren.wait(fs, timeout=60)
        assert not any(f.stats.get("backups") for f in fs)


def test_speculation_survives_a_backup_that_cannot_be_submitted(tmp_path):
    marker = str(tmp_path / "m")
    with shardwren.default_executor(workers=2, store=f"file://{tmp_path}/s") as ex:
        real = ex.backend.submit
        refused = []

        def submit(fn_id, fn_bytes, tasks):
            if any(f.stats.get("backups") for f, _ in tasks) and not refused:
                refused.append(tasks[0][0].index)
                raise RuntimeError("injected: the backend refused this backup")
            return real(fn_id, fn_bytes, tasks)

        ex.backend.submit = submit
        # A straggler after about 2 s (8 of 10 done, 1 s at least): 4 s leaves it time
        # to be picked for a backup, which is refused.
        fs = ex.map(_slow_first_time, range(10), extra_args=(marker, 6, 4.0))
        assert fs[6].result(timeout=60) == "original"  # its backup was refused
        assert refused == [6]
        os.remove(marker)
        fs = ex.map(_slow_first_time, range(10), extra_args=(marker, 6, 4.0))
        assert fs[6].result(timeout=60) == "backup"  # the watch is still alive
