"""Chaos suite: faults injected into real jobs on both backends; nothing hangs, nothing is lost.

Usage: python tools/faults.py [--backends local,dask] [--workloads knn,matmul]
                              [--faults sigkill,sigstop,...] [--quick] [--markdown]

For each backend (local worker processes; a Dask cluster this tool starts on
127.0.0.1: a scheduler and two single-threaded workers under nannies), each
workload (exact k-NN on an MNIST subset; a blocked matmul) and each fault, the
job runs while the fault is injected again and again, and the answer is compared
with a fault-free run on the local backend:

* ``sigkill``: workers caught running a task of the job's main map are killed
  with SIGKILL until at least 20% of those tasks have lost their worker;
* ``sigstop``: workers running a task are stopped with SIGSTOP (a hung task):
  the task's timeout must fire (local: the worker is killed; Dask: the driver's
  own deadline, the frozen worker cannot report), and the task runs again;
* ``memory``: tasks of the main map allocate far past the job's memory_limit:
  each must fail alone with TaskMemoryError naming it (never retried: it would
  fail again); the job is then resumed (``resume=True``) without the fault;
* ``store``: tasks' first store access raises a transient error
  (ConnectionResetError from ``Store``/``ShardedMatrix`` I/O); retried;
* ``worker-removed`` (Dask): busy workers are retired from the cluster
  (``Client.retire_workers``) and replaced by fresh ones;
* ``driver-killed``: the driver process is killed with SIGKILL mid-job and the
  job is run again with ``resume=True``; its local workers must die with it.

Faults inside tasks are injected by wrapping each mapped function
(:class:`FaultyTask`), which also writes a journal of task starts and ends that
the injectors read to find busy workers. Each row reports faults injected, tasks
hit, re-runs, whether the result is identical to the fault-free run, futures
left pending ("hung", must be 0), processes and file descriptors left behind
(must be 0). The table is printed and written to tools/faults.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import shardwren
from dask_cluster import Cluster  # tools/dask_cluster.py, beside this file
from shardwren.executor import Executor

TOOLS = Path(__file__).resolve().parent
FAULTS = ("sigkill", "sigstop", "memory", "store", "worker-removed", "driver-killed")
DASK_ONLY = {"worker-removed"}


# --- inside tasks: the journal and the injected faults ---------------------------------------


class Journal:
    """Task starts and ends, appended from every worker to one file (O_APPEND: atomic lines)."""

    def __init__(self, path: str):
        self.path = path

    def write(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def lines(self) -> list[list[str]]:
        try:
            with open(self.path) as fh:
                return [line.split() for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def attempts(self) -> dict[str, dict[str, Any]]:
        """attempt id -> {tag, index, pid, size (of its map), ended}."""
        out: dict[str, dict[str, Any]] = {}
        for parts in self.lines():
            if parts[0] == "S":
                out[parts[1]] = {"tag": int(parts[2]), "index": int(parts[3]),
                                 "pid": int(parts[4]), "size": int(parts[5]), "ended": False}
            elif parts[0] == "E" and parts[1] in out:
                out[parts[1]]["ended"] = True
        return out

    def count(self, kind: str) -> int:
        return sum(1 for p in self.lines() if p[0] == kind)


class FaultyTask:
    """Wraps a mapped function: journals each attempt, injects the planned in-task faults.

    Called as ``task(index, item, *extra_args)``; pickled by reference to this
    module, which every worker can import (tools/ is on their PYTHONPATH).
    """

    def __init__(self, fn: Any, tag: int, size: int, starmap: bool, journal: str, memory: set[int],
                 store: int, memory_bytes: int):
        self.fn, self.tag, self.size, self.starmap, self.journal = fn, tag, size, starmap, journal
        self.memory, self.store, self.memory_bytes = memory, store, memory_bytes

    def __call__(self, index: int, item: Any, *extra: Any) -> Any:
        journal = Journal(self.journal)
        first = not any(p[0] == "S" and int(p[2]) == self.tag and int(p[3]) == index
                        for p in journal.lines())
        attempt = uuid.uuid4().hex[:12]
        journal.write(f"S {attempt} {self.tag} {index} {os.getpid()} {self.size}")
        if first and index in self.memory:
            journal.write(f"M {attempt} {self.tag} {index}")
            np.ones(self.memory_bytes, dtype=np.uint8).sum()  # far past memory_limit
        args = (*item, *extra) if self.starmap else (item, *extra)
        if first and self.store:
            # Blocks may come from a worker's cache: the error goes to the first task attempts
            # that really touch the store, until ``store`` of them have met one.
            with _failing_store(journal, f"{attempt} {self.tag} {index}", self.store):
                value = self.fn(*args)
        else:
            value = self.fn(*args)
        journal.write(f"E {attempt}")
        return value


@contextlib.contextmanager
def _failing_store(journal: Journal, label: str, target: int):
    """The next store or block access of this task raises a transient network error (unless
    ``target`` tasks have met one already)."""
    from shardwren.matrix import ShardedMatrix
    from shardwren.storage import Store

    targets = [(Store, "get"), (Store, "put"), (ShardedMatrix, "get_block"),
               (ShardedMatrix, "put_block")]
    saved = [(cls, name, getattr(cls, name)) for cls, name in targets]
    fired = []

    def failing(original):
        def call(*args, **kwargs):
            if not fired:
                fired.append(True)
                if journal.count("T") < target:
                    journal.write(f"T {label}")
                    raise ConnectionResetError("injected: the store dropped the connection")
            return original(*args, **kwargs)
        return call

    for cls, name, original in saved:
        setattr(cls, name, failing(original))
    try:
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


def instrument(ex: Executor, journal: str, main_size: int, memory: int = 0, store: float = 0.0,
               memory_bytes: int = 0, seed: int = 0) -> list[Any]:
    """Route ``ex``'s maps through :class:`FaultyTask`; returns the list of every future made.

    In-task faults hit maps of ``main_size`` tasks (the job's main map): ``memory`` tasks
    allocate ``memory_bytes``; a ``store`` fraction of tasks meet a store error.
    """
    rng = random.Random(seed)
    made: list[Any] = []
    tags = itertools.count()
    original = Executor.map

    def mapped(fn, iterdata, extra_args=None, starmap=False, **kwargs):
        items = list(iterdata)
        tag = next(tags)
        mem: set[int] = set()
        bad_store = 0
        if len(items) == main_size:
            mem = set(rng.sample(range(len(items)), min(memory, len(items))))
            bad_store = max(1, int(round(store * len(items)))) if store else 0
        task = FaultyTask(fn, tag, len(items), starmap, journal, mem, bad_store, memory_bytes)
        fs = original(ex, task, list(enumerate(items)), extra_args=extra_args, starmap=True,
                      **kwargs)
        made.extend(fs)
        return fs

    ex.map = mapped  # type: ignore[method-assign]
    return made


# --- workloads ---------------------------------------------------------------------------------


def mnist_subset(train: int, query: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from shardwren.datasets import load_mnist

        X, _, Xt, _ = load_mnist(download=False)
        return X[:train], Xt[:query], "MNIST"
    except Exception:  # noqa: BLE001 - same shape, random values
        rng = np.random.default_rng(0)
        return (rng.random((train, 784), dtype=np.float32) * 255,
                rng.random((query, 784), dtype=np.float32) * 255, "random")


class Workload:
    """A job with a known main map size, run on an executor, returning arrays to compare."""

    def __init__(self, name: str, size: dict[str, int]):
        self.name, self.size = name, size
        if name == "knn":
            self.train, self.query, self.source = mnist_subset(size["train"], size["query"])
            b = size["block"]
            self.main = -(-size["train"] // b) * -(-size["query"] // b)
            self.label = f"{self.source} k-NN {size['train']}x{size['query']}, block {b}"
        else:
            n, b = size["n"], size["mblock"]
            rng = np.random.default_rng(1)
            self.A, self.B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
            self.main = (-(-n // b)) ** 2
            self.label = f"matmul {n}x{n} float64, block {b}"

    def run(self, ex: Executor, resume: bool = False, key: str | None = None) -> list[np.ndarray]:
        if self.name == "knn":
            from shardwren.linalg import knn

            d, i = knn(self.train, self.query, 1, executor=ex, block_size=self.size["block"],
                       resume=resume, key=key)
            return [d, i]
        from shardwren.linalg import matmul

        C = matmul(self.A, self.B, executor=ex, block_size=self.size["mblock"], resume=resume,
                   key=key)
        try:
            return [C.numpy()]
        finally:
            if key is None:
                C.delete()


def identical(a: list[np.ndarray] | None, b: list[np.ndarray]) -> bool:
    return a is not None and len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# --- a Dask cluster of our own ------------------------------------------------------------------


# --- injectors (threads in the tool, reading the journal) ----------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # reaped meanwhile
        return False


class Injector(threading.Thread):
    """Hits workers running a task of the main map (tag with ``main`` tasks) until told to stop."""

    def __init__(self, fault: str, journal: Journal, main: int, rng: random.Random,
                 min_lost: float, timeout: float, cluster: Cluster | None = None):
        """``main``: size of the job's main map, whose tasks are hit."""
        super().__init__(name=f"inject-{fault}", daemon=True)
        self.fault, self.journal, self.main, self.rng = fault, journal, main, rng
        self.min_lost, self.timeout, self.cluster = min_lost, timeout, cluster
        self.stop = threading.Event()
        self.hits: list[tuple[str, int, float]] = []  # (attempt, pid, when)
        self.stopped: list[int] = []
        self.errors: list[str] = []

    def busy(self) -> list[tuple[str, dict[str, Any]]]:
        """Attempts of main-map tasks running now on a worker not hit yet."""
        hit_pids = {pid for _, pid, _ in self.hits}
        return [(k, a) for k, a in self.journal.attempts().items()
                if not a["ended"] and a["size"] == self.main and a["pid"] not in hit_pids
                and _alive(a["pid"])]

    def lost(self) -> int:
        """Distinct tasks whose running attempt was hit (for SIGKILL: and never finished)."""
        hit = {a for a, _, _ in self.hits}
        attempts = self.journal.attempts()
        return len({(attempts[a]["tag"], attempts[a]["index"]) for a in hit if a in attempts
                    and not (self.fault == "sigkill" and attempts[a]["ended"])})

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported in the row
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        limit = {"sigkill": 10_000, "sigstop": 2, "worker-removed": 2}[self.fault]
        while not self.stop.wait(0.02 + 0.05 * self.rng.random()):
            if self.fault == "sigkill" and self.lost() >= self.min_lost * self.main:
                return
            if len(self.hits) >= limit:
                return
            busy = self.busy()
            if not busy:
                continue
            attempt, a = self.rng.choice(busy)
            if self.fault == "sigkill":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(a["pid"], signal.SIGKILL)
                    self.hits.append((attempt, a["pid"], time.time()))
            elif self.fault == "sigstop":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(a["pid"], signal.SIGSTOP)
                    self.hits.append((attempt, a["pid"], time.time()))
                    self.stopped.append(a["pid"])
                # The timeout must fire before the next stop: locally the worker is killed;
                # on Dask the driver's deadline (timeout + 5 s margin) gives up on it.
                until = time.time() + self.timeout + 7
                while time.time() < until and _alive(a["pid"]) and not self.stop.wait(0.05):
                    pass
                self.resume_stopped()
            elif self.fault == "worker-removed":
                assert self.cluster is not None
                pids = self.cluster.worker_pids()
                addr = next((ad for ad, p in pids.items() if p == a["pid"]), None)
                if addr is None:
                    continue
                with self.cluster.client() as c:
                    c.retire_workers([addr], close_workers=True)
                self.hits.append((attempt, a["pid"], time.time()))
                self.cluster.add_worker()  # capacity comes back as a fresh worker
                self.cluster.wait_for(2)

    def resume_stopped(self) -> None:
        while self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped.pop(), signal.SIGCONT)


# --- one scenario ----------------------------------------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


#: Threads a process starts once and keeps: shardwren's lease renewer (one per process,
#: see storage/_owners.py) and distributed's callback pool. Not left behind by a job.
PROCESS_THREADS = ("shardwren-lease", "Dask-Callback-Thread")


def _threads() -> int:
    return sum(not t.name.startswith(PROCESS_THREADS) for t in threading.enumerate())


def _settle(measure, target: int, seconds: float = 10.0) -> int:
    deadline = time.time() + seconds
    value = measure()
    while value > target and time.time() < deadline:
        gc.collect()
        time.sleep(0.05)
        value = measure()
    return value


def _executor(backend: str, store: str, cluster: Cluster | None, **settings: Any) -> Executor:
    if backend == "dask":
        assert cluster is not None
        return shardwren.default_executor(backend="dask", address=cluster.address, store=store,
                                          progress=False, **settings)
    return shardwren.default_executor(workers=2, store=store, progress=False, **settings)


def scenario(backend: str, work: Workload, fault: str, reference: list[np.ndarray], store: str,
             scratch: Path, cluster: Cluster | None, seed: int = 0, timeout: float = 4.0,
             min_lost: float = 0.2) -> dict[str, Any]:
    """Run ``work`` on ``backend`` under ``fault``; return the table row."""
    rng = random.Random(seed)
    journal = Journal(str(scratch / f"journal-{backend}-{work.name}-{fault}-{uuid.uuid4().hex[:6]}"))
    gc.collect()
    fds_before, threads_before = _fds(), _threads()
    t0 = time.perf_counter()
    row: dict[str, Any] = {"backend": backend, "workload": work.name, "fault": fault}
    result: list[np.ndarray] | None = None
    error = ""
    made: list[Any] = []
    extra_pids: set[int] = set()
    key = f"chaos-{uuid.uuid4().hex[:8]}"
    injected = 0
    if fault == "driver-killed":
        result, injected, extra_pids, hung_driver, error = _driver_killed(
            backend, work, store, journal, cluster, key)
        hung = hung_driver
    else:
        memory_limit = 1 << 30
        settings: dict[str, Any] = {"retries": 10}
        if fault == "sigstop":
            # No backups here: the stopped task must be recovered by its timeout, not by a copy.
            settings.update(timeout=timeout, speculation=False)
        if fault == "memory":
            settings["memory_limit"] = memory_limit
        ex = _executor(backend, store, cluster, **settings)
        injector = None
        try:
            made = instrument(ex, journal.path, work.main,
                              memory=2 if fault == "memory" else 0,
                              store=0.25 if fault == "store" else 0.0,
                              memory_bytes=4 * memory_limit, seed=seed)
            if fault in ("sigkill", "sigstop", "worker-removed"):
                injector = Injector(fault, journal, work.main, rng, min_lost, timeout, cluster)
                injector.start()
            try:
                result = work.run(ex, resume=fault == "memory", key=key if fault == "memory" else None)
            except Exception as exc:  # noqa: BLE001 - expected for the memory fault
                error = f"{type(exc).__name__}: {exc}"
                if fault != "memory":
                    raise
            if injector is not None:
                injector.stop.set()
                injector.join(60)
                injector.resume_stopped()
                injected = len(injector.hits)
                row["tasks_hit"] = injector.lost()
                if injector.errors:
                    error = "; ".join(injector.errors)
            hung = sum(not f.done() for f in _wait_all(made))
            if fault == "memory":
                injected = row["tasks_hit"] = journal.count("M")
                failed = [f for f in made if f.done() and not f.cancelled()
                          and type(f.exception()).__name__ == "TaskMemoryError"]
                # each failed alone, named, and was not retried
                row["named"] = len(failed) == injected and error.startswith("TaskMemoryError") \
                    and all(f"task {f.index} of job {f.job_id}" in str(f.exception())
                            and f.stats["attempt"] == 1 for f in failed)
                if not row["named"]:
                    row["detail"] = {"failed": [(f.index, f.stats.get("attempt")) for f in failed],
                                     "faulted": [p[1:] for p in journal.lines() if p[0] == "M"]}
                # the job, resumed without the fault, must finish with the same answer
                del ex.map
                result = work.run(ex, resume=True, key=key)
            if fault == "store":
                injected = row["tasks_hit"] = journal.count("T")
        finally:
            if injector is not None:
                injector.stop.set()
                injector.resume_stopped()
            ex.shutdown(wait=True)
        row["retries"] = sum(max(0, f.stats.get("attempt", 1) - 1) for f in made)
        row["timeouts"] = sum(x.startswith("TaskTimeoutError") for f in made
                              for x in f.stats.get("failures", ()))
    attempts = journal.attempts()
    tasks = {(a["tag"], a["index"]) for a in attempts.values()}
    row["faults"] = injected
    row["main_tasks"] = work.main
    row.setdefault("tasks_hit", sum(1 for a in attempts.values() if not a["ended"]))
    row["tasks"] = len(tasks)
    row["reruns"] = len(attempts) - len(tasks)
    row["identical"] = identical(result, reference)
    row["hung"] = hung
    made.clear()
    gc.collect()
    pids = {a["pid"] for a in attempts.values()} | extra_pids
    legit = cluster.all_pids() if (cluster is not None and backend == "dask") else set()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in pids - legit):
        time.sleep(0.05)
    row["procs_left"] = sum(_alive(p) for p in pids - legit)
    row["fds_left"] = max(0, _settle(_fds, fds_before) - fds_before)
    row["threads_left"] = max(0, _settle(_threads, threads_before) - threads_before)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if error:
        row["error"] = error[:300]
    return row


def _wait_all(fs: list[Any], timeout: float = 120.0) -> list[Any]:
    from shardwren.futures import wait

    wait(fs, timeout=timeout)
    return fs


# --- the driver-killed fault -------------------------------------------------------------------


def _driver_killed(backend: str, work: Workload, store: str, journal: Journal,
                   cluster: Cluster | None, key: str) -> tuple[Any, int, set[int], int, str]:
    """Kill a driver process mid-job with SIGKILL, run it again with resume=True."""
    out = Path(journal.path + ".npz")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", "--backend-one", backend,
           "--workload-one", work.name, "--store", store, "--key", key, "--journal", journal.path,
           "--out", str(out), "--size", json.dumps(work.size)]
    if cluster is not None and backend == "dask":
        cmd += ["--address", cluster.address]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TOOLS), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    killed = 0
    while time.time() < deadline and first.poll() is None:
        ended = [a for a in journal.attempts().values() if a["ended"] and a["size"] == work.main]
        if len(ended) >= 0.3 * work.main:
            first.kill()
            killed = 1
            break
        time.sleep(0.02)
    first.wait()
    worker_pids = {a["pid"] for a in journal.attempts().values()}
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if second.returncode != 0:
        return None, killed, worker_pids | {first.pid}, 0, second.stderr[-300:]
    report = json.loads(second.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        result = [data[k] for k in sorted(data.files)]
    return result, killed, worker_pids | {first.pid}, report["hung"], ""


def driver_main(args: argparse.Namespace) -> None:
    """The driver process of the driver-killed fault: run the job with resume=True."""
    work = Workload(args.workload_one, json.loads(args.size))
    settings: dict[str, Any] = {"retries": 10}
    if args.backend_one == "dask":
        ex = shardwren.default_executor(backend="dask", address=args.address, store=args.store,
                                        progress=False, **settings)
    else:
        ex = shardwren.default_executor(workers=2, store=args.store, progress=False, **settings)
    with ex:
        made = instrument(ex, args.journal, work.main)
        result = work.run(ex, resume=True, key=args.key)
        hung = sum(not f.done() for f in _wait_all(made))
    np.savez(args.out, **{f"a{i}": a for i, a in enumerate(result)})
    print(json.dumps({"hung": hung}), flush=True)


# --- the suite ----------------------------------------------------------------------------------


SIZES = {
    "full": {"train": 20000, "query": 5000, "block": 2500, "n": 2000, "mblock": 500},
    "quick": {"train": 6000, "query": 2000, "block": 1500, "n": 1200, "mblock": 400},
}


def run(backends: Sequence[str] = ("local", "dask"), workloads: Sequence[str] = ("knn", "matmul"),
        faults: Sequence[str] = FAULTS, quick: bool = False, store_dir: str | None = None,
        seed: int = 0, log=print) -> dict[str, Any]:
    """Run the suite; returns ``{"rows": [...], "setup": ...}``."""
    size = SIZES["quick" if quick else "full"]
    scratch = Path(store_dir or tempfile.mkdtemp(prefix="shardwren-chaos-"))
    scratch.mkdir(parents=True, exist_ok=True)
    store = f"file://{scratch / 'store'}"
    works = {w: Workload(w, size) for w in workloads}
    references = {}
    for name, work in works.items():
        with _executor("local", store, None) as ex:
            t = time.perf_counter()
            references[name] = work.run(ex)
            log(f"reference {work.label}: {work.main} tasks in its main map, "
                f"{time.perf_counter() - t:.1f} s fault-free on the local backend")
    rows = []
    cluster = None
    try:
        for backend in backends:
            if backend == "dask":
                logs = scratch / "dask-logs"
                logs.mkdir(exist_ok=True)
                cluster = Cluster(2, logs, pythonpath=[str(TOOLS)])
            for name, work in works.items():
                for fault in faults:
                    if fault in DASK_ONLY and backend != "dask":
                        continue
                    # The quick jobs' tasks take a tenth of a second: a 2 s timeout
                    # still leaves them 20x, and halves the wait for a stopped one.
                    row = scenario(backend, work, fault, references[name], store, scratch,
                                   cluster, seed=seed, timeout=2.0 if quick else 4.0)
                    rows.append(row)
                    log(_format_row(row))
    finally:
        cluster_pids: set[int] = set()
        if cluster is not None:
            cluster_pids = cluster.all_pids()
            cluster.close()
    left = sum(_alive(p) for p in cluster_pids)
    if store_dir is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"rows": rows, "cluster_procs_left": left,
            "setup": {name: w.label for name, w in works.items()}}


COLUMNS = ("backend", "workload", "fault", "faults", "main_tasks", "tasks_hit", "reruns",
           "identical", "hung", "procs_left", "fds_left", "wall_s")


def _format_row(row: dict[str, Any]) -> str:
    text = "  ".join(f"{k}={row.get(k)}" for k in COLUMNS)
    return text + (f"  error={row['error']}" if row.get("error") else "")


def markdown(out: dict[str, Any]) -> str:
    head = ["backend", "workload", "fault", "faults injected", "main map tasks", "tasks hit",
            "re-runs", "identical", "futures hung", "processes left", "fds left", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in out["rows"]:
        lines.append("| " + " | ".join(str(r.get(k)) for k in COLUMNS) + " |")
    return "\n".join(lines)


def ok(out: dict[str, Any]) -> bool:
    """Every row: faults injected, result identical, nothing hung or left behind."""
    return out["cluster_procs_left"] == 0 and all(
        r["identical"] and r["hung"] == 0 and r["procs_left"] == 0 and r["fds_left"] == 0
        and r["faults"] > 0 and r.get("named", True)
        and (r["fault"] != "sigstop" or r["timeouts"] >= r["faults"]) for r in out["rows"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="local,dask")
    ap.add_argument("--workloads", default="knn,matmul")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--quick", action="store_true", help="the small sizes CI uses")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--seed", type=int, default=0)
    # the driver process of the driver-killed fault
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    for name in ("backend-one", "workload-one", "store", "key", "journal", "out", "size", "address"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        driver_main(args)
        return
    t = time.perf_counter()
    out = run(args.backends.split(","), args.workloads.split(","), args.faults.split(","),
              quick=args.quick, seed=args.seed)
    out["wall_s"] = round(time.perf_counter() - t, 1)
    (TOOLS / "faults.json").write_text(json.dumps(out, indent=2, default=str))
    if args.markdown:
        print(markdown(out))
    print(f"total {out['wall_s']} s; Dask cluster processes left after the suite: "
          f"{out['cluster_procs_left']}")
    if not ok(out):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
