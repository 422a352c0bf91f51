"""The pruned k-NN returns exactly the float64 brute force's neighbours and distances."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardwren.linalg import KNeighborsClassifier, knn
from shardwren.linalg import pruned

from reference import reference_knn


def brute64(train, query, k, exclude_self=False):
    return reference_knn(train, query, k, exclude_self)


def check(executor, train, query, k, exclude_self=False, block=None):
    d, i = knn(train, None if exclude_self else query, k, executor=executor, method="pruned",
               exclude_self=exclude_self, block_size=block)
    rd, ri = brute64(train, train if exclude_self else query, k, exclude_self)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_mnist_subset_exact(executor, mnist, k):
    X, _, Xt, _ = mnist
    check(executor, X[:6000], Xt[:600], k, block=1500)


def test_mnist_leave_one_out_exact(executor, mnist):
    X, _, _, _ = mnist
    check(executor, X[:3000], None, 1, exclude_self=True, block=1000)


def test_fashion_mnist_subset_exact(executor, fashion_mnist):
    X, _, Xt, _ = fashion_mnist
    check(executor, X[:5000], Xt[:500], 3, block=2000)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_gaussian_exact(executor, k):
    rng = np.random.default_rng(k)
    train = rng.standard_normal((1500, 60)).astype(np.float32)
    query = rng.standard_normal((200, 60)).astype(np.float32)
    check(executor, train, query, k, block=400)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_duplicates_and_ties_exact(executor, k):
    rng = np.random.default_rng(10 + k)
    base = rng.integers(0, 4, (300, 40)).astype(np.float32)
    train = np.concatenate([base, base[:100], base[50:80]])  # exact duplicates
    query = np.concatenate([base[:30], rng.integers(0, 4, (40, 40)).astype(np.float32)])
    check(executor, train, query, k, block=128)
    check(executor, train, None, k, exclude_self=True, block=128)


@pytest.mark.parametrize("noise,offset,qnoise", [(1.0, 0.0, 1.0), (0.0, 0.0, 0.01), (0.0, 1e4, 0.0),
                                                  (1e-3, 3e3, 1e-3)])
def test_margin_makes_a_true_lower_bound(noise, offset, qnoise):
    """The float32 GEMM value never exceeds the float64 exact distance.

    Low-rank data (plus little or no noise, and far from the origin) makes the
    bound tight and the residuals tiny, where float32 projections and square
    roots err most: a slip in the margin would show.
    """
    rng = np.random.default_rng(0)
    X = (rng.random((2000, 10)) @ rng.random((10, 100)) * 255 + offset
         + noise * rng.standard_normal((2000, 100))).astype(np.float32)
    Q = (X[:50] + qnoise * rng.standard_normal((50, 100))).astype(np.float32)
    mean = X.mean(0).astype(np.float64)
    Xc = X.astype(np.float64) - mean
    P = np.linalg.eigh(Xc.T @ Xc)[1][:, ::-1].T[:16]
    C = pruned.margin_constant(16, 100)
    D = ((Q[:, None, :].astype(np.float64) - X[None]) ** 2).sum(-1)
    for scale in (1.0, pruned._scale_for(X, mean)):  # bounds hold in scaled units too
        lb = pruned.augment_query(Q.astype(np.float64), mean, P, C, scale) @ \
            pruned.augment_train(X.astype(np.float64), mean, P, C, scale).T
        assert (lb <= scale ** 2 * D).all()
        if noise:
            assert (lb >= 0.5 * scale ** 2 * D).mean() > 0.5  # and not vacuous


def test_auto_falls_back_to_brute_on_gaussian(executor):
    rng = np.random.default_rng(1)
    train = rng.standard_normal((3000, 100)).astype(np.float32)
    query = rng.standard_normal((100, 100)).astype(np.float32)
    tm = {}
    _, i = knn(train, query, 1, executor=executor, method="auto", timings=tm, block_size=1000)
    assert tm["pruning"] is False and "too weak" in tm["why"]
    np.testing.assert_array_equal(i, brute64(train, query, 1)[1])


def test_classifier_builds_the_index_once(executor, mnist):
    X, y, Xt, yt = mnist
    clf = KNeighborsClassifier(1, executor=executor, algorithm="pruned", block_size=2000)
    clf.fit(X[:8000], y[:8000])
    a = clf.predict(Xt[:300])
    index = clf._runtime.index
    assert index is not None and index.pruning
    b = clf.predict(Xt[300:600])
    assert clf._runtime.index is index  # reused across queries
    ref = KNeighborsClassifier(1, executor=executor).fit(X[:8000], y[:8000])
    np.testing.assert_array_equal(np.concatenate([a, b]), ref.predict(Xt[:600]))


def test_bad_method(executor):
    with pytest.raises(ValueError, match="method must be"):
        knn(np.ones((5, 2)), np.ones((2, 2)), executor=executor, method="fast")


def test_randomized_principal_directions_match_the_exact_ones():
    # Low-rank structure plus noise, like images: the randomized subspace iteration
    # must capture (nearly) the variance of the exact top directions, orthonormally.
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((3000, 40)) * np.linspace(30, 3, 40)) @ rng.standard_normal((40, 300))
    X = (X + rng.standard_normal(X.shape)).astype(np.float32)
    mean = X.mean(axis=0, dtype=np.float64)
    Xc = X - mean
    G = Xc.T.astype(np.float64) @ Xc
    best = np.linalg.eigvalsh(G)[::-1]
    P = pruned._principal(X, mean, 300, None)
    assert P.shape == (128, 300)
    np.testing.assert_allclose(P @ P.T, np.eye(128), atol=1e-12)
    for m in (16, 32, 64, 128):
        captured = np.trace(P[:m] @ G @ P[:m].T)
        assert captured >= 0.999 * best[:m].sum()


def test_orthonormal_falls_back_when_cholesky_cannot():
    rng = np.random.default_rng(4)
    Y = rng.standard_normal((50, 6))
    Y[:, 5] = Y[:, 4]  # rank-deficient: Y^T Y is singular
    Q = pruned._orthonormal(Y)
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-10)
    Q = pruned._orthonormal(Y[:, :5])  # the Cholesky path
    np.testing.assert_allclose(Q.T @ Q, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(Q @ (Q.T @ Y[:, :5]), Y[:, :5], atol=1e-10)  # same span


def test_survivor_estimate_follows_how_fast_neighbours_come_closer():
    """choose_m reads off the sample how nearest-neighbour distances shrink with more rows
    (a power law) and predicts survivors at the tau a query task starts from: data on a
    low-dimensional manifold gets a clear power and fewer survivors per row at large N;
    isotropic noise in 64 dimensions (neighbours barely come closer) nearly none."""
    rng = np.random.default_rng(11)
    low = (rng.standard_normal((8000, 3)) @ rng.standard_normal((3, 64))
           + 0.01 * rng.standard_normal((8000, 64))).astype(np.float32)
    noise = rng.standard_normal((8000, 64)).astype(np.float32)
    powers = {}
    for name, X in (("low", low), ("noise", noise)):
        mean = X.mean(axis=0, dtype=np.float64)
        P = pruned._principal(X, mean, 64, None)
        _, small = pruned.choose_m(X, mean, P, n_train=8000, k=1, blocks=2)
        _, large = pruned.choose_m(X, mean, P, n_train=4_000_000, k=1, blocks=1000)
        powers[name] = large["tau_power"]
        assert small["tau_power"] == large["tau_power"]  # read off the same sample
        for m, rate in large["survivor_rate"].items():
            assert rate <= small["survivor_rate"][m]  # a smaller starting tau, never larger
    assert powers["low"] > 0.3  # 2 / 3 for squared distances on a 3-dimensional manifold
    assert powers["noise"] < 0.1  # 2 / 64


@given(st.sampled_from(["float32", "float64", "uint8", "int16"]),
       st.sampled_from([0.0, 1e-30, 1.0, 1e6, -3e12, 1e300]), st.integers(0, 2**32 - 1))
def test_scale_is_the_power_of_two_of_the_largest_centred_value(dtype, offset, seed):
    """Column max and min give the same spread as every centred value (without
    the full-size float64 temporaries)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((50, 7)) * 10.0 ** rng.uniform(-3, 3, 7)
    if dtype in ("uint8", "int16"):
        info = np.iinfo(dtype)
        X = rng.integers(info.min, int(info.max) + 1, X.shape).astype(dtype)
    else:
        X = (X + (min(offset, 1e30) if dtype == "float32" else offset)).astype(dtype)
    mean = X.mean(axis=0, dtype=np.float64)
    spread = float(np.max(np.abs(X - mean), initial=0.0))
    want = float(np.ldexp(1.0, int(np.clip(-np.frexp(spread)[1], -500, 500)))) \
        if spread > 0 else 1.0
    assert pruned._scale_for(X, mean) == want


@pytest.mark.parametrize("kind, integers", [("uint8", True), ("pixels as float32", True),
                                            ("int32", True), ("int32 beyond 16 bits", False),
                                            ("float32", False)])
def test_fit_prices_exact_distances_by_the_path_they_take(executor, kind, integers):
    """8-bit data, and wider types holding only such values, take the integer path of
    exact distances, and the fit prices them so; larger integers and real-valued floats
    do not."""
    from shardwren.matrix import ShardedMatrix

    X = np.random.default_rng(0).integers(0, 256, (2000, 40))
    X = {"uint8": X.astype(np.uint8), "pixels as float32": X.astype(np.float32),
         "int32": X.astype(np.int32), "int32 beyond 16 bits": X.astype(np.int32) * 2**12,
         "float32": X.astype(np.float32) + np.float32(0.5)}[kind]
    T = ShardedMatrix.from_numpy(X, f"penalty-{kind.replace(' ', '-')}", (500, 40),
                                 store=executor.store)
    info = pruned.fit(T, executor, k=1).info
    want = pruned.GATHER_PENALTY_INT if integers else pruned.GATHER_PENALTY
    assert info["gather_penalty"] == want
    T.delete()
