"""Capacity model: what a k-NN or matmul job will cost before it runs.

Predicts wall time, bytes read and written, store requests and peak memory per
task, for a job of given sizes on W workers, from per-unit costs *measured* on a
machine (:func:`calibrate` times a few real task kernels on the executor's own
workers) or *assumed* for a platform not at hand (:data:`LAMBDA`, every assumption
written next to its number). ``shardwren plan`` prints it; ``docs/capacity.md``
checks it against measured runs and extrapolates to 1,000 workers.

The model is deliberately simple: each task's time is the sum of its kernels'
work (flops at the measured GEMM rate, passes over bound tiles, exact distances,
bytes at the measured read rate) plus a fixed per-task overhead; a map of T tasks
on W workers takes ``ceil(T / W)`` waves of its slowest task, plus the driver's
work between maps. Tasks of one map are alike in these algorithms, so waves are
a good approximation; stragglers and noisy neighbours are not modelled.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Profile:
    """Per-unit costs of one worker (seconds per unit) and platform facts."""

    name: str
    gemm32_s_per_flop: float       # float32 GEMM with a long inner dimension (784)
    gemm32_thin_s_per_flop: float  # float32 GEMM with a short one (m + 4 = 36): output-bound
    select_s_per_pair: float       # the selection passes over an estimate/bound tile, per entry
    exact_s_per_feature: float     # one exact float64 distance and its fold into the
    #                                query's best, per feature
    project_s_per_feature: float   # centring a training row for its projection, per feature
    #                                (the projection's GEMM is charged at gemm32_s_per_flop)
    read_bytes_per_s: float        # store -> memory, one worker
    write_bytes_per_s: float       # memory -> store, one worker
    task_overhead_s: float         # scheduling, pickling, result hand-back, per task
    request_s: float = 0.0         # latency of one store request (object stores)
    startup_s: float = 0.0         # a worker's cold start (serverless)
    memory_per_worker: int = 4 << 30
    fit_s: float = 0.5                  # pruned fit (8,000-row sample, PCA, choice of m):
    #                                     0.49 s at 60k-960k rows on the development machine
    worker_base_bytes: int = 150 << 20  # an idle worker's RSS (interpreter, numpy, BLAS)
    cache_bytes: int = 1 << 30          # the worker's block cache bound (SHARDWREN_WORKER_CACHE)
    usd_per_gb_s: float = 0.0      # serverless price of memory-time
    usd_per_request: float = 0.0   # serverless price of one invocation
    notes: tuple[str, ...] = ()
    max_task_s: float = 0.0        # the platform kills a task after this long (0: no limit)
    exact_int_s_per_feature: float = 0.0  # the same for 8- and 16-bit integer rows
    #                                       (kernels' integer path; 0: unknown, use the above)

    def exact_cost(self, integers: bool) -> float:
        """Seconds per feature of one exact distance between integer rows or others."""
        return self.exact_int_s_per_feature if integers and self.exact_int_s_per_feature \
            else self.exact_s_per_feature

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        doc = json.loads(Path(path).read_text())
        doc["notes"] = tuple(doc.get("notes", ()))
        return cls(**doc)


#: AWS Lambda with 10 GB of memory (6 vCPUs), arm-less x86_64, in one region with S3.
#: Assumptions, not measurements: AVX2 sgemm at ~35 GFLOP/s per vCPU (6 vCPUs ~ 200
#: GFLOP/s, half of one AVX-512 core-pair here), S3 GETs at ~90 MB/s per function
#: with ~20 ms first-byte latency, 1.5 s cold start with shardwren's runtime image,
#: ~40 ms per-invocation overhead through Lithops, us-east-1 prices of 2026-11
#: (x86: $0.0000166667 per GB-s, $0.20 per million requests).
LAMBDA = Profile(
    name="aws-lambda-10GB",
    gemm32_s_per_flop=1 / 200e9, gemm32_thin_s_per_flop=1 / 60e9,
    select_s_per_pair=1.6e-9, exact_s_per_feature=3.4e-9, project_s_per_feature=4e-12,
    exact_int_s_per_feature=1.5e-9,
    read_bytes_per_s=90e6, write_bytes_per_s=70e6, task_overhead_s=0.04,
    request_s=0.02, startup_s=1.5, memory_per_worker=10 << 30,
    usd_per_gb_s=0.0000166667, usd_per_request=0.2e-6,
    notes=("sgemm ~35 GFLOP/s per vCPU (AVX2), 6 vCPUs at 10 GB",
           "S3 ~90 MB/s per function, 20 ms per request", "cold start 1.5 s",
           "prices: us-east-1 x86, 2026-11",
           "exact distances (with the fold into each query's best) at 1.5x the "
           "development machine's: 3.4 ns per feature, 1.5 ns on 8- and 16-bit integers"),
    max_task_s=900.0)  # Lambda's 15-minute limit per invocation


@dataclass
class Estimate:
    """A job's predicted cost (see :func:`knn` and :func:`matmul`)."""

    job: str
    workers: int
    tasks: int
    wall_s: float
    task_s: float                  # sum of task times (worker-seconds)
    bytes_read: float
    bytes_written: float
    requests: int
    peak_task_memory: float
    phases: dict[str, float] = field(default_factory=dict)
    worker_peak: float = 0.0       # a worker's peak RSS: idle process + cache + one task
    usd: float | None = None
    notes: list[str] = field(default_factory=list)
    slowest_task_s: float = 0.0    # the longest single task (what a per-task limit sees)

    def __str__(self) -> str:
        from .sources import human_bytes

        cost = f", ${self.usd:.2f}" if self.usd is not None else ""
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items())
        return (f"{self.job} on {self.workers} workers: {self.wall_s:.1f} s wall "
                f"({phases}); {self.tasks} tasks, {self.task_s:.0f} worker-s{cost}; reads "
                f"{human_bytes(self.bytes_read)}, writes {human_bytes(self.bytes_written)}, "
                f"{self.requests} store requests; peak {human_bytes(self.peak_task_memory)} "
                f"per task, {human_bytes(self.worker_peak)} per worker" + "".join(f"\n  note: {n}" for n in self.notes))


def _waves(tasks: int, workers: int, per_task: float, startup: float) -> float:
    return startup + math.ceil(tasks / max(1, workers)) * per_task


def _usd(p: Profile, task_s: float, tasks: int, workers: int) -> float | None:
    if not p.usd_per_gb_s:
        return None
    return task_s * p.memory_per_worker / 2**30 * p.usd_per_gb_s + tasks * p.usd_per_request


def knn(n_train: int, n_query: int, d: int, k: int = 1, workers: int = 2,
        method: str = "brute", profile: Profile | None = None, block: int = 4000,
        itemsize: int = 4, m: int = 32, exact_per_query: float | None = None,
        constant_columns: int = 0, integers: bool | None = None,
        dtype: str | np.dtype | None = None) -> Estimate:
    """Predicted cost of ``shardwren.linalg.knn`` (query-vs-train, or train-vs-train
    when ``n_query`` is 0... use ``n_query = n_train`` for leave-one-out sizes).

    ``exact_per_query`` (exact distances per query over the whole job, from
    ``timings`` of a measured run) defaults to k per tile for brute force and 30 k for
    pruned queries. ``integers`` (the rows are small integers, or floats holding only
    such, so exact distances take the integer path) defaults to ``itemsize <= 2``, or,
    given the stored ``dtype`` (which sets ``itemsize``), to whether it is an 8- or
    16-bit integer type (float16 is not).
    """
    p = profile or local_profile()
    if dtype is not None:
        dt = np.dtype(dtype)
        itemsize = dt.itemsize
        if integers is None:
            integers = dt.kind in "iub" and dt.itemsize <= 2
    integers = itemsize <= 2 if integers is None else integers
    exact_s = p.exact_cost(integers)
    # Workers cache raw blocks of small integers narrowed (8 or 16 bits; pixels stored as
    # float32 take one byte, counted here as two).
    raw_item = min(itemsize, 2) if integers else itemsize
    nb_t, nb_q = -(-n_train // block), -(-n_query // block)
    dk = d - constant_columns
    data = n_train * d * itemsize
    qdata = n_query * d * itemsize
    if method == "brute":
        tiles = nb_q * nb_t
        # Exact distances per query over the whole job (timings["exact_per_query"]),
        # spread over its nb_t tiles; about k per tile when no run says otherwise.
        exact_total = exact_per_query if exact_per_query is not None else k * nb_t
        pairs = block * block
        per_tile = (2 * pairs * (dk + 2) * p.gemm32_s_per_flop + pairs * p.select_s_per_pair
                    + exact_total / nb_t * block * d * exact_s
                    + p.task_overhead_s)
        prep_task = block * d * itemsize / p.read_bytes_per_s + p.task_overhead_s
        phases = {"prepare": _waves(nb_t, workers, prep_task, p.startup_s),
                  "tiles": _waves(tiles, workers, per_tile + 2 * block * d * itemsize /
                                  p.read_bytes_per_s * min(1.0, workers / max(nb_q, 1)),
                                  p.startup_s)}
        tasks = tiles + nb_t
        # Centred float32 blocks (and their norms) stay in the worker's cache, beside
        # the raw blocks they came from (mapped and resident once read, or narrowed).
        cached: float = (n_train + n_query) * ((dk + 2) * 4 + d * raw_item)
        # The column statistics read the training data once. A tile reads its two
        # blocks; while they all fit in a worker's cache, no worker reads more than the
        # whole data once; past it, the training blocks are read again for every query
        # block (tiles run query block by query block).
        block_bytes = block * d * itemsize
        if cached <= p.cache_bytes:
            tile_reads = min(tiles * 2 * block_bytes, min(workers, tiles) * (data + qdata))
        else:
            tile_reads = nb_q * data + min(workers, tiles) * qdata
        reads = data + tile_reads
        task_s = nb_t * prep_task + tiles * per_tile
        slowest = max(prep_task, per_tile + 2 * block * d * itemsize / p.read_bytes_per_s)
        peak = 2 * block * (dk + 2) * 4 + 2 * block * d * itemsize + 1024 * block * 4
    elif method == "pruned":
        from .linalg.pruned import sample_block_count

        n_sample = sample_block_count(nb_t)
        groups = -(-n_query // 20000)
        ranges = max(1, -(-(nb_t - n_sample) // 16))
        ranges = max(ranges, min(nb_t - n_sample, 2 * workers))
        exact = exact_per_query if exact_per_query is not None else 30 * k
        per_pair = 2 * (m + 4) * p.gemm32_thin_s_per_flop + p.select_s_per_pair
        per_row = d * p.project_s_per_feature + 2 * d * (m + 1) * p.gemm32_s_per_flop
        project = n_train * per_row
        work1 = n_query * n_sample * block * per_pair + n_sample * block * per_row * \
            min(workers, max(1, n_query // 256))
        work2 = n_query * (n_train - n_sample * block) * per_pair + project
        work_exact = n_query * exact * d * exact_s
        t1 = work1 / workers + p.task_overhead_s
        per_range = (work2 + work_exact) / (ranges * groups) + p.task_overhead_s + \
            data / (ranges * groups) / p.read_bytes_per_s + qdata / p.read_bytes_per_s
        phases = {"fit": p.fit_s, "sample": t1 + p.startup_s,
                  "ranges": _waves(ranges * groups, workers, per_range, 0.0)}
        tasks = ranges * groups + min(workers, max(1, n_query // 256)) * groups
        reads = groups * data + tasks * qdata + 8000 * d * itemsize
        task_s = work1 + work2 + work_exact + tasks * p.task_overhead_s + groups * data / \
            p.read_bytes_per_s
        slowest = max(t1, per_range)
        peak = 1024 * block * 4 + min(n_query, 20000) * (d * itemsize + (m + 4) * 4) + \
            block * (d * itemsize + (m + 4) * 4)
        # The cache keeps query slices (a group's, and the smaller ones of the sample
        # phase: 1.5 groups' worth) and the training blocks a worker has projected (raw
        # rows, mapped, and their m + 4 columns; every worker projects the sample blocks).
        cached = (1.5 * min(n_query, 20000) + min(n_train, n_train / workers + n_sample * block)) \
            * (d * raw_item + (m + 4) * 4)
    else:
        raise ValueError(f"method must be 'brute' or 'pruned', got {method!r}")
    requests = int(reads // max(1, block * d * itemsize)) + 1
    return Estimate(f"{k}-NN {method}, {n_query:,} queries x {n_train:,} rows x {d} features",
                    workers, tasks, sum(phases.values()), task_s, reads, 0, requests, peak,
                    phases, worker_peak=p.worker_base_bytes + min(p.cache_bytes, cached) + peak,
                    usd=_usd(p, task_s, tasks, workers), notes=list(p.notes),
                    slowest_task_s=slowest)


def matmul(n: int, inner: int, mcols: int, workers: int = 2, profile: Profile | None = None,
           block: int = 4096, itemsize: int = 4) -> Estimate:
    """Predicted cost of ``shardwren.linalg.matmul`` of an ``n x inner`` by an
    ``inner x mcols`` matrix in square blocks of ``block``."""
    p = profile or local_profile()
    gi, gk, gj = -(-n // block), -(-inner // block), -(-mcols // block)
    tasks = gi * gj
    flops = 2 * n * inner * mcols
    per_task = (2 * block * block * inner * p.gemm32_s_per_flop
                + 2 * gk * block * block * itemsize / p.read_bytes_per_s
                + block * block * itemsize / p.write_bytes_per_s + p.task_overhead_s
                + (2 * gk + 1) * p.request_s)
    wall = _waves(tasks, workers, per_task, p.startup_s)
    reads = tasks * 2 * gk * block * block * itemsize
    writes = n * mcols * itemsize
    task_s = tasks * per_task
    return Estimate(f"matmul {n:,} x {inner:,} x {mcols:,} ({flops / 1e12:.1f} TFLOP)", workers,
                    tasks, wall, task_s, reads, writes, tasks * (2 * gk + 1),
                    4 * block * block * itemsize, {"products": wall},
                    worker_peak=p.worker_base_bytes + 4 * block * block * itemsize,
                    usd=_usd(p, task_s, tasks, workers), notes=list(p.notes),
                    slowest_task_s=per_task)


def limits_exceeded(est: Estimate, p: Profile) -> list[str]:
    """Why ``est``'s tasks would not fit the platform of ``p`` (empty when they fit).

    A serverless function is killed past its time limit (Lambda: 15 min) and cannot
    have more memory than its largest size (Lambda: 10 GB): a plan whose slowest task
    or peak task memory exceeds either must be refused, not run and lost.
    """
    from .sources import human_bytes

    problems = []
    if p.max_task_s and est.slowest_task_s > p.max_task_s:
        problems.append(f"its slowest task would take {est.slowest_task_s:.0f} s, past the "
                        f"{p.max_task_s:.0f} s a task may run on {p.name}")
    if est.peak_task_memory > p.memory_per_worker:
        problems.append(f"a task would need {human_bytes(est.peak_task_memory)}, more than the "
                        f"{human_bytes(p.memory_per_worker)} a worker has on {p.name}")
    return problems


def check_limits(est: Estimate, p: Profile) -> None:
    """Raise :class:`~shardwren.errors.MemoryPlanError` or ``ConfigError`` if
    :func:`limits_exceeded` finds a problem; the message says to use smaller blocks."""
    from .errors import ConfigError, MemoryPlanError

    problems = limits_exceeded(est, p)
    if problems:
        cls = MemoryPlanError if est.peak_task_memory > p.memory_per_worker else ConfigError
        raise cls(f"{est.job}: refused: " + "; ".join(problems) + "; use a smaller block size")


# --- calibration -------------------------------------------------------------------------


def _timed(fn, repeat: int = 3) -> float:
    fn()
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_kernels(scratch_dir: str | None = None) -> dict[str, float]:
    """Time the kernels the model counts, in this process (one worker's view)."""
    import tempfile

    from .linalg import kernels

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    a = rng.standard_normal((1024, 786), dtype=np.float32)
    b = rng.standard_normal((4000, 786), dtype=np.float32)
    out["gemm32_s_per_flop"] = _timed(lambda: kernels.gemm_nt(a, b)) / (2 * 1024 * 4000 * 786)
    a36 = np.ascontiguousarray(a[:, :36])
    bT = np.ascontiguousarray(b[:, :36].T)
    out["gemm32_thin_s_per_flop"] = _timed(lambda: kernels.gemm(a36, bT)) / (2 * 1024 * 4000 * 36)
    S = kernels.gemm(a36, bT)
    from .linalg import pruned

    # A pruned tile's passes, as a query task makes them: group minima, the most
    # promising entries, the entries under the threshold (here a few per row).
    thr = np.partition(S, 2, axis=1)[:, 2].astype(np.float64)

    def select() -> None:
        gm = kernels.group_min(S, 1)
        pruned.promising(S, gm, 1, thr)
        kernels.below(S, thr, gm=gm)

    out["select_s_per_pair"] = _timed(select) / S.size
    # Exact distances as a query task computes them: the distances, then folding them
    # into each query's best (2 pairs per query of a 1,024-query chunk).
    X = (rng.random((4000, 784)) * 255).astype(np.float32)
    Q = (rng.random((1024, 784)) * 255).astype(np.float32)
    rows, cols = np.repeat(np.arange(1024), 2), rng.integers(0, 4000, 2048)

    def exact(q: np.ndarray, x: np.ndarray) -> None:
        pruned.fold_exact(rows, cols, 0, 0, q, x, np.full((1024, 1), np.inf),
                       np.zeros((1024, 1), np.int64), np.full(1024, np.inf), 1, False, 0)

    out["exact_s_per_feature"] = _timed(lambda: exact(Q, X)) / (2048 * 784)
    Q8, X8 = Q.astype(np.uint8), X.astype(np.uint8)
    out["exact_int_s_per_feature"] = _timed(lambda: exact(Q8, X8)) / (2048 * 784)
    P = np.linalg.qr(rng.standard_normal((784, 32)))[0].T

    t_proj = _timed(
        lambda: pruned.augment_train(X, X.mean(0, dtype=np.float64), P, 1e-4, 1 / 256))
    # What is not the projection's GEMM (centring, conversions, norms), per feature.
    t_gemm = 2 * 4000 * 784 * 33 * out["gemm32_s_per_flop"]
    out["project_s_per_feature"] = max(t_proj - t_gemm, 0.1 * t_proj) / (4000 * 784)

    with tempfile.TemporaryDirectory(dir=scratch_dir) as tmp:
        from .matrix import ShardedMatrix

        M = ShardedMatrix("cal", shape=(16000, 1024), shard_sizes=(4000, 1024),
                          dtype=np.float32, store=f"file://{tmp}")
        blk = rng.standard_normal((4000, 1024), dtype=np.float32)
        out["write_bytes_per_s"] = blk.nbytes / _timed(lambda: M.put_block(0, 0, blk), 2)
        for i in range(1, 4):
            M.put_block(i, 0, blk)
        out["read_bytes_per_s"] = 3 * blk.nbytes / _timed(
            lambda: [M.get_block(i, 0) for i in range(1, 4)], 2)
    return out


def _warm_worker(_: int) -> None:
    """What every k-NN task does first in a worker: import the kernels, run a GEMM."""
    from .linalg import kernels

    a = np.ones((256, 786), dtype=np.float32)
    kernels.gemm_nt(a, a)


def calibrate(executor: Any, name: str = "local") -> Profile:
    """Measure a :class:`Profile` on the executor's own workers (about 10 s).

    Kernel costs are timed inside one worker task (with the worker's BLAS
    threads); the per-task overhead is the round trip of empty tasks.
    """
    # A worker's base is its RSS once it has done numeric work (kernels imported, BLAS
    # buffers allocated), not a fresh one's: warm every worker first.
    # A few tasks per local core at most: a serverless backend's parallelism is its
    # concurrency quota (1,000 billed calls for nothing).
    spread = min(executor.parallelism, 2 * (os.cpu_count() or 1))
    executor.get_all_results(executor.map(_warm_worker, range(spread)))
    idle = executor.map(lambda x: x, range(spread))
    executor.get_all_results(idle)
    peaks = [f.stats.get("peak_rss") for f in idle]
    base = max((b for b in peaks if b), default=Profile.worker_base_bytes)  # None: threads
    costs = executor.call_async(lambda _: measure_kernels(), 0).result()
    t = time.perf_counter()
    executor.get_all_results(executor.map(lambda x: x, range(200)))
    overhead = (time.perf_counter() - t) / 200 * executor.parallelism
    from .linalg._cache import CACHE

    return Profile(name=name, task_overhead_s=max(overhead, 1e-4), worker_base_bytes=int(base),
                   cache_bytes=CACHE.max_bytes,
                   notes=(f"measured on {executor.parallelism} workers of backend "
                          f"{executor.backend.name} on {time.strftime('%Y-%m-%d')}",), **costs)


def profile_path(name: str = "local") -> Path:
    return Path(os.environ.get("SHARDWREN_HOME", "~/.shardwren")).expanduser() / f"profile-{name}.json"


#: Per-unit costs measured on the development machine (see docs/capacity.md), used
#: when no calibration of this machine has been saved.
DEV_MACHINE = Profile(
    name="dev-machine", gemm32_s_per_flop=1 / 160e9, gemm32_thin_s_per_flop=1 / 60e9,
    select_s_per_pair=0.77e-9, exact_s_per_feature=2.3e-9, project_s_per_feature=2e-12,
    exact_int_s_per_feature=1.0e-9, read_bytes_per_s=2e9, write_bytes_per_s=1e9, task_overhead_s=0.002,
    notes=("defaults measured on the 2-core development machine; run `shardwren plan "
           "calibrate` for this one",))


#: Note added to a profile saved before calibrations timed exact distances with their
#: fold into each query's best, and the integer path (its exact costs are too low).
STALE_NOTE = ("calibrated by an older shardwren, which under-priced exact distances: "
              "run `shardwren plan calibrate` again")


def local_profile() -> Profile:
    """The saved calibration of this machine, else the development machine's figures."""
    path = profile_path()
    if path.exists():
        try:
            p = Profile.load(path)
        except (OSError, ValueError, TypeError):
            return DEV_MACHINE
        if not p.exact_int_s_per_feature:
            p = replace(p, notes=p.notes + (STALE_NOTE,))
        return p
    return DEV_MACHINE


def scaled(p: Profile, **changes: Any) -> Profile:
    """A copy of ``p`` with some figures changed (what-if planning)."""
    return replace(p, **changes)
