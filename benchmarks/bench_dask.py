"""Dask backend overhead: MNIST test 1-NN through Dask vs the local backend.

Same run, same data already sharded on a local (shared) path, same BLAS kernel:
the local backend with 2 worker processes, then a Dask cluster of 2 worker
processes with one thread each. Target (issue 5): Dask overhead <= 15%.
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from _common import in_subprocess, median_time, report

NATIVE = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
NOOPS = 3000


def both(store_dir: str) -> dict:
    import numpy as np
    from distributed import LocalCluster

    import shardwren
    from shardwren.backends.dask import tune_workers
    from shardwren.datasets import load_mnist
    from shardwren.linalg import knn
    from shardwren.matrix import ShardedMatrix

    X, y, Xt, yt = load_mnist(download=False)
    store = f"file://{store_dir}"
    T = ShardedMatrix.from_numpy(X, "x_train", (4000, 784), store=store)
    Q = ShardedMatrix.from_numpy(Xt, "x_test", (4000, 784), store=store)
    out = {}
    with shardwren.default_executor(workers=2, store=store, progress=False) as ex:
        out["local_s"] = median_time(lambda: knn(T, Q, 1, executor=ex), repeat=3)
        local_idx = knn(T, Q, 1, executor=ex)[1]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        with shardwren.default_executor(backend="dask", address=cluster.scheduler_address,
                                        store=store, progress=False) as ex:
            out["dask_s"] = median_time(lambda: knn(T, Q, 1, executor=ex), repeat=3)
            dask_idx = knn(T, Q, 1, executor=ex)[1]
            tune_workers(ex.backend.client)  # the README's recommended worker setting
            out["dask_tuned_s"] = median_time(lambda: knn(T, Q, 1, executor=ex), repeat=3)
            # Task throughput: no-op tasks through shardwren, and raw Dask's map + gather of
            # the same function on the same cluster.
            client = ex.backend.client
            noop = lambda x: x  # noqa: E731 - pickled by value: the workers cannot import this file
            shardwren.get_all_results(ex.map(noop, range(200)))
            client.gather(client.map(noop, range(200), pure=False))
            out["noop_ours_s"] = median_time(
                lambda: shardwren.get_all_results(ex.map(noop, range(NOOPS))), repeat=3)
            out["noop_raw_s"] = median_time(
                lambda: client.gather(client.map(noop, range(NOOPS), pure=False)), repeat=3)
    out["identical"] = bool(np.array_equal(local_idx, dask_idx))
    out["accuracy"] = float(np.mean(y[dask_idx[:, 0]] == yt))
    return out


def main() -> None:
    try:
        from shardwren.datasets import load_mnist

        load_mnist(download=False)
    except Exception as exc:  # noqa: BLE001
        print(f"dask benchmark skipped: MNIST not available ({exc})", file=sys.stderr)
        return
    tmp = tempfile.mkdtemp(prefix="sw-bench-dask-")
    try:
        r = in_subprocess("bench_dask", "both", tmp, env=NATIVE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    overhead = r["dask_s"] / r["local_s"] - 1
    tuned = r["dask_tuned_s"] / r["local_s"] - 1
    report("dask", [
        {"metric": "MNIST test 1-NN via Dask, default workers", "ours": r["dask_s"], "unit": "s",
         "peer": "shardwren local backend", "peer_value": r["local_s"],
         "ratio": r["local_s"] / r["dask_s"], "target": "overhead <= 15%"},
        {"metric": "same, workers tuned (tune_workers)", "ours": r["dask_tuned_s"], "unit": "s",
         "peer": "shardwren local backend", "peer_value": r["local_s"],
         "ratio": r["local_s"] / r["dask_tuned_s"], "target": "overhead <= 15%"},
        {"metric": f"{NOOPS:,} no-op tasks via Dask", "ours": NOOPS / r["noop_ours_s"],
         "unit": "tasks/s", "peer": "raw Dask client.map + gather",
         "peer_value": NOOPS / r["noop_raw_s"], "ratio": r["noop_raw_s"] / r["noop_ours_s"],
         "target": "none (measured)"},
    ], {"raw": r, "overhead": overhead, "overhead_tuned": tuned})
    print(f"Dask overhead {overhead * 100:+.1f}% with default workers, {tuned * 100:+.1f}% with "
          f"tune_workers(); results identical to the local backend: {r['identical']}; "
          f"accuracy {r['accuracy']:.4f}")

if __name__ == "__main__":
    main()
