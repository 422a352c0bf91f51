"""shardwren.linalg.KNeighborsClassifier vs sklearn.neighbors.KNeighborsClassifier(algorithm="brute").

MNIST, fit on the 60,000 training images, predict the 10,000 test images; each
peer in its own process, in the same run. Ours runs on a shared executor of 2
local workers described by a settings dict (as a user writes it); "cold" includes
starting those workers and sharding the training set, "warm" is a fresh
estimator's fit + predict while the shared workers are up (the GridSearchCV
case). scikit-learn uses its default OpenMP threads (one per core). The
predictions of both are compared.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

from _common import NATIVE, in_subprocess, median_time, report
KS = (1, 5)


def _data():
    from shardwren.datasets import load_mnist

    return load_mnist(download=False)


def ours_run(store_dir: str, k: int, repeat: int = 3) -> dict:
    import numpy as np

    from shardwren.linalg import KNeighborsClassifier

    X, y, Xt, yt = _data()
    where = {"workers": 2, "store": f"file://{store_dir}", "progress": False}
    res = {}

    def run():
        res["pred"] = KNeighborsClassifier(k, executor=where).fit(X, y).predict(Xt)

    t = time.perf_counter()
    run()
    cold = time.perf_counter() - t
    warm = median_time(run, repeat=repeat, warmup=0)
    return {"cold_s": cold, "warm_s": warm, "acc": float(np.mean(res["pred"] == yt)),
            "pred": res["pred"].tolist()}


def sklearn_run(k: int) -> dict:
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    X, y, Xt, yt = _data()
    res = {}

    def run():
        res["pred"] = KNeighborsClassifier(k, algorithm="brute").fit(X, y).predict(Xt)

    t = median_time(run, repeat=1, warmup=0)
    return {"s": t, "acc": float(np.mean(res["pred"] == yt)), "pred": res["pred"].tolist()}


def main() -> None:
    try:
        _data()
    except Exception as exc:  # noqa: BLE001
        print(f"sklearn benchmark skipped: MNIST not available ({exc})", file=sys.stderr)
        return
    rows, raw = [], {}
    for k in KS:
        tmp = tempfile.mkdtemp(prefix="sw-bench-sklearn-")
        try:
            ours = in_subprocess("bench_sklearn", "ours_run", tmp, k, env=NATIVE)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sk = in_subprocess("bench_sklearn", "sklearn_run", k, env=NATIVE)
        same = ours.pop("pred") == sk.pop("pred")
        raw[f"k={k}"] = {"shardwren": ours, "sklearn": sk, "identical_predictions": same}
        peer = "sklearn KNeighborsClassifier brute"
        rows.append({"metric": f"MNIST fit + predict, k={k} (warm)", "ours": ours["warm_s"],
                     "unit": "s", "peer": peer, "peer_value": sk["s"],
                     "ratio": sk["s"] / ours["warm_s"]})
        rows.append({"metric": f"MNIST fit + predict, k={k} (cold: workers start)",
                     "ours": ours["cold_s"], "unit": "s", "peer": peer, "peer_value": sk["s"],
                     "ratio": sk["s"] / ours["cold_s"]})
    report("sklearn", rows, {"raw": raw})
    for k in KS:
        r = raw[f"k={k}"]
        print(f"k={k}: accuracy shardwren {r['shardwren']['acc']:.4f}, sklearn "
              f"{r['sklearn']['acc']:.4f}; identical predictions: {r['identical_predictions']}")


if __name__ == "__main__":
    main()
