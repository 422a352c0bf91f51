from __future__ import annotations


import numpy as np
import pytest

import shardwren
from shardwren.errors import DTypeMismatchError, ShapeMismatchError, StoreNotSharedError
from shardwren.linalg import KNeighborsClassifier, argmin, knn, pairwise_sq_euclidean
from shardwren.linalg.knn import merge, topk_rows, tree_merge, vote
from shardwren.matrix import ShardedMatrix

from reference import reference_knn


# --- pure kernels ----------------------------------------------------------------------


def test_topk_rows_ties_go_to_smaller_index():
    S = np.array([[3, 1, 1, 0, 1, 1], [5, 5, 5, 5, 5, 5]], dtype=np.float32)
    vals, idx = topk_rows(S, 3, offset=10)
    np.testing.assert_array_equal(idx, [[13, 11, 12], [10, 11, 12]])
    np.testing.assert_array_equal(vals, [[0, 1, 1], [5, 5, 5]])
    vals, idx = topk_rows(S, 1)
    np.testing.assert_array_equal(idx[:, 0], [3, 0])
    vals, idx = topk_rows(S, 10)  # k larger than the tile: all of it, sorted
    assert idx.shape == (2, 6)


def test_merge_and_tree_merge():
    a = (np.array([[1.0, 4.0]]), np.array([[7, 2]]))
    b = (np.array([[1.0, 2.0]]), np.array([[3, 9]]))
    v, i = merge(a, b, 3)
    np.testing.assert_array_equal(i, [[3, 7, 9]])
    parts = [(np.array([[float(x)]]), np.array([[x]])) for x in [5, 3, 8, 1, 9]]
    np.testing.assert_array_equal(tree_merge(parts, 2)[1], [[1, 3]])


def test_vote_is_deterministic():
    np.testing.assert_array_equal(vote(np.array([[2, 1, 1]])), [1])
    np.testing.assert_array_equal(vote(np.array([[3, 4, 4, 3]])), [3])  # tie: nearest first
    np.testing.assert_array_equal(vote(np.array([[7, 5, 6]])), [7])
    # scikit-learn's rule: the smallest of the tied labels
    np.testing.assert_array_equal(vote(np.array([[3, 4, 4, 3], [7, 5, 6, 8]]), ties="smallest"),
                                  [3, 5])
    np.testing.assert_array_equal(vote(np.array([[4, 3, 3, 4]]), ties="smallest"), [3])


# --- against brute force ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("block", [7, 64])
def test_knn_matches_reference_with_ties(executor, k, block):
    rng = np.random.default_rng(k * 100 + block)
    # Small integers: every float32 operation is exact, and ties and duplicates abound.
    train = rng.integers(0, 4, (203, 6)).astype(np.float32)
    train[50] = train[10]
    query = rng.integers(0, 4, (61, 6)).astype(np.float32)
    d, i = knn(train, query, k, executor=executor, block_size=block)
    rd, ri = reference_knn(train, query, k)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_train_vs_train_symmetric(executor, k, exclude_self):
    rng = np.random.default_rng(k)
    train = rng.integers(0, 3, (150, 5)).astype(np.float32)
    train[:, 2] = 7  # a constant, non-zero column
    d, i = knn(train, None, k, executor=executor, exclude_self=exclude_self, block_size=40)
    rd, ri = reference_knn(train, train, k, exclude_self)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


def test_gaussian_float_data_matches_float64_reference(executor):
    rng = np.random.default_rng(7)
    train = rng.standard_normal((500, 30)).astype(np.float32)
    query = rng.standard_normal((120, 30)).astype(np.float32)
    d, i = knn(train, query, 3, executor=executor, block_size=128)
    rd, ri = reference_knn(train, query, 3)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-3)


def test_constant_columns_distances_exact(executor):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 5, (90, 8)).astype(np.float32)
    train[:, [1, 4]] = [3, -2]
    query = rng.integers(-3, 5, (20, 8)).astype(np.float32)
    d, i = knn(train, query, 2, executor=executor, block_size=25)
    rd, ri = reference_knn(train, query, 2)
    np.testing.assert_array_equal(d, rd)


def test_sharded_inputs_and_materialised_path_agree(executor, tmp_path):
    rng = np.random.default_rng(11)
    train = rng.integers(0, 6, (230, 9)).astype(np.float32)
    query = rng.integers(0, 6, (70, 9)).astype(np.float32)
    store = executor.store
    T = ShardedMatrix.from_numpy(train, "kt", (60, 9), store=store)
    Q = ShardedMatrix.from_numpy(query, "kq", (33, 9), store=store)
    _, fused = knn(T, Q, 1, executor=executor)
    D = pairwise_sq_euclidean(T, Q, executor=executor, key="Dtest")
    assert D.shape == (230, 70) and D.shard_sizes == (60, 33)
    np.testing.assert_array_equal(D.numpy(), ((train[:, None, :] - query[None]) ** 2).sum(-1))
    idx, mins = argmin(D, axis=0, executor=executor)
    np.testing.assert_array_equal(idx, fused[:, 0])
    np.testing.assert_array_equal(idx, reference_knn(train, query, 1)[1][:, 0])
    idx1, _ = argmin(D, axis=1, executor=executor)
    np.testing.assert_array_equal(idx1, reference_knn(query, train, 1)[1][:, 0])


def test_classifier(executor):
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((3, 10)) * 5
    y = rng.integers(0, 3, 300)
    X = (centers[y] + rng.standard_normal((300, 10))).astype(np.float32)
    clf = KNeighborsClassifier(n_neighbors=5, executor=executor, block_size=64).fit(X[:200], y[:200])
    assert clf.score(X[200:], y[200:]) > 0.95
    d, i = clf.kneighbors(X[200:203], n_neighbors=2)
    assert d.shape == (3, 2) and (np.diff(d, axis=1) >= 0).all()
    np.testing.assert_array_equal(
        clf.predict(X[200:]),
        vote(y[:200][clf.kneighbors(X[200:], return_distance=False)], ties="smallest"))


# --- bad input ---------------------------------------------------------------------------


def test_bad_inputs(executor):
    X = np.ones((10, 4), np.float32)
    with pytest.raises(ShapeMismatchError, match="4 and 5"):
        knn(X, np.ones((3, 5)), executor=executor)
    with pytest.raises(ValueError, match="k=11 is larger than the 10"):
        knn(X, X[:2], k=11, executor=executor)
    with pytest.raises(ValueError, match="k=10 is larger than the 9"):
        knn(X, None, k=10, exclude_self=True, executor=executor)
    with pytest.raises(ValueError, match="exclude_self"):
        knn(X, X[:2], exclude_self=True, executor=executor)
    with pytest.raises(DTypeMismatchError, match="numeric"):
        knn(np.array([["a"] * 4] * 3), X, executor=executor)
    with pytest.raises(ShapeMismatchError, match="2-D"):
        knn(np.ones(5), X, executor=executor)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn(bad, X, executor=executor)
    with pytest.raises(ValueError, match="NaN.*row 3, column 2"):
        knn(X, bad, executor=executor)


def test_memory_store_is_refused_for_worker_processes():
    with shardwren.default_executor(workers=1, store="memory://nope") as ex:
        with pytest.raises(StoreNotSharedError, match="file://"):
            knn(np.ones((5, 2)), np.ones((2, 2)), executor=ex)


# --- real data --------------------------------------------------------------------------

def test_mnist_test_1nn_accuracy(executor, mnist):
    X, y, Xt, yt = mnist
    _, i = knn(X, Xt, 1, executor=executor)
    assert np.mean(y[i[:, 0]] == yt) == pytest.approx(0.9691, abs=1e-12)


def test_mnist_leave_one_out(executor, mnist):
    X, y, _, _ = mnist
    _, i = knn(X, None, 1, executor=executor, exclude_self=True)
    assert np.mean(y[i[:, 0]] == y) == pytest.approx(0.9737, abs=2e-4)


@pytest.mark.slow  # a second 60k x 60k pass (13 s); symmetry is also tested on subsets
def test_mnist_train_accuracy_is_one_with_self_included(executor, mnist):
    X, y, _, _ = mnist
    _, i = knn(X, None, 1, executor=executor)
    assert np.mean(y[i[:, 0]] == y) == 1.0


def test_mnist_subset_matches_float64_reference(executor, mnist):
    X, y, Xt, _ = mnist
    train, query = X[:7000], Xt[:300]
    d, i = knn(train, query, 3, executor=executor, block_size=3000)
    rd, ri = reference_knn(train, query, 3)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


def test_fashion_mnist_1nn_accuracy(executor, fashion_mnist):
    X, y, Xt, yt = fashion_mnist
    _, i = knn(X, Xt, 1, executor=executor)
    assert np.mean(y[i[:, 0]] == yt) == pytest.approx(0.8497, abs=1e-12)
