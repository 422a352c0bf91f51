"""Fault injection: kill -9 random workers during a k-NN run; the result must not change.

Usage: python tools/faults.py [--train N] [--query N] [--block B] [--min-lost 0.2]

A thread SIGKILLs a random local worker again and again while an exact k-NN job
runs, until at least ``--min-lost`` of its tasks have lost their worker at least
once; the executor retries them (the failure policy) and the answer is compared
with a fault-free run. Prints the figures and writes tools/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np

import shardwren
from shardwren.linalg import knn


def data(train: int, query: int):
    try:
        from shardwren.datasets import load_mnist

        X, _, Xt, _ = load_mnist(download=False)
        return X[:train], Xt[:query], "MNIST"
    except Exception:  # noqa: BLE001 - same shape, random values
        rng = np.random.default_rng(0)
        return (rng.random((train, 784), dtype=np.float32) * 255,
                rng.random((query, 784), dtype=np.float32) * 255, "random")


def run(train: int = 60000, query: int = 10000, block: int = 4000, min_lost: float = 0.2,
        interval: float = 0.2, seed: int = 0, store: str | None = None) -> dict:
    X, Xt, source = data(train, query)
    rng = random.Random(seed)
    with shardwren.default_executor(workers=2, store=store, progress=False) as ex:
        _, reference = knn(X, Xt, 1, executor=ex, block_size=block)
    with shardwren.default_executor(workers=2, store=store, progress=False, retries=50) as ex:
        stop = threading.Event()
        kills = [0]

        tiles = -(-train // block) * -(-query // block)

        def killer():
            # Kill only workers caught running a tile (the k-NN's main map): every
            # kill then loses work, and the job still progresses between kills.
            while not stop.wait(interval * (0.5 + rng.random())):
                if not ex.history or len(ex.history[-1][2]) != tiles:
                    continue
                pids = ex.backend.busy_worker_pids()
                if not pids:
                    continue
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills[0] += 1
                except ProcessLookupError:
                    pass
                recs = ex.history[-1][2] if ex.history else []
                lost = sum(1 for r in recs if r.get("attempt", 1) > 1)
                if recs and lost >= min_lost * len(recs):
                    return

        t = time.perf_counter()
        thread = threading.Thread(target=killer, daemon=True)
        tm: dict = {}
        thread.start()
        _, result = knn(X, Xt, 1, executor=ex, block_size=block, timings=tm)
        stop.set()
        wall = time.perf_counter() - t
        recs = max((h[2] for h in ex.history), key=len)
    lost = sum(1 for r in recs if r.get("attempt", 1) > 1)
    out = {"data": f"{source} {train} x {query} x 784", "tasks": len(recs), "kills": kills[0],
           "tasks_that_lost_a_worker": lost, "fraction_lost": lost / len(recs),
           "retries": sum(r.get("attempt", 1) - 1 for r in recs),
           "identical": bool(np.array_equal(result, reference)), "wall_s": wall}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=60000)
    ap.add_argument("--query", type=int, default=10000)
    ap.add_argument("--block", type=int, default=4000)
    ap.add_argument("--min-lost", type=float, default=0.2)
    args = ap.parse_args()
    out = run(args.train, args.query, args.block, args.min_lost)
    Path(__file__).with_name("faults.json").write_text(json.dumps(out, indent=2))
    print(f"{out['data']}: {out['tasks']} tasks, {out['kills']} workers killed with SIGKILL, "
          f"{out['tasks_that_lost_a_worker']} tasks ({out['fraction_lost']:.0%}) lost their worker "
          f"at least once, {out['retries']} retries; result identical to the fault-free run: "
          f"{out['identical']}; {out['wall_s']:.1f} s")
    if not out["identical"] or out["fraction_lost"] < args.min_lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
