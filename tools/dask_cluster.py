"""A real Dask cluster of processes on 127.0.0.1, for the tests and the chaos suite.

One ``dask scheduler`` and ``dask worker`` processes (each with a nanny), started
from this virtualenv's ``dask`` command, logging into a folder. Workers see extra
folders on their ``PYTHONPATH`` (as a cluster would have the user's code
installed). Nothing here imports distributed until a client is asked for.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A `dask scheduler` and ``workers`` `dask worker` processes of ``nthreads`` threads."""

    def __init__(self, workers: int, logs: Path, nthreads: int = 1,
                 pythonpath: Sequence[str] = ()):
        self.logs, self.nthreads = logs, nthreads
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath),
                                                  self.env.get("PYTHONPATH", "")])
        bindir = Path(sys.executable).parent
        self.dask = str(bindir / "dask") if (bindir / "dask").exists() else "dask"
        self.procs: list[subprocess.Popen] = [self._start_scheduler()]
        self.names = itertools.count()
        try:
            for _ in range(workers):
                self.add_worker()
            self.wait_for(workers)
        except BaseException:
            self.close()
            raise

    def _start_scheduler(self, attempts: int = 3) -> subprocess.Popen:
        """Start ``dask scheduler`` on a free port. Another process may take the port
        between free_port() and the scheduler's bind ("Address already in use": it
        exits at once): then it starts again on another port."""
        for _ in range(attempts):
            port = free_port()
            self.address = f"tcp://127.0.0.1:{port}"
            proc = subprocess.Popen(
                [self.dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard"],
                env=self.env, stdout=open(self.logs / "scheduler.log", "a"),
                stderr=subprocess.STDOUT)
            # Listening is not proof: the process that took the port listens too. The
            # scheduler's own log line is.
            started = f"Scheduler at:     {self.address}"
            log = self.logs / "scheduler.log"
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if started in log.read_text(errors="replace"):
                    return proc
                time.sleep(0.1)
            if proc.poll() is None:
                return proc  # slow to start: wait_for() reports it
        raise RuntimeError(f"dask scheduler failed to start {attempts} times; see "
                           f"{self.logs / 'scheduler.log'}")

    def add_worker(self) -> None:
        """Start one more worker process (its own name and log)."""
        name = f"w{next(self.names)}"
        self.procs.append(subprocess.Popen(
            [self.dask, "worker", self.address, "--host", "127.0.0.1", "--nthreads",
             str(self.nthreads), "--nworkers", "1", "--no-dashboard", "--memory-limit", "4GB",
             "--name", name],
            env=self.env, stdout=open(self.logs / f"{name}.log", "w"), stderr=subprocess.STDOUT))

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for(self, n: int, seconds: float = 120) -> None:
        """Until ``n`` workers are connected to the scheduler."""
        deadline = time.time() + seconds
        while True:
            try:
                with self.client() as c:
                    c.wait_for_workers(n, timeout=60)
                return
            except (OSError, TimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def worker_pids(self) -> dict[str, int]:
        """Address to pid of every worker process (not their nannies)."""
        with self.client() as c:
            return c.run(os.getpid)

    def all_pids(self) -> set[int]:
        """Every process of the cluster: scheduler, nannies and workers."""
        pids = {p.pid for p in self.procs}
        try:
            pids |= set(self.worker_pids().values())
        except Exception:  # noqa: BLE001, S110 - the cluster may be down already
            pass
        return pids

    def close(self) -> None:
        # Workers first, while their scheduler is up: a nanny whose worker was killed or
        # retired otherwise waits about 8 s for a scheduler that is gone before it exits.
        for group in (self.procs[1:], self.procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
