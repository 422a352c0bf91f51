"""Shared helpers: timing medians, machine facts, and the JSON + table report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).parent / "results"


def median_time(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_subprocess(module: str, func: str, *args: Any, env: dict[str, Any] | None = None) -> Any:
    """Run ``module.func(*args)`` in a fresh Python process; return its JSON result.

    Each peer is measured in its own process so that none inherits another's
    threads, BLAS state or memory. ``env`` sets (or, with None, unsets) variables.
    """
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = str(value)
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import {module} as m; print('@@' + json.dumps(m.{func}(*{args!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env=child_env)
    if out.returncode != 0:
        raise RuntimeError(f"{module}.{func} failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")][-1]
    return json.loads(line[2:])


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def report(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """Print a table and write ``results/<name>.json``.

    Each row: ``metric``, ``ours``, ``unit``, and optionally ``peer``, ``peer_value``,
    ``ratio`` (how many times better ours is: peer time / our time, or our rate /
    peer rate; > 1 means shardwren wins) and ``target``.
    """
    RESULTS.mkdir(exist_ok=True)
    doc = {"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2))
    print(f"\n== {name} ({doc['machine']['cores']} cores, {doc['machine']['when']})")
    header = f"{'metric':44} {'ours':>12} {'peer':>28} {'peer value':>12} {'better':>7}  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        ours = f"{r['ours']:.4g} {r.get('unit', '')}"
        peer_val = "" if r.get("peer_value") is None else f"{r['peer_value']:.4g}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        print(f"{r['metric']:44} {ours:>12} {r.get('peer', ''):>28} {peer_val:>12} {ratio:>7}  "
              f"{r.get('target', '')}")
