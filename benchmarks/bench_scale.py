"""Exact k-NN as the training set grows: MNIST-8M prefixes, brute force vs pruned.

MNIST's 10,000 test images (1-NN) against the first N rows of MNIST-8M (MNIST plus
deformed copies, uint8, 4,000-row blocks, generated once into a local store and
kept between runs under $SHARDWREN_BENCH_STORE, default /tmp/sw-bench-scale), 2
workers. Per N: wall time of each method in the same run, their ratio, bytes read
from the store by the job's tasks, the largest worker peak RSS, the driver's peak
RSS, and the accuracy; beside each, the capacity model's prediction
(:mod:`shardwren.capacity`, calibrated on the same workers at the start of the run,
given the run's m and exact distances per query) and measured / predicted.

Usage: python benchmarks/bench_scale.py [N ...]   (default 60000 240000 960000)
       python benchmarks/bench_scale.py 8100000 --pruned-only
"""

from __future__ import annotations

import os
import sys

from _common import in_subprocess, report

NATIVE = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
STORE = os.environ.get("SHARDWREN_BENCH_STORE", "/tmp/sw-bench-scale")


def _driver_peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _driver_peak() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def calibrate() -> dict:
    from dataclasses import asdict

    import shardwren
    from shardwren import capacity

    with shardwren.default_executor(workers=2, store=f"file://{STORE}", progress=False) as ex:
        return asdict(capacity.calibrate(ex, name="bench-scale"))


def predict(profile: dict, n: int, nq: int, method: str, m: dict) -> dict:
    from shardwren import capacity

    p = capacity.Profile(**{**profile, "notes": tuple(profile.get("notes", ()))})
    est = capacity.knn(n, nq, 784, 1, 2, method, p, 4000, 1, m=m.get("m") or 32,
                       exact_per_query=m.get("exact_per_query"))
    return {"wall_s": est.wall_s, "bytes_read": est.bytes_read,
            "peak_task_memory": est.peak_task_memory, "worker_peak": est.worker_peak}


def run(n: int, methods: list) -> dict:
    import time

    import numpy as np

    import shardwren
    from shardwren import mnist8m
    from shardwren.datasets import load_mnist
    from shardwren.linalg import knn
    from shardwren.matrix import ShardedMatrix

    _, _, Xt, yt = load_mnist(download=False)
    out: dict = {"n": n}
    # One executor per method: a worker's peak RSS then counts its own job's cache, not
    # blocks the other method left in it.
    for method in methods:
        with shardwren.default_executor(workers=2, store=f"file://{STORE}", progress=False) as ex:
            if "generate_s" not in out:
                t = time.perf_counter()
                X, Y = mnist8m.generate(n, key=f"mnist8m-{n}", executor=ex)
                out["generate_s"] = time.perf_counter() - t
                y = Y.numpy()[:, 0]
                Q = ShardedMatrix.from_numpy(Xt.astype(np.uint8), "mnist-test-u8", (4000, 784),
                                             store=ex.store)
            before = {job.job_id for job in ex.history}
            tm: dict = {}
            _driver_peak_reset()
            t = time.perf_counter()
            _, idx = knn(X, Q, 1, executor=ex, method=method, timings=tm)
            wall = time.perf_counter() - t
            recs = [r for job in ex.history if job.job_id not in before for r in job.records]
            out[method] = {
                "wall_s": wall, "accuracy": float(np.mean(y[idx[:, 0]] == yt)),
                "bytes_read": sum(r.get("bytes_read") or 0 for r in recs),
                "worker_peak": max((r.get("peak_rss") or 0 for r in recs), default=0),
                "driver_peak": _driver_peak(), "tasks": len(recs),
                "exact_per_query": tm.get("exact_per_query"), "m": tm.get("m"),
                "fit_s": tm.get("fit"), "query_s": tm.get("query")}
    out["data_bytes"] = n * 784
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    methods = ["pruned"] if "--pruned-only" in argv else ["brute", "pruned"]
    sizes = [int(a) for a in argv if a.isdigit()] or [60000, 240000, 960000]
    try:
        from shardwren.datasets import load_mnist

        load_mnist(download=False)
    except Exception as exc:  # noqa: BLE001
        print(f"scale benchmark skipped: MNIST not available ({exc})", file=sys.stderr)
        return
    rows, raw = [], []
    profile = in_subprocess("bench_scale", "calibrate", env=NATIVE)
    for n in sizes:
        r = in_subprocess("bench_scale", "run", n, methods, env=NATIVE)
        for method in methods:
            r[method]["model"] = predict(profile, n, 10000, method, r[method])
        raw.append(r)
        p = r["pruned"]
        row = {"metric": f"1-NN, {n:,} training rows: pruned", "ours": p["wall_s"], "unit": "s"}
        if "brute" in r:
            row.update(peer="shardwren brute force", peer_value=r["brute"]["wall_s"],
                       ratio=r["brute"]["wall_s"] / p["wall_s"], target="pruned <= 0.15x brute")
        rows.append(row)
        for method in methods:
            m = r[method]
            print(f"N={n:>9,} {method:6}: {m['wall_s']:8.1f} s, accuracy {m['accuracy']:.4f}, "
                  f"read {m['bytes_read'] / 1e9:6.2f} GB ({m['bytes_read'] / r['data_bytes']:.2f}x "
                  f"the data), worker peak {m['worker_peak'] / 1e9:.2f} GB, driver peak "
                  f"{m['driver_peak'] / 1e9:.2f} GB, {m['tasks']} tasks"
                  + (f", m={m['m']}, {m['exact_per_query']:.1f} exact/query"
                     if m.get("exact_per_query") else ""))
            e = m["model"]
            print(f"{'':11} model : {e['wall_s']:8.1f} s (measured/model "
                  f"{m['wall_s'] / e['wall_s']:.2f}), read {e['bytes_read'] / 1e9:6.2f} GB "
                  f"(measured/model {m['bytes_read'] / max(e['bytes_read'], 1):.2f}), worker peak "
                  f"{e['worker_peak'] / 1e9:.2f} GB (measured/model "
                  f"{m['worker_peak'] / max(e['worker_peak'], 1):.2f})")
    report("scale", rows, {"raw": raw, "profile": profile})


if __name__ == "__main__":
    main()
