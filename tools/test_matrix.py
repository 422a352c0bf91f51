#!/usr/bin/env python3
"""The environment matrix (``make test-matrix``): shardwren in the environments users have.

Each leg is a fresh virtualenv under ``.matrix/`` holding shardwren installed from
this checkout (``pip install .``, a real build, not the editable install of ``make
install``) and runs pytest from the checkout against it:

``core``
    ``pip install .`` and nothing else (plus pytest): the README's first example, a
    ShardedMatrix round trip, a k-NN, and every optional integration's "missing
    library" error, for real (tests/test_core_install.py, tests/test_optional.py).
``full``
    Every extra pyproject.toml declares plus the libraries users commonly have beside
    us (:data:`ALONGSIDE`), Python 3.11: the suite.
``py313``
    The same on Python 3.13: the suite.
``lowest``
    Every dependency at the lowest version pyproject.toml allows (a constraints file
    derived from its ``>=`` bounds, written to ``.matrix/lowest-constraints.txt``),
    Python 3.11: the suite.

``--short`` (what CI runs) keeps the core leg whole and runs a representative
subset (:data:`SHORT`) in the others. Virtualenvs are reused while pyproject.toml
and the leg's recipe are unchanged. Standard library only; exits non-zero if any
leg fails. The last line sums the legs: ``matrix: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

#: Libraries users commonly have installed beside shardwren that no extra of ours
#: brings (yet): the full leg checks that we coexist with them.
ALONGSIDE = ["xarray"]

#: CI's short run of the suite legs: one file per dependency that could break.
SHORT = [
    "tests/test_core_install.py",   # numpy, zarr, the local backend
    "tests/test_optional.py",       # every optional integration, present and absent
    "tests/test_observability.py",  # pandas, matplotlib
    "tests/test_matrix.py",         # zarr v3, fsspec, crc32c
    "tests/test_backend_dask.py",   # distributed against real scheduler/worker processes
    "tests/test_knn.py",            # scikit-learn as the referee, faiss
]

CORE_TESTS = ["tests/test_core_install.py", "tests/test_optional.py"]


@dataclass
class Leg:
    name: str
    python: str  # "3.11", "3.13"
    extras: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    lowest: bool = False
    tests: list[str] | None = None  # None: the whole suite
    env: dict[str, str] = field(default_factory=dict)


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def own_extras(project: dict) -> list[str]:
    """Extras that bring libraries (not the aggregates that only name other extras)."""
    extras = project["project"].get("optional-dependencies", {})
    return sorted(e for e, reqs in extras.items()
                  if not all(r.replace(" ", "").startswith("shardwren[") for r in reqs))


def test_requirements(project: dict) -> list[str]:
    """The test runner itself (pytest and its timeout plugin), as pyproject pins them."""
    reqs = project["project"].get("optional-dependencies", {}).get("test", [])
    return [r for r in reqs if re.match(r"pytest\b|pytest-timeout\b", r)]


_LOWER = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lowest_constraints(project: dict) -> tuple[list[str], list[str]]:
    """``name==lowest`` for every requirement with a ``>=`` bound, and those without one."""
    reqs = list(project["project"].get("dependencies", []))
    for extra in project["project"].get("optional-dependencies", {}).values():
        reqs += extra
    pins: dict[str, str] = {}
    unbounded = []
    for req in reqs:
        m = _LOWER.match(req.split(";")[0])
        name, spec = m.group(1), m.group(2)
        if name.lower() == "shardwren":
            continue
        bound = re.search(r">=\s*([^,\s]+)", spec)
        if bound is None:
            unbounded.append(req)
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        # The highest lower bound wins if two extras name the same package.
        pins[key] = max(pins.get(key, bound.group(1)), bound.group(1),
                        key=lambda v: tuple(int(p) if p.isdigit() else 0 for p in v.split(".")))
    return [f"{k}=={v}" for k, v in sorted(pins.items())], unbounded


def find_python(version: str) -> str | None:
    """An interpreter for ``version`` ("3.13"): on PATH, else under pyenv."""
    found = shutil.which(f"python{version}")
    if found and _version_of(found) == version:
        return found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"),
                        key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/versions/")[1]
                                                                  .split("/")[0])])
    for cand in reversed(candidates):
        if _version_of(cand) == version:
            return cand
    if _version_of(sys.executable) == version:
        return sys.executable
    return None


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def run(cmd: list[str], log, timeout: float, env: dict[str, str] | None = None,
        echo: bool = False) -> int:
    """Run ``cmd`` from the checkout, output to ``log`` (and to stdout with ``echo``);
    killed after ``timeout`` seconds even if it prints nothing (exit status 124)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest's workers and servers too
        except ProcessLookupError:
            pass

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        code = proc.wait()
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        note = f"[killed: still running after {timeout:.0f} s]"
        log.write(f"\n{note}\n")
        if echo:
            print(note)
        return 124
    return code


def install(leg: Leg, python: str, venv: Path, log, timeout: float) -> tuple[bool, str]:
    """Create ``venv`` for ``leg`` unless an identical one is there; return (ok, note)."""
    project = pyproject()
    recipe = {"python": python, "extras": leg.extras, "packages": leg.packages,
              "lowest": leg.lowest, "pyproject": hashlib.sha256(PYPROJECT.read_bytes()).hexdigest(),
              "tests": test_requirements(project)}
    stamp = venv / "matrix-recipe.json"
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        return True, "reused"
    shutil.rmtree(venv, ignore_errors=True)
    vpy = str(venv / "bin" / "python")
    pip = [vpy, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    target = "." + (f"[{','.join(leg.extras)}]" if leg.extras else "")
    steps = [[python, "-m", "venv", str(venv)], pip + ["--upgrade", "pip"]]
    if leg.lowest:
        pins, unbounded = lowest_constraints(project)
        cfile = venv.parent / "lowest-constraints.txt"
        cfile.write_text("# Derived by tools/test_matrix.py from pyproject.toml's lower bounds.\n"
                         + "".join(p + "\n" for p in pins))
        if unbounded:
            log.write(f"note: no lower bound to test for {unbounded}\n")
        steps.append(pip + ["-c", str(cfile), target] + leg.packages + test_requirements(project))
    else:
        steps.append(pip + [target] + leg.packages + test_requirements(project))
    for cmd in steps:  # pip builds shardwren's wheel in an isolated build environment
        code = run(cmd, log, timeout)
        if code != 0:
            return False, f"install failed ({' '.join(cmd[3:6])}...: exit {code})"
    run([vpy, "-m", "pip", "freeze"], log, 120)
    stamp.write_text(json.dumps(recipe))
    return True, "installed"


_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def summary_counts(text: str) -> dict[str, int]:
    """Counts from pytest's closing line (``== 3 failed, 10 passed in 5.1s ==``)."""
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|error)", ln)
             and " in " in ln]
    counts: dict[str, int] = {}
    if lines:
        for n, what in _COUNTS.findall(lines[-1]):
            counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--legs", default="core,full,py313,lowest",
                    help="comma-separated legs to run (default: all): core, full, py313, lowest")
    ap.add_argument("--short", action="store_true",
                    help="CI's run: a representative subset of the suite in full/py313/lowest")
    ap.add_argument("--workdir", default=str(ROOT / ".matrix"), help="where the virtualenvs live")
    ap.add_argument("--install-timeout", type=float, default=1200)
    ap.add_argument("--test-timeout", type=float, default=1800)
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    project = pyproject()
    extras = own_extras(project)
    suite = SHORT if args.short else None
    legs = {
        "core": Leg("core", "3.11", tests=CORE_TESTS, env={"SHARDWREN_EXPECT_CORE_ONLY": "1"}),
        "full": Leg("full", "3.11", extras=extras, packages=ALONGSIDE, tests=suite),
        "py313": Leg("py313", "3.13", extras=extras, tests=suite),
        "lowest": Leg("lowest", "3.11", extras=extras, lowest=True, tests=suite),
    }
    chosen = [s.strip() for s in args.legs.split(",") if s.strip()]
    unknown = [c for c in chosen if c not in legs]
    if unknown:
        ap.error(f"unknown legs {unknown}; choose from {list(legs)}")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base_env = dict(os.environ)
    base_env.pop("PYTHONPATH", None)  # the installed package, not the checkout's src/
    # As the Makefile does: MNIST from ../shared beside a development checkout.
    shared = ROOT.parent / "shared" / "datasets"
    if not base_env.get("SHARDWREN_DATA_DIR") and (shared / "mnist").is_dir():
        base_env["SHARDWREN_DATA_DIR"] = str(shared)
    # Never the user's ~/.shardwren/store.
    base_env.setdefault("SHARDWREN_STORE", tempfile.mkdtemp(prefix="shardwren-matrix-") + "/store")
    results = []
    for name in chosen:
        leg = legs[name]
        venv = workdir / name
        logpath = workdir / f"{name}.log"
        print(f"\n=== leg {name}: Python {leg.python}"
              + (f", extras [{','.join(leg.extras)}]" if leg.extras else ", no extras")
              + (f" + {' '.join(leg.packages)}" if leg.packages else "")
              + (", lowest allowed versions" if leg.lowest else "")
              + f"; {'the suite' if leg.tests is None else ' '.join(leg.tests)} (log {logpath})",
              flush=True)
        python = find_python(leg.python)
        if python is None:
            print(f"leg {name}: FAILED: no Python {leg.python} found (PATH or pyenv)")
            results.append((name, "no python", {}, 0.0, 0.0))
            continue
        with open(logpath, "w") as log:
            t0 = time.monotonic()
            ok, note = install(leg, python, venv, log, args.install_timeout)
            t_install = time.monotonic() - t0
            if not ok:
                print(f"leg {name}: FAILED: {note} after {t_install:.0f} s; see {logpath}")
                results.append((name, note, {}, t_install, 0.0))
                continue
            if leg.lowest:
                print("lowest allowed versions: "
                      + " ".join((workdir / "lowest-constraints.txt").read_text().split("\n")[1:]))
            env = dict(base_env, **leg.env)
            cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   *(leg.tests or []), *args.pytest_args]
            t1 = time.monotonic()
            code = run(cmd, log, args.test_timeout, env=env, echo=True)
            t_tests = time.monotonic() - t1
            text = logpath.read_text()
        counts = summary_counts(text)
        status = "ok" if code == 0 else f"pytest exit {code}"
        print(f"leg {name}: {status}; install {t_install:.0f} s ({note}), tests {t_tests:.0f} s",
              flush=True)
        results.append((name, status, counts, t_install, t_tests))

    print("\n=== environment matrix")
    for name, status, counts, t_install, t_tests in results:
        figures = ", ".join(f"{v} {k}" for k, v in counts.items()) or "-"
        print(f"{name:7} {status:24} {figures:44} install {t_install:5.0f} s  tests {t_tests:5.0f} s")
    total = {k: sum(c.get(k, 0) for _, _, c, _, _ in results)
             for k in ("passed", "failed", "skipped", "errors")}
    failed_legs = [r[0] for r in results if r[1] != "ok"]
    if failed_legs:
        print(f"failed legs: {', '.join(failed_legs)}")
    print(f"matrix: {total['passed']} passed, {total['failed'] + total['errors']} failed, "
          f"{total['skipped']} skipped")
    return 1 if failed_legs else 0


if __name__ == "__main__":
    sys.exit(main())
