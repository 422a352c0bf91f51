"""resume=True: a job whose driver died finishes, recomputing only what is missing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from shardwren.linalg import knn, pairwise_sq_euclidean
from shardwren.matrix import ShardedMatrix

DRIVER = textwrap.dedent("""
    import sys, time, numpy as np, shardwren
    from shardwren.linalg import map_blocks
    from shardwren.matrix import ShardedMatrix
    store = sys.argv[1]
    A = ShardedMatrix("A", store=store)
    out = ShardedMatrix("B", shape=A.shape, shard_sizes=A.shard_sizes, dtype="float64", store=store)
    def slow_double(a):
        time.sleep(0.25)
        return a * 2
    with shardwren.default_executor(workers=2, store=store, progress=False) as ex:
        map_blocks(slow_double, A, out=out, executor=ex, resume=True)
        print("TASKS", len(ex.history[-1][2]) if ex.history else 0, flush=True)
""")


def test_killed_driver_resumes(tmp_path):
    store = f"file://{tmp_path}/store"
    X = np.arange(40 * 30, dtype=np.float64).reshape(40, 30)
    A = ShardedMatrix.from_numpy(X, "A", (4, 10), store=store)  # 30 blocks
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    first = subprocess.Popen([sys.executable, str(script), store], stdout=subprocess.PIPE, text=True)
    B = None
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            B = ShardedMatrix("B", store=store)
            if len(B.block_idxs_exist) >= 8:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(1.0)  # its workers notice the dead driver and exit
    done_before = len(B.block_idxs_exist)
    assert 8 <= done_before < A.num_blocks
    second = subprocess.run([sys.executable, str(script), store], capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    ran = int(second.stdout.split("TASKS")[1])
    assert ran == A.num_blocks - done_before  # only what was missing
    np.testing.assert_array_equal(ShardedMatrix("B", store=store).numpy(), 2 * X)


def test_pairwise_resume_recomputes_only_missing(executor):
    rng = np.random.default_rng(0)
    X, Y = rng.random((50, 8)), rng.random((30, 8))
    D = pairwise_sq_euclidean(X, Y, executor=executor, key="Dres", block_size=10)
    full = D.numpy()
    D.delete_block(1, 1)
    D.delete_block(4, 2)
    last = executor.history[-1][0]
    pairwise_sq_euclidean(X, Y, executor=executor, key="Dres", block_size=10, resume=True)
    assert executor.history[-1][0] != last and len(executor.history[-1][2]) == 2
    np.testing.assert_allclose(ShardedMatrix("Dres", store=executor.store).numpy(), full)
    with pytest.raises(ValueError, match="key="):
        pairwise_sq_euclidean(X, Y, executor=executor, resume=True)


def test_knn_resume_reuses_saved_tiles(executor):
    rng = np.random.default_rng(1)
    train, query = rng.random((400, 16), dtype=np.float32), rng.random((90, 16), dtype=np.float32)
    T = ShardedMatrix.from_numpy(train, "rt", (100, 16), store=executor.store)
    Q = ShardedMatrix.from_numpy(query, "rq", (30, 16), store=executor.store)
    tm = {}
    d1, i1 = knn(T, Q, 3, executor=executor, resume=True, key="knnjob", timings=tm)
    assert tm["tasks"] == 12 + 4
    parts = executor.store.list("knnjob/parts")
    assert len(parts) == 12
    for p in parts[:5]:
        executor.store.delete(p)
    tm2 = {}
    d2, i2 = knn(T, Q, 3, executor=executor, resume=True, key="knnjob", timings=tm2)
    assert tm2["tasks"] == 5 + 4
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    with pytest.raises(ValueError, match="key="):
        knn(T, Q, 1, executor=executor, resume=True)


def test_pruned_knn_resume_reuses_saved_query_slices(executor):
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 10, (20, 32))
    data = (centres[rng.integers(0, 20, 6500)] + rng.normal(0, 1, (6500, 32))).astype(np.float32)
    T = ShardedMatrix.from_numpy(data[:4000], "pt", (1000, 32), store=executor.store)
    Q = ShardedMatrix.from_numpy(data[4000:], "pq", (1000, 32), store=executor.store)
    tm = {}
    d1, i1 = knn(T, Q, 2, executor=executor, method="pruned", resume=True, key="pjob", timings=tm)
    assert tm["pruning"] and tm["tasks"] == 3  # query slices of 1,000 rows
    parts = executor.store.list("pjob/parts")
    assert len(parts) == 3
    executor.store.delete(parts[1])
    tm2 = {}
    d2, i2 = knn(T, Q, 2, executor=executor, method="pruned", resume=True, key="pjob", timings=tm2)
    assert tm2["tasks"] == 1
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(i1, knn(T, Q, 2, executor=executor, method="brute")[1])
