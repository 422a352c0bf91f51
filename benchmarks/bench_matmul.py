"""Blocked matmul from and to a local store vs numpy (in memory) and Dask on the same Zarr arrays.

16,384 x 16,384 float32 times 16,384 x 16,384 (1 GiB each) by default
(``SHARDWREN_BENCH_MATMUL_N`` to change). Each peer runs in its own process with
the same BLAS kernel; numpy's time excludes loading; ours and Dask's include
reading and writing the store. Targets (issue 7): >= 85% of numpy's rate and
>= 1.5x Dask's; peak memory of the driver and of each worker printed.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

from _common import in_subprocess, report

NATIVE = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
N = int(os.environ.get("SHARDWREN_BENCH_MATMUL_N", 16384))
BLOCK = 4096


def _peak_rss() -> int:
    """This process's own peak RSS. Not ru_maxrss: that survives fork and exec, so a
    child would report its parent's peak (run_all.py's, after the MNIST benchmarks)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_data(root: str, n: int) -> None:
    """A and B written block by block: no process ever holds a whole matrix."""
    import numpy as np

    from shardwren.matrix import ShardedMatrix

    for name, seed in (("A", 1), ("B", 2)):
        m = ShardedMatrix(name, shape=(n, n), shard_sizes=(BLOCK, BLOCK), dtype="float32",
                          store=f"file://{root}")
        for i, j in m.block_idxs:
            rng = np.random.default_rng([seed, i, j])
            m.put_block(i, j, rng.standard_normal(m.block_shape(i, j), dtype=np.float32))


def ours(root: str) -> dict:
    import shardwren
    from shardwren.linalg import matmul, plan
    from shardwren.matrix import ShardedMatrix

    store = f"file://{root}"
    A, B = ShardedMatrix("A", store=store), ShardedMatrix("B", store=store)
    with shardwren.default_executor(workers=2, store=store, progress=False) as ex:
        p = plan(matmul, A, B, ex)
        t = time.perf_counter()
        C = matmul(A, B, executor=ex, key="C_ours")
        wall = time.perf_counter() - t
        worker_peak = max(r["peak_rss"] for r in ex.history[-1][2])
    return {"s": wall, "flops": p.flops, "tasks": p.tasks, "driver_peak": _peak_rss(),
            "worker_peak": worker_peak, "check": float(C.get_block(0, 0)[0, 0])}


def numpy_peer(root: str) -> dict:
    import numpy as np

    from shardwren.matrix import ShardedMatrix

    A = ShardedMatrix("A", store=f"file://{root}").numpy()
    B = ShardedMatrix("B", store=f"file://{root}").numpy()
    np.matmul(A[:512], B[:, :512])  # warm up BLAS
    t = time.perf_counter()
    C = np.matmul(A, B)
    return {"s": time.perf_counter() - t, "peak": _peak_rss(), "check": float(C[0, 0])}


def dask_peer(root: str) -> dict:
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # 2 scheduler threads x 1 BLAS thread = the 2 cores
    A = da.from_zarr(f"file://{root}/A")
    B = da.from_zarr(f"file://{root}/B")
    t = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        da.to_zarr(A @ B, f"{root}/C_dask", overwrite=True)
    wall = time.perf_counter() - t
    import zarr

    return {"s": wall, "peak": _peak_rss(),
            "check": float(zarr.open_array(f"{root}/C_dask")[0, 0])}


def main() -> None:
    root = tempfile.mkdtemp(prefix="sw-bench-matmul-")
    try:
        in_subprocess("bench_matmul", "make_data", root, N, env=NATIVE)
        us = in_subprocess("bench_matmul", "ours", root, env=NATIVE)
        npy = in_subprocess("bench_matmul", "numpy_peer", root, env=NATIVE)
        dsk = in_subprocess("bench_matmul", "dask_peer", root, env=NATIVE)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    flops = 2 * N ** 3
    rate = {k: flops / v["s"] / 1e9 for k, v in (("ours", us), ("numpy", npy), ("dask", dsk))}
    assert abs(us["check"] - npy["check"]) <= 1e-2 * max(1, abs(npy["check"])), (us, npy)
    report("matmul", [
        {"metric": f"{N}^2 float32 matmul, store to store", "ours": rate["ours"], "unit": "GFLOP/s",
         "peer": "numpy.matmul in memory", "peer_value": rate["numpy"],
         "ratio": rate["ours"] / rate["numpy"], "target": ">= 0.85 of numpy's rate"},
        {"metric": f"{N}^2 float32 matmul, store to store", "ours": rate["ours"], "unit": "GFLOP/s",
         "peer": "dask.array from_zarr @ to_zarr", "peer_value": rate["dask"],
         "ratio": rate["ours"] / rate["dask"], "target": ">= 1.5x Dask's rate"},
    ], {"raw": {"shardwren": us, "numpy": npy, "dask": dsk}, "n": N})
    print(f"times: shardwren {us['s']:.1f} s ({us['tasks']} tasks), numpy {npy['s']:.1f} s, "
          f"dask {dsk['s']:.1f} s")
    print(f"peak RSS: shardwren driver {us['driver_peak'] / 2**20:.0f} MiB, each worker <= "
          f"{us['worker_peak'] / 2**20:.0f} MiB; numpy process {npy['peak'] / 2**20:.0f} MiB; "
          f"dask process {dsk['peak'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
