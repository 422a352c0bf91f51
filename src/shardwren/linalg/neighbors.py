"""scikit-learn estimators computed by shardwren: KNeighborsClassifier,
KNeighborsRegressor and NearestNeighbors.

They are scikit-learn estimators (``BaseEstimator`` and the mixins, scikit-learn's
own validation helpers, tags, ``check_estimator`` clean) whose neighbour search
is :func:`shardwren.linalg.knn`: exact, ties to the smaller training index.

Agreement with ``sklearn.neighbors`` (``algorithm="brute"``), and where it ends:

* **Neighbours.** Ours are the float64 reference's. scikit-learn ranks by
  ``|x|**2 - 2 x.y + |y|**2`` in float64, which is exact for integer-valued data
  such as pixels, and otherwise off by float64 rounding (near-ties may rank
  differently). Among *exactly* equal distances, scikit-learn keeps whichever its
  fixed-size max-heap happens to hold (which depends on every point it saw, and,
  for query sets of up to ``4 * 256 * threads`` rows, on the number of OpenMP
  threads), then orders them by an unstable introsort; ours are by index. The
  neighbour *set* can therefore differ only when several points tie exactly at the
  k-th distance; the *order* within the k only among exactly equal distances,
  which changes no vote or probability (equal distances carry equal weights).
* **Distances** (``kneighbors``) are Euclidean, as scikit-learn returns them: when
  both the training and the query data are float32, scikit-learn rounds the
  squared distance and its square root to float32, and so do we (from the exact
  value); otherwise they are the float64 square root of the exact squared distance.
* **Votes.** Same arithmetic as scikit-learn: ``predict`` with uniform weights
  gives the smallest of the most frequent labels, with weights the label
  ``weighted_mode`` picks (:func:`shardwren.linalg.kernels.vote`);
  ``predict_proba`` adds the weights rank by rank and divides by the row sum
  (:func:`shardwren.linalg.kernels.class_scores`). With the same neighbours and
  distances the results are bitwise scikit-learn's. ``vote_ties="nearest"`` gives
  a tie to the label met first, nearest first, instead (shardwren's former rule).

Where it runs: tiny problems (``n_queries * n_train * n_features`` at most
:data:`LOCAL_WORK`) are computed in this process with the reference formula
itself, so the answer is identical and no worker starts (scikit-learn's checks
fit thousands of tiny models). Larger ones run on an executor described by the
``executor`` parameter (see :mod:`shardwren.linalg._pools`); the fitted estimator
keeps its training set sharded in that executor's store (and, for
``algorithm="pruned"``/``"auto"``, its projection) across calls, and deletes
them when it is refitted or garbage-collected, or at exit.
"""

from __future__ import annotations

import copy
import numbers
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    from sklearn import get_config
    from sklearn.base import (
        BaseEstimator,
        ClassifierMixin,
        MultiOutputMixin,
        RegressorMixin,
    )
    from sklearn.exceptions import DataConversionWarning
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    from ..errors import BackendNotInstalledError

    raise BackendNotInstalledError(
        "shardwren's scikit-learn estimators need scikit-learn >= 1.6: "
        "pip install 'shardwren[sklearn]'") from exc

from ..errors import InvalidParameterError, NotEnoughSamplesError
from ..executor import Executor
from . import _pools
from ._common import Inputs
from .kernels import class_scores, vote
from .knn import check_finite, knn

if TYPE_CHECKING:
    from ..matrix import ShardedMatrix
    from .pruned import PrunedIndex

__all__ = ["KNeighborsClassifier", "KNeighborsRegressor", "NearestNeighbors"]

#: Problems with ``n_queries * n_train * n_features`` up to this many are computed in
#: this process (about 0.1 s); larger ones on workers.
LOCAL_WORK = 1 << 24
#: float64 elements per chunk of the in-process computation (8 MiB).
LOCAL_CHUNK = 1 << 20

_ALGORITHMS = ("brute", "pruned", "auto")
_EUCLIDEAN = ("euclidean", "l2")


# --- the search itself -----------------------------------------------------------------------


def _local_knn(train: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN in this process: the float64 reference formula
    ``((Q[:, None] - X[None]) ** 2).sum(-1)``, ties to the smaller index; the same
    answer as :func:`knn` (which is bitwise that reference)."""
    t64 = np.asarray(train, dtype=np.float64)
    q64 = np.asarray(query, dtype=np.float64)
    n, d = t64.shape
    dist = np.empty((len(q64), k))
    ind = np.empty((len(q64), k), dtype=np.int64)
    step = max(1, LOCAL_CHUNK // max(1, n * d))
    for r in range(0, len(q64), step):
        D = ((q64[r:r + step, None, :] - t64[None]) ** 2).sum(-1)
        idx = np.argsort(D, axis=1, kind="stable")[:, :k]
        ind[r:r + step] = idx
        dist[r:r + step] = np.take_along_axis(D, idx, 1)
    return dist, ind


class _Runtime:
    """What a fitted estimator keeps for its worker calls: a lease on a shared
    executor (or the caller's Executor), the training set sharded in its store, the
    pruned index. Never pickled or copied; closed by the estimator's finalizer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lease: _pools.Lease | None = None
        self.inputs: Inputs | None = None
        self.train: ShardedMatrix | None = None
        self.index: PrunedIndex | None = None
        self.config: tuple | None = None
        self.finalizer: weakref.finalize | None = None

    @classmethod
    def attach(cls, estimator: _KNeighborsBase) -> _Runtime:
        rt = cls()
        # The finalizer holds the runtime, never the estimator.
        rt.finalizer = weakref.finalize(estimator, rt.close)
        return rt

    def prepare(self, est: _KNeighborsBase
                ) -> tuple[Executor, ShardedMatrix, PrunedIndex | None]:
        """``(executor, sharded training set, pruned index or None)`` for a call."""
        spec = est.executor
        config: tuple[Any, ...] = (("instance", id(spec)) if isinstance(spec, Executor)
                                   else ("shared", _pools.key_of(spec)))
        # The projection is sized for n_neighbors; brute force depends on neither.
        config += (est.block_size, est.algorithm,
                   est.n_neighbors if est.algorithm != "brute" else None)
        with self.lock:
            if config != self.config:
                self._drop()
                if not isinstance(spec, Executor):
                    self.lease = _pools.acquire(spec)
                self.config = config
            if isinstance(spec, Executor):
                ex = spec
            else:
                assert self.lease is not None
                ex = self.lease.executor
            if self.train is None:
                self.inputs = Inputs(ex, est.block_size)
                train = self.inputs.matrix(est._fit_X, "train")
                self.train = train
                if est.algorithm != "brute":
                    from . import pruned

                    self.index = pruned.fit(train, ex, k=est.n_neighbors,
                                            allow_brute=est.algorithm == "auto", progress=False)
            return ex, self.train, self.index

    def _drop(self) -> None:
        if self.inputs is not None:
            self.inputs.__exit__(None, None, None)
        if self.lease is not None:
            self.lease.release()
        self.inputs = self.train = self.index = self.lease = self.config = None

    def close(self) -> None:
        """Delete the sharded data and return the lease (idempotent)."""
        with self.lock:
            self._drop()


# --- parameter checks -------------------------------------------------------------------------


def _check_k(value: Any, name: str = "n_neighbors") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidParameterError(
            f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise InvalidParameterError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


def _weights(dist: np.ndarray | None, weights: Any) -> np.ndarray | None:
    """Each neighbour's weight, as scikit-learn's ``_get_weights`` computes it:
    None for uniform; for "distance", ``1 / d``, except that a query with neighbours
    at distance 0 gives those weight 1 and the others 0."""
    if weights in (None, "uniform"):
        return None
    if weights == "distance":
        assert dist is not None
        with np.errstate(divide="ignore"):
            w = np.asarray(1.0 / dist)
        inf_mask = np.isinf(w)
        inf_row = np.any(inf_mask, axis=1)
        w[inf_row] = inf_mask[inf_row]
        return w
    return np.asarray(weights(dist))


def _check_some_weight(w: np.ndarray | None) -> None:
    if w is not None and np.any(np.all(w == 0, axis=1)):
        raise ValueError(
            "All neighbors of some sample is getting zero weights. Please modify 'weights' "
            "to avoid this case if you are using a user-defined function.")


# --- the estimators ---------------------------------------------------------------------------


class _KNeighborsBase(BaseEstimator):
    """Parameters, validation, kneighbors and kneighbors_graph shared by the three."""

    def __init__(self, n_neighbors: int = 5, *, algorithm: str = "brute",
                 metric: str = "minkowski", p: float = 2,
                 executor: None | str | Mapping[str, Any] | Executor = None,
                 block_size: int | None = None):
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.metric = metric
        self.p = p
        self.executor = executor
        self.block_size = block_size

    # -- checks -------------------------------------------------------------------------------
    def _check_params(self) -> None:
        _check_k(self.n_neighbors)
        if self.algorithm not in _ALGORITHMS:
            raise InvalidParameterError(
                f"algorithm must be one of {_ALGORITHMS}, got {self.algorithm!r} (every "
                "algorithm is exact; scikit-learn's trees are not needed)")
        euclidean = self.metric in _EUCLIDEAN or (self.metric == "minkowski" and self.p == 2)
        if not euclidean:
            raise InvalidParameterError(
                f"shardwren computes Euclidean distances only (metric='euclidean', or "
                f"'minkowski' with p=2); got metric={self.metric!r}, p={self.p!r}: use "
                "sklearn.neighbors for other metrics")
        if self.block_size is not None:
            _check_k(self.block_size, "block_size")
        ex = self.executor
        if not (ex is None or isinstance(ex, (str, Mapping, Executor))):
            raise InvalidParameterError(
                "executor must be None (a shared default executor), a backend name, a dict "
                f"of shardwren.default_executor settings, or an Executor; got {ex!r}")
        w = getattr(self, "weights", "uniform")
        if not (w in (None, "uniform", "distance") or callable(w)):
            raise InvalidParameterError(
                f"weights must be 'uniform', 'distance' or a callable, got {w!r}")

    def _finish_fit(self, X: np.ndarray) -> None:
        check_finite(X, 0, "X")
        self._fit_X = X
        self.n_samples_fit_ = X.shape[0]
        self.effective_metric_ = "euclidean"
        self.effective_metric_params_: dict[str, Any] = {}
        old = self.__dict__.get("_runtime")
        if old is not None:
            old.finalizer()
        self._runtime = _Runtime.attach(self)
        # A training set too big for any query to run in-process: shard it (and build
        # the projection) now, as scikit-learn builds its trees in fit.
        if X.shape[0] * X.shape[1] > LOCAL_WORK:
            self._runtime.prepare(self)

    # -- search -------------------------------------------------------------------------------
    def _search(self, Xq: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and indices of the k nearest (Xq None: the training set
        itself, each point included)."""
        X = self._fit_X
        nq = X.shape[0] if Xq is None else Xq.shape[0]
        if nq * X.shape[0] * X.shape[1] <= LOCAL_WORK:
            return _local_knn(X, X if Xq is None else Xq, k)
        ex, T, index = self._runtime.prepare(self)
        return knn(T, Xq, k, executor=ex, block_size=self.block_size, method=self.algorithm,
                   index=index, progress=False)

    def kneighbors(self, X: Any = None, n_neighbors: int | None = None,
                   return_distance: bool = True):
        """The k nearest training points of each query (Euclidean, exact).

        Parameters
        ----------
        X : array-like (n_queries, n_features), optional
            Default: the training set, each point left out of its own neighbours
            (scikit-learn's rule: k + 1 are found and the point itself removed; if
            more than k + 1 points coincide and it is not among them, the first is).
        n_neighbors : int, optional
            Default: the ``n_neighbors`` parameter.
        return_distance : bool

        Returns
        -------
        neigh_dist : float64 array (n_queries, n_neighbors)
            Only with ``return_distance``. Ascending. float32 precision (as
            scikit-learn rounds them) when training and query data are both float32.
        neigh_ind : int64 array (n_queries, n_neighbors)
            Training indices; equal distances in index order.
        """
        check_is_fitted(self)
        if n_neighbors is None:
            n_neighbors = self.n_neighbors
        k = _check_k(n_neighbors)
        query_is_train = X is None
        if query_is_train:
            Xq = None
            k += 1
            dtype = self._fit_X.dtype
        else:
            Xq = validate_data(self, X, reset=False, order="C", ensure_all_finite=False)
            check_finite(Xq, 0, "X")
            dtype = Xq.dtype
        n_fit = self.n_samples_fit_
        if k > n_fit:
            raise NotEnoughSamplesError(
                f"n_neighbors={k - query_is_train} is more than the "
                + (f"{n_fit - 1} other training points each point has (n_samples_fit = {n_fit}; "
                   "with X=None a point is not its own neighbour)" if query_is_train else
                   f"{n_fit} training points (n_samples_fit = {n_fit})")
                + ": lower n_neighbors or fit on more data")
        d2, ind = self._search(Xq, k)
        if query_is_train:
            mask = ind != np.arange(len(ind))[:, None]
            mask[np.all(mask, axis=1), 0] = False
            ind = ind[mask].reshape(len(ind), k - 1)
            d2 = d2[mask].reshape(len(ind), k - 1)
        if not return_distance:
            return ind
        if dtype == np.float32 and self._fit_X.dtype == np.float32:
            # scikit-learn's float32 path: sqrt(float32(d2)) rounded to float32.
            dist = np.sqrt(d2.astype(np.float32).astype(np.float64)).astype(np.float32)
            return dist.astype(np.float64), ind
        return np.sqrt(d2), ind

    def kneighbors_graph(self, X: Any = None, n_neighbors: int | None = None,
                         mode: str = "connectivity"):
        """Sparse (CSR) graph of each query's k nearest training points.

        ``mode="connectivity"``: ones; ``"distance"``: the Euclidean distances.
        Shape (n_queries, n_samples_fit); a ``csr_matrix``, or a ``csr_array`` when
        scikit-learn's ``sparse_interface`` setting is ``"sparray"``.
        """
        from scipy import sparse

        check_is_fitted(self)
        if n_neighbors is None:
            n_neighbors = self.n_neighbors
        if mode == "connectivity":
            ind = self.kneighbors(X, n_neighbors, return_distance=False)
            data = np.ones(ind.size)
        elif mode == "distance":
            data, ind = self.kneighbors(X, n_neighbors, return_distance=True)
            data = np.ravel(data)
        else:
            raise ValueError(
                f'Unsupported mode, must be one of "connectivity", or "distance" but got "{mode}" instead')
        n_q, k = ind.shape
        indptr = np.arange(0, n_q * k + 1, k)
        kind = sparse.csr_array if get_config().get("sparse_interface") == "sparray" \
            else sparse.csr_matrix
        return kind((data, ind.ravel(), indptr), shape=(n_q, self.n_samples_fit_))

    # -- lifetime, copies -----------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags

    def __sklearn_clone__(self):
        if not isinstance(self.executor, Executor):
            return super().__sklearn_clone__()
        # An Executor is a handle to running workers: clones share it.
        shell = copy.copy(self)
        shell.executor = None
        new = shell.__sklearn_clone__()
        new.executor = self.executor
        return new

    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        if "_runtime" in new.__dict__:
            new._runtime = _Runtime.attach(new)
        return new

    def __deepcopy__(self, memo: dict):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name == "_runtime":
                continue
            new.__dict__[name] = value if isinstance(value, Executor) else copy.deepcopy(value, memo)
        if "_runtime" in self.__dict__:
            new._runtime = _Runtime.attach(new)
        return new

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        state.pop("_runtime", None)
        if isinstance(state.get("executor"), Executor):
            # Live workers cannot travel: the unpickled estimator uses the shared default.
            state["executor"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_fit_X" in self.__dict__:
            self._runtime = _Runtime.attach(self)


class NearestNeighbors(MultiOutputMixin, _KNeighborsBase):
    """Unsupervised exact k-nearest-neighbour search, as ``sklearn.neighbors.NearestNeighbors``.

    Parameters
    ----------
    n_neighbors : int, default 5
        Neighbours per query for :meth:`kneighbors`.
    algorithm : {"brute", "pruned", "auto"}, default "brute"
        How :func:`shardwren.linalg.knn` searches; all are exact. "pruned" and
        "auto" build a projection of the training set once, on first use.
    metric : {"minkowski", "euclidean", "l2"}, default "minkowski"
        Euclidean only ("minkowski" needs ``p=2``); other metrics are refused.
    p : float, default 2
    executor : None, str, dict or Executor, default None
        Where worker calls run. None: a shared default executor
        (``shardwren.default_executor()``), started on first need, shut down a few
        seconds after the last estimator using it went away, and at exit. A string:
        a backend name (``"local"``, ``"dask"``). A dict: ``default_executor``
        settings (``{"backend": "dask", "dask_address": ..., "store": "s3://..."}``);
        equal dicts share one executor. These clone and pickle as they are. An
        :class:`~shardwren.Executor`: used as is and never shut down by the
        estimator; clones and deep copies share it; a pickle carries None instead.
    block_size : int, optional
        Rows per block when the data is sharded (default 4000).

    Attributes
    ----------
    n_features_in_, feature_names_in_, n_samples_fit_, effective_metric_ ("euclidean"),
    effective_metric_params_ : as in scikit-learn.
    """

    def fit(self, X: Any, y: Any = None) -> NearestNeighbors:
        """Remember the training set (validated; NaN/inf refused naming row and column)."""
        self._check_params()
        X = validate_data(self, X, order="C", ensure_all_finite=False)
        self._finish_fit(X)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags


class KNeighborsClassifier(ClassifierMixin, MultiOutputMixin, _KNeighborsBase):
    """k-nearest-neighbour vote, as ``sklearn.neighbors.KNeighborsClassifier``, exact.

    Parameters
    ----------
    n_neighbors : int, default 5
    weights : {"uniform", "distance"} or callable, default "uniform"
        "distance": each neighbour votes ``1 / distance`` (neighbours at distance 0,
        if any, take the whole vote); a callable maps the distance array to weights.
    vote_ties : {"smallest", "nearest"}, default "smallest"
        Which of the labels with the best score :meth:`predict` returns:
        scikit-learn's rule (the smallest label, consistent with the argmax of
        :meth:`predict_proba`) or the one met first among the neighbours, nearest
        first (a tie between 2 labels at k=2 goes to the 1-NN label).
    algorithm, metric, p, executor, block_size
        As for :class:`NearestNeighbors`.

    Attributes
    ----------
    classes_ : array, or a list of arrays for 2-D y
    outputs_2d_ : bool
    n_features_in_, feature_names_in_, n_samples_fit_, effective_metric_
    """

    def __init__(self, n_neighbors: int = 5, *, weights: str | Callable = "uniform",
                 algorithm: str = "brute", metric: str = "minkowski", p: float = 2,
                 executor: None | str | Mapping[str, Any] | Executor = None,
                 block_size: int | None = None, vote_ties: str = "smallest"):
        super().__init__(n_neighbors, algorithm=algorithm, metric=metric, p=p,
                         executor=executor, block_size=block_size)
        self.weights = weights
        self.vote_ties = vote_ties

    def fit(self, X: Any, y: Any) -> KNeighborsClassifier:
        """Validate and remember the training set and its labels."""
        self._check_params()
        if self.vote_ties not in ("smallest", "nearest"):
            raise InvalidParameterError(
                f"vote_ties must be 'smallest' or 'nearest', got {self.vote_ties!r}")
        X, y = validate_data(self, X, y, multi_output=True, order="C", ensure_all_finite=False)
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            if y.ndim != 1:
                warnings.warn("A column-vector y was passed when a 1d array was expected. "
                              "Please change the shape of y to (n_samples,), for example "
                              "using ravel().", DataConversionWarning, stacklevel=2)
            self.outputs_2d_ = False
            y = y.reshape((-1, 1))
        else:
            self.outputs_2d_ = True
        check_classification_targets(y)
        classes, codes = [], np.empty(y.shape, dtype=np.intp)
        for j in range(y.shape[1]):
            c, codes[:, j] = np.unique(y[:, j], return_inverse=True)
            classes.append(c)
        self.classes_ = classes if self.outputs_2d_ else classes[0]
        self._codes = codes
        self._finish_fit(X)
        return self

    def _neighbours(self, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if self.weights in (None, "uniform"):
            return self.kneighbors(X, return_distance=False), None
        dist, ind = self.kneighbors(X)
        w = _weights(dist, self.weights)
        _check_some_weight(w)
        return ind, w

    def predict(self, X: Any) -> np.ndarray:
        """The voted label of each query (X None: each training point, left out)."""
        check_is_fitted(self)
        ind, w = self._neighbours(X)
        classes: list[Any] = list(self.classes_) if self.outputs_2d_ else [self.classes_]
        out = np.empty((len(ind), len(classes)), dtype=classes[0].dtype)
        for j, cls in enumerate(classes):
            out[:, j] = cls.take(vote(self._codes[ind, j], w, ties=self.vote_ties, fallback=0))
        return out if self.outputs_2d_ else out.ravel()

    def predict_proba(self, X: Any):
        """Vote shares per class, classes in ``classes_`` order (a list for 2-D y)."""
        check_is_fitted(self)
        ind, w = self._neighbours(X)
        classes = self.classes_ if self.outputs_2d_ else [self.classes_]
        probas = [class_scores(self._codes[ind, j], len(cls), w) for j, cls in enumerate(classes)]
        return probas if self.outputs_2d_ else probas[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class KNeighborsRegressor(RegressorMixin, MultiOutputMixin, _KNeighborsBase):
    """k-nearest-neighbour mean, as ``sklearn.neighbors.KNeighborsRegressor``, exact.

    Parameters
    ----------
    n_neighbors : int, default 5
    weights : {"uniform", "distance"} or callable, default "uniform"
        The prediction is the neighbours' (weighted) mean, with scikit-learn's
        arithmetic.
    algorithm, metric, p, executor, block_size
        As for :class:`NearestNeighbors`.
    """

    def __init__(self, n_neighbors: int = 5, *, weights: str | Callable = "uniform",
                 algorithm: str = "brute", metric: str = "minkowski", p: float = 2,
                 executor: None | str | Mapping[str, Any] | Executor = None,
                 block_size: int | None = None):
        super().__init__(n_neighbors, algorithm=algorithm, metric=metric, p=p,
                         executor=executor, block_size=block_size)
        self.weights = weights

    def fit(self, X: Any, y: Any) -> KNeighborsRegressor:
        """Validate and remember the training set and its targets (1-D or 2-D)."""
        self._check_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, order="C",
                             ensure_all_finite=False)
        self._y = y
        self._finish_fit(X)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The neighbours' mean target (weighted with ``weights``)."""
        check_is_fitted(self)
        if self.weights in (None, "uniform"):
            ind, w = self.kneighbors(X, return_distance=False), None
        else:
            dist, ind = self.kneighbors(X)
            w = _weights(dist, self.weights)
        y = self._y.reshape((-1, 1)) if self._y.ndim == 1 else self._y
        if w is None:
            pred = np.mean(y[ind], axis=1)
        else:
            pred = np.empty((len(ind), y.shape[1]), dtype=np.float64)
            denom = np.sum(w, axis=1)
            for j in range(y.shape[1]):
                pred[:, j] = np.sum(y[ind, j] * w, axis=1) / denom
        return pred.ravel() if self._y.ndim == 1 else pred
