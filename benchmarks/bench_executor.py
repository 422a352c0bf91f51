"""Executor overhead: no-op map throughput and call_async round-trip latency.

Peers, each in its own process: concurrent.futures.ProcessPoolExecutor(2) and a
Dask LocalCluster with 2 worker processes. Targets (issue 2): >= 5,000 tasks/s
for a 2,000-task map, round trip p50 <= 1 ms.
"""

from __future__ import annotations

import statistics
import sys
import time

from _common import in_subprocess, median_time, report

N_TASKS = 2000
N_CALLS = 300


def noop(x):
    return x


def _measure(submit_many, submit_one) -> dict:
    rate = N_TASKS / median_time(submit_many, repeat=5)
    lat = []
    for _ in range(N_CALLS):
        t = time.perf_counter()
        submit_one()
        lat.append(time.perf_counter() - t)
    return {"tasks_per_s": rate, "rtt_p50_ms": statistics.median(lat[20:]) * 1e3}


def shardwren_run() -> dict:
    import shardwren

    with shardwren.default_executor(workers=2, store="memory://bench", progress=False) as ex:
        return _measure(lambda: shardwren.wait(ex.map(noop, range(N_TASKS))),
                        lambda: ex.call_async(noop, 1).result())


def cf_run() -> dict:
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(2) as pool:
        return _measure(lambda: cf.wait([pool.submit(noop, i) for i in range(N_TASKS)]),
                        lambda: pool.submit(noop, 1).result())


def dask_run() -> dict:
    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return _measure(lambda: wait(client.map(noop, range(N_TASKS), pure=False)),
                        lambda: client.submit(noop, 1, pure=False).result())


def main() -> None:
    ours = in_subprocess("bench_executor", "shardwren_run")
    cf = in_subprocess("bench_executor", "cf_run")
    try:
        dask = in_subprocess("bench_executor", "dask_run")
    except RuntimeError as exc:
        print(f"dask peer skipped: {exc}", file=sys.stderr)
        dask = None
    rows = []
    for peer_name, peer in (("concurrent.futures(2)", cf), ("dask LocalCluster(2)", dask)):
        if peer is None:
            continue
        rows.append({"metric": "map of 2,000 no-op tasks", "ours": ours["tasks_per_s"],
                     "unit": "tasks/s", "peer": peer_name, "peer_value": peer["tasks_per_s"],
                     "ratio": ours["tasks_per_s"] / peer["tasks_per_s"], "target": ">= 5000 tasks/s"})
        rows.append({"metric": "call_async().result() round trip p50", "ours": ours["rtt_p50_ms"],
                     "unit": "ms", "peer": peer_name, "peer_value": peer["rtt_p50_ms"],
                     "ratio": peer["rtt_p50_ms"] / ours["rtt_p50_ms"], "target": "<= 1 ms"})
    report("executor", rows, {"raw": {"shardwren": ours, "concurrent.futures": cf, "dask": dask}})


if __name__ == "__main__":
    main()
