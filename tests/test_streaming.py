"""Results folded as they arrive: the driver keeps the answer, not every task's partial."""

from __future__ import annotations

import gc
import time
import weakref

import numpy as np
import pytest

import shardwren
from shardwren.futures import fold_results
from shardwren.linalg import knn
from shardwren.linalg._common import run_resumable
from shardwren.linalg.kernels import RunningTopK, tree_merge


def _block(i: int) -> np.ndarray:
    return np.full(200_000, i, dtype=np.float64)  # 1.6 MB each


def test_fold_results_drops_each_result_once_folded(executor):
    alive: list[weakref.ref] = []
    seen = []

    def fold(n: int, value: np.ndarray) -> None:
        gc.collect()
        # Every earlier result has been freed: only the one being folded is alive.
        assert sum(r() is not None for r in alive) == 0
        alive.append(weakref.ref(value))
        seen.append((n, float(value[0])))

    fs = executor.map(_block, range(12))
    fold_results(fs, fold, progress=False)
    assert fs == []  # handed over: a list still holding them would keep every result
    assert sorted(seen) == [(i, float(i)) for i in range(12)]


def _fail_on(i: int) -> int:
    if i == 0:
        raise KeyError("boom")
    time.sleep(0.5)
    return i


def test_fold_results_raises_the_first_failure_and_cancels_the_rest(executor):
    got = []
    fs = executor.map(_fail_on, range(40))
    kept = list(fs)
    with pytest.raises(KeyError, match="boom"):
        fold_results(fs, lambda n, v: got.append(n), progress=False)
    fs = kept
    shardwren.wait(fs)
    assert any(f.cancelled() for f in fs)  # tasks not started were not run
    assert all(f.done() for f in fs)


def test_run_resumable_fold_sees_saved_parts_and_new_ones(executor):
    items = [(i,) for i in range(6)]
    key = "streaming-resume"
    fp = {"what": "squares", "version": 1}
    first, ran = run_resumable(executor, lambda i: np.array([i * i]), items[:3], key, "sq",
                               True, fingerprint=fp)
    assert ran == 3 and [int(a[0]) for a in first] == [0, 1, 4]
    folded: dict[int, int] = {}
    out, ran = run_resumable(executor, lambda i: np.array([i * i]), items, key, "sq", True,
                             fingerprint=fp, fold=lambda n, v: folded.__setitem__(n, int(v[0])))
    assert out == [] and ran == 3  # the first three came from the store
    assert folded == {i: i * i for i in range(6)}


def test_running_topk_is_order_independent():
    rng = np.random.default_rng(3)
    k, n = 4, 50
    parts = []
    for j in range(9):
        vals = np.sort(rng.integers(0, 5, (n, k)).astype(np.float64), axis=1)  # many ties
        idx = np.tile(np.arange(k) + 10 * j, (n, 1)).astype(np.int64)
        parts.append((vals, idx))
    want = tree_merge(list(parts), k)
    for order in (range(9), reversed(range(9)), rng.permutation(9)):
        top = RunningTopK(n, k)
        for j in order:
            top.add(0, *parts[j])
        d, i = top.result()
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(i, want[1])


def test_knn_driver_memory_does_not_grow_with_training_blocks(executor, monkeypatch):
    """The brute path merges each tile on arrival: at most a few tile partials are
    alive in the driver at any moment, however many training blocks there are."""
    alive: list[weakref.ref] = []
    most = 0
    real_add = RunningTopK.add

    def add(self, row0, vals, idx):
        nonlocal most
        gc.collect()
        most = max(most, sum(r() is not None for r in alive))
        alive.append(weakref.ref(vals))
        real_add(self, row0, vals, idx)

    monkeypatch.setattr(RunningTopK, "add", add)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 8))
    Q = rng.standard_normal((100, 8))
    d, i = knn(X, Q, k=2, executor=executor, block_size=100)  # 30 training blocks
    assert len(alive) == 30
    assert most <= 1
    ref = ((Q[:, None] - X[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(i, np.argsort(ref, axis=1, kind="stable")[:, :2])
