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

#: numpy's own OpenBLAS picks this CPU's kernel (AVX-512: SkylakeX) when nothing forces one.
NATIVE = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
#: faiss bundles an older OpenBLAS that does not recognise this CPU: left alone, it falls back
#: to its generic Prescott kernel (3-4x slower). Haswell's AVX2 kernel is its best here, so
#: faiss runs with it, set explicitly (whether or not the machine exports it).
FAISS_BLAS = {"OPENBLAS_CORETYPE": "Haswell"}


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


def cpu_model() -> str:
    """The CPU's name and its widest vector ISA (virtual machines often hide the model)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{name}, {isa}" if isa else name


def blas_kernels() -> list[str]:
    """numpy's BLAS as threadpoolctl sees it in a fresh process with the machine's
    ``OPENBLAS_CORETYPE`` unset (as shardwren's benchmark runs are): library, version,
    the kernel it picked for this CPU, threads."""
    code = ("import json, numpy, threadpoolctl; print(json.dumps([{k: i.get(k) for k in "
            "('internal_api', 'version', 'architecture', 'num_threads')} for i in "
            "threadpoolctl.threadpool_info() if i.get('user_api') == 'blas']))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=60, check=True)
        return [f"{i['internal_api']} {i['version']} ({i['architecture']} kernel, "
                f"{i['num_threads']} threads)" for i in json.loads(out.stdout)]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return ["unknown"]


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "blas": blas_kernels(),
            "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
            "load_average": list(os.getloadavg()), "python": platform.python_version(),
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
    m = doc["machine"]
    print(f"\n== {name} ({m['cores']} cores, {m['when']}; {m['cpu']}; BLAS: "
          f"{'; '.join(m['blas'])}; load average {m['load_average'][0]:.1f} at the end)")
    header = f"{'metric':44} {'ours':>12} {'peer':>28} {'peer value':>12} {'better':>7}  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        ours = f"{r['ours']:.4g} {r.get('unit', '')}"
        peer_val = "" if r.get("peer_value") is None else f"{r['peer_value']:.4g}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        print(f"{r['metric']:44} {ours:>12} {r.get('peer', ''):>28} {peer_val:>12} {ratio:>7}  "
              f"{r.get('target', '')}")
