"""shardwren's scikit-learn estimators, refereed by scikit-learn itself.

* ``check_estimator`` (via ``parametrize_with_checks``) for all three;
* agreement with ``sklearn.neighbors`` (brute force) on MNIST and Fashion-MNIST:
  predictions and ``predict_proba`` equal on every test image (the full 10,000
  images are ``-m slow``; by default a subset);
* scikit-learn's tools unchanged: Pipeline, GridSearchCV, cross_val_score, clone, pickle;
* where it runs: in-process and worker answers identical; worker pools reused and
  released, never leaked.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from hypothesis import given
from hypothesis import strategies as st
from reference import reference_knn
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neighbors import KNeighborsClassifier as SkClassifier
from sklearn.neighbors import KNeighborsRegressor as SkRegressor
from sklearn.neighbors import NearestNeighbors as SkNearest
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from shardwren.errors import NonFiniteInputError, NotEnoughSamplesError
from shardwren.linalg import (
    KNeighborsClassifier,
    KNeighborsRegressor,
    NearestNeighbors,
    _pools,
    neighbors,
)

psutil = pytest.importorskip("psutil")


# --- scikit-learn's own checks ------------------------------------------------------------------
#
# Every check runs. Two report "skipped", each for scikit-learn's own reason:
# check_classifiers_multilabel_output_format_decision_function (there is no
# decision_function, as in scikit-learn's KNeighborsClassifier), and
# check_array_api_input, which scikit-learn skips unless SCIPY_ARRAY_API=1 is set
# before SciPy is imported: test_array_api_check_passes runs it in a process that sets it.

ESTIMATORS = [
    NearestNeighbors(),
    KNeighborsClassifier(),
    KNeighborsClassifier(3, weights="distance"),
    KNeighborsRegressor(),
    KNeighborsRegressor(3, weights="distance"),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def test_array_api_check_passes():
    # The same call as check_estimator's (its _yield_array_api_checks for estimators
    # without array API support).
    code = textwrap.dedent("""
        from sklearn.utils.estimator_checks import check_array_api_input
        from shardwren.linalg import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors
        for est in (NearestNeighbors(), KNeighborsClassifier(), KNeighborsRegressor()):
            check_array_api_input(type(est).__name__, est, array_namespace="numpy",
                                  expect_only_array_outputs=False)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=dict(os.environ, SCIPY_ARRAY_API="1"), timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def where(tmp_path):
    """Settings for a shared executor of the test's own (2 workers, store in tmp_path);
    every shared executor is shut down afterwards."""
    yield {"workers": 2, "store": f"file://{tmp_path}/store", "progress": False}
    _pools.shutdown_all()


@pytest.fixture
def on_workers(monkeypatch):
    """Every problem goes to the workers, however small."""
    monkeypatch.setattr(neighbors, "LOCAL_WORK", -1)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# --- agreement with scikit-learn on real data ---------------------------------------------------

CONFIGS = [(k, w) for k in (1, 3, 5, 10) for w in ("uniform", "distance")]


def _agree(data, executor, n_train: int | None, n_test: int | None) -> int:
    """Our predictions and probabilities are scikit-learn's, bitwise, for every config.
    Returns on how many (config, image) pairs shardwren's former rule (a vote tie to the
    nearest label) would have disagreed."""
    X, y, Xt, _ = data
    X, y, Xt = X[:n_train], y[:n_train], Xt[:n_test]
    ours = KNeighborsClassifier(executor=executor).fit(X, y)  # one sharding for all configs
    former = 0
    for k, w in CONFIGS:
        ref = SkClassifier(k, weights=w, algorithm="brute").fit(X, y)
        ours.set_params(n_neighbors=k, weights=w, vote_ties="smallest")
        p_ref, p_ours = ref.predict(Xt), ours.predict(Xt)
        mismatched = np.flatnonzero(p_ref != p_ours)
        assert len(mismatched) == 0, (k, w, mismatched[:10])
        np.testing.assert_array_equal(ours.predict_proba(Xt), ref.predict_proba(Xt),
                                      err_msg=f"k={k} weights={w}")
        if w == "uniform" and k > 1:
            former += int((ours.set_params(vote_ties="nearest").predict(Xt) != p_ref).sum())
    return former


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_agrees_with_sklearn_on_a_subset(request, name, executor):
    # 5,000 training images, 300 test images, every k and weighting, on the workers.
    # The subset holds vote ties that the former nearest-label rule decided differently
    # (measured for k = 3, 5, 10: 5, 3, 3 images on MNIST, 9, 11, 6 on Fashion-MNIST),
    # so this test fails without scikit-learn's tie rule.
    assert _agree(request.getfixturevalue(name), executor, 5000, 300) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_agrees_with_sklearn_on_every_test_image(request, name, executor):
    assert _agree(request.getfixturevalue(name), executor, None, None) > 0


def test_kneighbors_distances_are_sklearns_on_mnist(mnist, executor):
    X, _, Xt, _ = mnist
    X, Xt = X[:20000], Xt[:300]
    d_ref, i_ref = SkNearest(n_neighbors=10, algorithm="brute").fit(X).kneighbors(Xt)
    d, i = NearestNeighbors(n_neighbors=10, executor=executor).fit(X).kneighbors(Xt)
    # float32 pixels: both round distances to float32 the same way
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(np.sort(i, 1), np.sort(i_ref, 1))


def test_regressor_agrees_with_sklearn(mnist, executor):
    X, y, Xt, _ = mnist
    X, y, Xt = X[:10000], y[:10000], Xt[:200]
    Y = np.stack([y, X[:, 300] / 255.0], axis=1)  # two outputs
    for w in ("uniform", "distance"):
        for target in (Y[:, 0].astype(np.float64), Y):
            ref = SkRegressor(5, weights=w, algorithm="brute").fit(X, target).predict(Xt)
            ours = KNeighborsRegressor(5, weights=w, executor=executor).fit(X, target).predict(Xt)
            np.testing.assert_array_equal(ours, ref)


def test_tie_free_float64_data_agrees_with_sklearn():
    # Gaussian float64 data: scikit-learn's GEMM-based distances carry float64 rounding,
    # ours are exact; neighbours and predictions agree, probabilities to rounding.
    rng = np.random.default_rng(3)
    X, Xt = rng.standard_normal((300, 6)), rng.standard_normal((80, 6))
    y = rng.integers(0, 4, 300)
    for k, w in CONFIGS:
        ref = SkClassifier(k, weights=w).fit(X, y)
        ours = KNeighborsClassifier(k, weights=w).fit(X, y)
        np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))
        np.testing.assert_allclose(ours.predict_proba(Xt), ref.predict_proba(Xt), rtol=1e-12)
        np.testing.assert_array_equal(ours.kneighbors(Xt)[1], ref.kneighbors(Xt)[1])
        np.testing.assert_allclose(ours.kneighbors(Xt)[0], ref.kneighbors(Xt)[0], rtol=1e-12)
        np.testing.assert_array_equal(ours.kneighbors(return_distance=False),
                                      ref.kneighbors(return_distance=False))
        for mode in ("connectivity", "distance"):
            g, g_ref = ours.kneighbors_graph(Xt, mode=mode), ref.kneighbors_graph(Xt, mode=mode)
            assert type(g) is type(g_ref)
            np.testing.assert_allclose(g.toarray(), g_ref.toarray(), rtol=1e-12)


# --- votes and ties -----------------------------------------------------------------------------


@given(st.integers(1, 12), st.integers(0, 2**32 - 1), st.booleans())
def test_vote_is_weighted_mode_operation_for_operation(k, seed, odd_weights):
    from sklearn.utils.extmath import weighted_mode

    from shardwren.linalg.kernels import vote

    rng = np.random.default_rng(seed)
    codes = rng.integers(int(rng.integers(0, 2)), 6, (30, k))
    w = (rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan], (30, k)) if odd_weights
         else rng.random((30, k)))
    expect = weighted_mode(codes, w, axis=1)[0].ravel().astype(np.intp)
    np.testing.assert_array_equal(vote(codes, w, ties="smallest", fallback=0), expect)


def test_vote_ties_smallest_label_by_default_nearest_as_an_option():
    # One feature; query at 0: neighbours 1 (label 9) and 2 (label 4), a 1-1 tie.
    X = np.array([[1.0], [2.0], [10.0]])
    y = np.array([9, 4, 4])
    default = KNeighborsClassifier(2).fit(X, y)
    assert default.predict([[0.0]])[0] == 4 == SkClassifier(2).fit(X, y).predict([[0.0]])[0]
    np.testing.assert_array_equal(default.predict_proba([[0.0]]), [[0.5, 0.5]])
    assert KNeighborsClassifier(2, vote_ties="nearest").fit(X, y).predict([[0.0]])[0] == 9


def test_distance_weights_with_a_zero_distance_and_callable_weights():
    X = np.array([[0.0], [1.0], [3.0]])
    y = np.array([0, 1, 1])
    for w in ("distance", lambda d: np.exp(-d)):
        ours = KNeighborsClassifier(3, weights=w).fit(X, y)
        ref = SkClassifier(3, weights=w).fit(X, y)
        q = [[0.0], [0.4], [2.0]]
        np.testing.assert_array_equal(ours.predict(q), ref.predict(q))
        np.testing.assert_array_equal(ours.predict_proba(q), ref.predict_proba(q))
    with pytest.raises(ValueError, match="zero weights"):
        KNeighborsClassifier(2, weights=lambda d: d * 0).fit(X, y).predict([[0.5]])


def test_leave_one_out_with_duplicates_follows_sklearns_rule():
    # Three copies of one point. Like scikit-learn, kneighbors() finds k + 1 = 2
    # neighbours and removes the point itself; for the last copy (index 2) the two
    # found are copies 0 and 1 and it is not among them, so the first is dropped.
    # scikit-learn's first is the one its heap happened to put first (here index 1:
    # it answers 0, scikit-learn 1.9); ours is the smaller index (we answer 1), at the
    # same distance.
    X = np.array([[0.0], [0.0], [0.0], [5.0]])
    d, i = NearestNeighbors(n_neighbors=1).fit(X).kneighbors()
    d_ref, i_ref = SkNearest(n_neighbors=1).fit(X).kneighbors()
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(i[:, 0], [1, 0, 1, 0])
    assert i_ref[2, 0] in (0, 1) and i_ref[3, 0] in (0, 1, 2)


def test_sparse_input_is_refused_with_a_type_error():
    from scipy import sparse

    with pytest.raises(TypeError, match="toarray"):
        KNeighborsClassifier(3).fit(sparse.csr_matrix(_X), _Y)


# --- in-process and worker answers are identical -----------------------------------------------

_DTYPES = [np.float64, np.float32, np.int64, np.uint8]


@st.composite
def _problems(draw):
    n = draw(st.integers(3, 40))
    m = draw(st.integers(1, 12))
    d = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(_DTYPES))
    offset = draw(st.sampled_from([0.0, 1e3, 1e6]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = draw(st.sampled_from(["ties", "gauss"]))
    if values == "ties" or np.dtype(dtype).kind in "iu":
        X, Q = rng.integers(0, 4, (n, d)), rng.integers(0, 4, (m, d))
    else:
        X, Q = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    if np.dtype(dtype).kind == "f":
        X, Q = X + offset, Q + offset
    k = draw(st.integers(1, n - 1))
    return X.astype(dtype), Q.astype(dtype), k


@given(_problems())
def test_in_process_and_workers_give_identical_answers(executor, problem):
    X, Q, k = problem
    nn = NearestNeighbors(n_neighbors=k, executor=executor).fit(X)
    local = nn.kneighbors(Q), nn.kneighbors()
    saved = neighbors.LOCAL_WORK
    neighbors.LOCAL_WORK = -1
    try:
        remote = nn.kneighbors(Q), nn.kneighbors()
    finally:
        neighbors.LOCAL_WORK = saved
    for (d1, i1), (d2, i2) in zip(local, remote):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)
    rd, ri = reference_knn(X, Q, k)
    np.testing.assert_array_equal(local[0][1], ri)
    expect = np.sqrt(rd)
    if X.dtype == np.float32:
        expect = np.sqrt(rd.astype(np.float32).astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(local[0][0], expect)


@pytest.mark.parametrize("algorithm", ["brute", "pruned", "auto"])
def test_workers_run_scikit_learns_checks_that_compare_answers(on_workers, where, algorithm):
    from sklearn.utils import estimator_checks as ec

    for est in (KNeighborsClassifier(3, executor=where, algorithm=algorithm),
                KNeighborsRegressor(3, weights="distance", executor=where, algorithm=algorithm)):
        name = type(est).__name__
        for check in (ec.check_estimators_pickle, ec.check_fit_idempotent,
                      ec.check_methods_subset_invariance, ec.check_supervised_y_2d):
            check(name, est)
    ec.check_classifiers_train("KNeighborsClassifier",
                               KNeighborsClassifier(3, executor=where, algorithm=algorithm))


# --- scikit-learn's tools -------------------------------------------------------------------------


def test_pipeline_gridsearch_cross_val_score_match_sklearn(mnist, where):
    X, y, _, _ = mnist
    X, y = X[:900], y[:900]
    ours = Pipeline([("pca", PCA(50, svd_solver="covariance_eigh")),
                     ("knn", KNeighborsClassifier(executor=where))])
    ref = Pipeline([("pca", PCA(50, svd_solver="covariance_eigh")), ("knn", SkClassifier(algorithm="brute"))])
    grid = {"knn__n_neighbors": [1, 3, 5]}
    g_ours = GridSearchCV(ours, grid, cv=3).fit(X, y)
    g_ref = GridSearchCV(ref, grid, cv=3).fit(X, y)
    assert g_ours.best_params_ == g_ref.best_params_
    np.testing.assert_array_equal(g_ours.cv_results_["mean_test_score"],
                                  g_ref.cv_results_["mean_test_score"])
    # the raw pixels, on the workers
    knn = KNeighborsClassifier(3, executor=where)
    np.testing.assert_array_equal(cross_val_score(knn, X, y, cv=3),
                                  cross_val_score(SkClassifier(3), X, y, cv=3))
    assert len(_pools.running()) == 1  # every clone used the one shared executor


def test_feature_names_and_set_output(mnist):
    pd = pytest.importorskip("pandas")
    X, y, Xt, _ = mnist
    X, y, Xt = X[:500], y[:500], Xt[:50]
    pipe = Pipeline([("pca", PCA(8, random_state=0).set_output(transform="pandas")),
                     ("knn", KNeighborsClassifier(3))]).fit(X, y)
    knn = pipe.named_steps["knn"]
    assert list(knn.feature_names_in_) == [f"pca{i}" for i in range(8)]
    assert knn.n_features_in_ == 8
    frame = pd.DataFrame(X[:, :4], columns=list("abcd"))
    est = KNeighborsClassifier(3).fit(frame, y)
    assert list(est.feature_names_in_) == list("abcd")
    with pytest.raises(ValueError, match="feature names"):
        est.predict(frame.rename(columns={"a": "z"}))


def test_clone_pickle_deepcopy_with_each_kind_of_executor(executor, where):
    X = np.arange(40.0).reshape(20, 2)
    y = np.arange(20) % 2
    for spec in (None, "local", where, executor):
        est = KNeighborsClassifier(3, executor=spec).fit(X, y)
        c = clone(est)
        assert c.executor is spec if spec is executor else c.executor == spec
        assert not hasattr(c, "classes_")
        d = copy.deepcopy(est)
        assert (d.executor is executor) if spec is executor else d.executor == spec
        np.testing.assert_array_equal(d.predict(X), est.predict(X))
        p = pickle.loads(pickle.dumps(est))
        # a live Executor does not travel: the unpickled one uses the shared default
        assert p.executor is None if spec is executor else p.executor == spec
        np.testing.assert_array_equal(p.predict(X), est.predict(X))
    assert executor.map(lambda v: v + 1, [1])[0].result() == 2  # still the caller's, still up


# --- where it runs: pools reused and released ---------------------------------------------------


def test_worker_pool_is_reused_and_released(where, monkeypatch):
    monkeypatch.setattr(_pools, "LINGER_SECONDS", 0.0)
    rng = np.random.default_rng(0)
    X, Q = rng.standard_normal((3000, 40)), rng.standard_normal((500, 40))
    y = rng.integers(0, 3, 3000)
    before = _children()
    est = KNeighborsClassifier(5, executor=where).fit(X, y)
    est.predict(Q)
    workers = _children() - before
    assert len(workers) >= 2
    est.predict_proba(Q)
    est.kneighbors(Q[:200])
    est2 = clone(est).fit(X, y)
    est2.predict(Q)
    assert _children() - before == workers  # the same processes every call, both estimators
    del est
    gc.collect()
    assert _children() - before == workers  # est2 still holds the executor
    del est2
    gc.collect()
    assert not (_children() & workers)  # the last one gone: workers stopped and reaped
    assert _pools.running() == []


def test_lingering_pool_serves_the_next_estimator(where):
    rng = np.random.default_rng(1)
    X, Q = rng.standard_normal((3000, 40)), rng.standard_normal((500, 40))
    before = _children()
    NearestNeighbors(executor=where).fit(X).kneighbors(Q)
    gc.collect()
    workers = _children() - before
    assert workers and _pools.running()  # lingering after its estimator went away
    NearestNeighbors(executor=where).fit(X).kneighbors(Q)
    assert _children() - before == workers
    _pools.shutdown_all()
    assert not (_children() & workers)


def test_no_worker_outlives_a_script_that_never_cleans_up(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, psutil
        from shardwren.linalg import KNeighborsClassifier
        rng = np.random.default_rng(0)
        X = rng.standard_normal((3000, 40)); y = rng.integers(0, 3, 3000)
        clf = KNeighborsClassifier(executor=None).fit(X, y)
        clf.predict(rng.standard_normal((500, 40)))
        print("PIDS", *[p.pid for p in psutil.Process().children(recursive=True)])
    """)
    env = dict(os.environ, SHARDWREN_STORE=f"file://{tmp_path}/store", SHARDWREN_WORKERS="2")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    pids = [int(p) for p in out.stdout.split("PIDS")[1].split()]
    assert pids
    alive = [p for p in pids if psutil.pid_exists(p) and
             psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    left = [str(p) for p in (tmp_path / "store").rglob("*") if "train-" in str(p)]
    assert left == []  # the sharded training set was deleted at exit


# --- bad input: what scikit-learn rejects, we reject with the same type -------------------------

_X = np.arange(24.0).reshape(8, 3)
_Y = np.array([0, 1] * 4)


def _nan_X():
    X = _X.copy()
    X[5, 2] = np.nan
    return X


def _inf_X():
    X = _X.copy()
    X[2, 0] = -np.inf
    return X


BAD_FITS = {
    "nan": ({}, _nan_X, lambda: _Y),
    "inf": ({}, _inf_X, lambda: _Y),
    "1-D X": ({}, lambda: _X[:, 0], lambda: _Y),
    "empty": ({}, lambda: _X[:0], lambda: _Y[:0]),
    "complex": ({}, lambda: _X + 1j, lambda: _Y),
    "strings": ({}, lambda: np.array([["a", "b", "c"]] * 8), lambda: _Y),
    "y too short": ({}, lambda: _X, lambda: _Y[:5]),
    "continuous y": ({}, lambda: _X, lambda: np.linspace(0, 1, 8)),
    "k=1.5": ({"n_neighbors": 1.5}, lambda: _X, lambda: _Y),
    "k=0": ({"n_neighbors": 0}, lambda: _X, lambda: _Y),
    "weights": ({"weights": "gauss"}, lambda: _X, lambda: _Y),
    "algorithm": ({"algorithm": "fast"}, lambda: _X, lambda: _Y),
}


@pytest.mark.parametrize("case", BAD_FITS)
def test_bad_fit_rejected_like_sklearn(case):
    params, X, y = BAD_FITS[case]
    with pytest.raises(Exception) as ref:
        SkClassifier(**params).fit(X(), y())
    # scikit-learn's own class may be its InvalidParameterError (a ValueError and a
    # TypeError): ours must be an instance of every builtin class it derives from.
    builtins = [c for c in (ValueError, TypeError) if isinstance(ref.value, c)]
    assert builtins, ref.value
    with pytest.raises(tuple(builtins)) as ours:
        KNeighborsClassifier(**params).fit(X(), y())
    for c in builtins:
        assert isinstance(ours.value, c), (case, ours.value, ref.value)


def test_nan_and_inf_name_row_and_column():
    with pytest.raises(NonFiniteInputError, match="NaN at row 5, column 2"):
        KNeighborsClassifier(3).fit(_nan_X(), _Y)
    est = KNeighborsRegressor(3).fit(_X, _Y.astype(float))
    with pytest.raises(NonFiniteInputError, match="-infinity at row 2, column 0"):
        est.predict(_inf_X())


def test_too_many_neighbours_is_a_clear_value_error():
    est = NearestNeighbors(n_neighbors=9).fit(_X)
    with pytest.raises(NotEnoughSamplesError, match="n_neighbors=9 is more than the 8 training"):
        est.kneighbors(_X)
    with pytest.raises(ValueError):
        SkNearest(n_neighbors=9).fit(_X).kneighbors(_X)
    with pytest.raises(NotEnoughSamplesError, match="7 other training points"):
        NearestNeighbors(n_neighbors=8).fit(_X).kneighbors()
    with pytest.raises(TypeError):
        est.kneighbors(_X, n_neighbors=2.0)
    with pytest.raises(ValueError):
        est.kneighbors(_X, n_neighbors=-1)


def test_unsupported_metric_and_not_fitted():
    with pytest.raises(ValueError, match="Euclidean distances only"):
        KNeighborsClassifier(metric="manhattan").fit(_X, _Y)
    with pytest.raises(ValueError, match="Euclidean distances only"):
        NearestNeighbors(p=1).fit(_X)
    assert NearestNeighbors(metric="euclidean").fit(_X).kneighbors(_X[:1], 1)[1][0, 0] == 0
    for est in (NearestNeighbors(), KNeighborsClassifier(), KNeighborsRegressor()):
        with pytest.raises(NotFittedError):
            est.kneighbors(_X)
    with pytest.raises(ValueError, match="executor must be"):
        KNeighborsClassifier(executor=3).fit(_X, _Y)


def test_estimators_import_from_linalg_and_scikit_learn_loads_only_for_them():
    from shardwren.linalg import KNeighborsClassifier as A
    from shardwren.linalg.neighbors import KNeighborsClassifier as B

    assert A is B and issubclass(A, sklearn.base.ClassifierMixin)
    # workers import shardwren.linalg for the tile functions: without scikit-learn
    code = ("import sys, shardwren.linalg; a = 'sklearn' in sys.modules; "
            "shardwren.linalg.NearestNeighbors; print(a, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]


def test_no_warnings_on_normal_use():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KNeighborsClassifier(3).fit(_X, _Y).predict(_X)
