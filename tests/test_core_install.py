"""What a core-only install (``pip install shardwren``, no extras) must do.

The environment matrix (``make test-matrix``) runs this file, with
tests/test_optional.py, in a fresh virtualenv holding shardwren and its core
dependencies only; the normal suite runs it too. Nothing here may need an
optional library (no scikit-learn, pandas, matplotlib, s3fs, distributed).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shardwren.linalg import knn
from shardwren.matrix import ShardedMatrix

README = Path(__file__).parents[1] / "README.md"


def test_readme_first_example(tmp_path, monkeypatch):
    """The README's first Python block, run as written (default store pointed at tmp)."""
    monkeypatch.setenv("SHARDWREN_STORE", str(tmp_path / "store"))
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "shardwren.default_executor()" in code and "ex.map(my_function" in code
    ns: dict = {}
    try:
        exec(compile(code, str(README), "exec"), ns)
    finally:
        if "ex" in ns:
            ns["ex"].shutdown()
    results = ns["results"]
    assert len(results) == 100
    assert all(r.shape == (1024,) and np.isfinite(r).all() for r in results)
    # b scales both the matrix and the vector: |A x| grows as b^2 (0.1 .. 10).
    norms = np.array([np.linalg.norm(r) for r in results])
    assert norms[-1] > 1000 * norms[0]


def test_sharded_matrix_round_trip(executor):
    """Uneven blocks, float64 and float32, written in parallel and read back exactly;
    and read by zarr-python itself, the format's referee."""
    import zarr

    rng = np.random.default_rng(21)
    for dtype in (np.float64, np.float32):
        X = rng.standard_normal((103, 37)).astype(dtype)
        M = ShardedMatrix.from_numpy(X, f"core/roundtrip-{np.dtype(dtype).name}", (20, 16),
                                     store=executor.store)
        try:
            assert M.shape == (103, 37) and M.grid == (6, 3) and M.dtype == dtype
            np.testing.assert_array_equal(M.numpy(), X)
            np.testing.assert_array_equal(M.get_block(5, 2), X[100:, 32:])
            z = zarr.open_array(executor.store.url_for(M.key), mode="r")
            np.testing.assert_array_equal(z[...], X)
        finally:
            M.delete()


def test_knn_matches_float64_brute_force(executor):
    """Exact k-NN over several blocks on small-integer data (every float32 operation
    exact, ties common), against float64 brute force with ties to the smaller index."""
    rng = np.random.default_rng(7)
    train = rng.integers(0, 5, (230, 12)).astype(np.float32)
    query = rng.integers(0, 5, (57, 12)).astype(np.float32)
    D = ((query[:, None, :].astype(np.float64) - train[None, :, :]) ** 2).sum(-1)
    ref = np.array([np.lexsort((np.arange(len(row)), row))[:3] for row in D])
    T = ShardedMatrix.from_numpy(train, "core/knn-train", (50, 12), store=executor.store)
    Q = ShardedMatrix.from_numpy(query, "core/knn-query", (20, 12), store=executor.store)
    try:
        dist, idx = knn(T, Q, 3, executor=executor)
    finally:
        T.delete()
        Q.delete()
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_array_equal(dist, np.take_along_axis(D, ref, 1))
