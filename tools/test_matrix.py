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
    The same on Python 3.13: the suite. (``py312``, on request: Python 3.12.)
``lowest``
    Every dependency at the lowest release pyproject.toml allows (a constraints file
    derived from its ``>=`` bounds and the index's releases, written to
    ``.matrix/lowest/lowest-constraints.txt``), Python 3.11: the suite.

``--short`` (what CI runs) keeps the core leg whole and runs a representative
subset (:data:`SHORT`) in the others. Virtualenvs are reused while pyproject.toml
and the leg's recipe are unchanged. Standard library only; exits non-zero if any
leg fails. The last line sums the legs: ``matrix: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import argparse
import codecs
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

#: CI's short run of the py313 and lowest legs: one file per dependency that could break
#: there, without the minutes-long MNIST cases (SHORT_DESELECT).
SHORT = [
    "tests/test_core_install.py",   # numpy, zarr, the local backend
    "tests/test_optional.py",       # every optional integration, present and absent
    "tests/test_observability.py",  # pandas, matplotlib
    "tests/test_matrix.py",         # zarr v3, fsspec, crc32c, dask.array reading our arrays
    "tests/test_backend_dask.py",   # distributed against real scheduler/worker processes
    "tests/test_knn.py",            # scikit-learn as the referee, faiss
]
SHORT_DESELECT = "not mnist"
#: The full leg's short run: what differs from `make test` there is the optional stack
#: and a built (not editable) install.
SHORT_FULL = ["tests/test_core_install.py", "tests/test_optional.py",
              "tests/test_observability.py"]

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


def _release(v: str) -> tuple[int, ...] | None:
    """A final release's version as a tuple (None for pre-, post- and dev releases)."""
    return tuple(int(p) for p in v.split(".")) if re.fullmatch(r"\d+(\.\d+)*", v) else None


def _at_least(v: tuple[int, ...], bound: tuple[int, ...]) -> bool:
    n = max(len(v), len(bound))
    return v + (0,) * (n - len(v)) >= bound + (0,) * (n - len(bound))


def lower_bounds(project: dict) -> tuple[dict[str, str], list[str]]:
    """Each requirement's ``>=`` bound (the highest, if two extras name one package),
    and the requirements without one."""
    reqs = list(project["project"].get("dependencies", []))
    for extra in project["project"].get("optional-dependencies", {}).values():
        reqs += extra
    bounds: dict[str, str] = {}
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
        if key not in bounds or _at_least(_release(bound.group(1)), _release(bounds[key])):
            bounds[key] = bound.group(1)
    return bounds, unbounded


def lowest_constraints(bounds: dict[str, str], vpy: str, log) -> list[str]:
    """``name==V`` with V the lowest final release >= each bound that the index has for
    this interpreter (a bound need not be a release: pytest-timeout>=2.3 means 2.3.1)."""
    pins = []
    for name, bound in sorted(bounds.items()):
        out = subprocess.run([vpy, "-m", "pip", "index", "versions", name],
                             capture_output=True, text=True, timeout=300)
        log.write(f"$ pip index versions {name}\n{out.stdout}")
        listed = re.search(r"^Available versions: (.*)$", out.stdout, re.M)
        versions = [v for v in (listed.group(1).split(", ") if listed else []) if _release(v)]
        ok = [v for v in versions if _at_least(_release(v), _release(bound))]
        if not ok:
            raise RuntimeError(f"no release of {name} >= {bound} for this Python: {out.stderr[-500:]}")
        pins.append(f"{name}=={min(ok, key=_release)}")
    return pins


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
                            stderr=subprocess.STDOUT, start_new_session=True)
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
        # Chunks, not lines: pytest's progress dots come without a newline.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 65536), b""):
            text = decoder.decode(chunk)
            log.write(text)
            if echo:
                sys.stdout.write(text)
                sys.stdout.flush()
        proc.stdout.close()
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
    vpy = str(venv / "bin" / "python")
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        # The dependencies are the recipe's; shardwren itself is this checkout's, built again
        # (a reused environment kept the build of its first run: the tests then ran new
        # tests against old code).
        code = run([vpy, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--force-reinstall", "."], log, timeout)
        if code != 0:
            return False, f"reinstalling shardwren from the checkout failed (exit {code})"
        run([vpy, "-m", "pip", "freeze"], log, 120)  # what was tested, in the log
        return True, "reused, shardwren rebuilt"
    shutil.rmtree(venv, ignore_errors=True)
    pip = [vpy, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    target = "." + (f"[{','.join(leg.extras)}]" if leg.extras else "")
    steps = [[python, "-m", "venv", str(venv)], pip + ["--upgrade", "pip"]]
    for cmd in steps:
        code = run(cmd, log, timeout)
        if code != 0:
            return False, f"{cmd[2]} {cmd[3]} failed (exit {code})"
    constraints = []
    if leg.lowest:
        bounds, unbounded = lower_bounds(project)
        if unbounded:
            log.write(f"note: no lower bound to test for {unbounded}\n")
        try:
            pins = lowest_constraints(bounds, vpy, log)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return False, f"finding the lowest versions failed: {exc}"
        cfile = venv / "lowest-constraints.txt"
        cfile.write_text("# tools/test_matrix.py: the lowest release allowed by each of "
                         "pyproject.toml's >= bounds.\n" + "".join(p + "\n" for p in pins))
        constraints = ["-c", str(cfile)]
    # pip builds shardwren's wheel from the checkout in an isolated build environment.
    code = run(pip + constraints + [target] + leg.packages + test_requirements(project), log,
               timeout)
    if code != 0:
        return False, f"pip install {target} failed (exit {code})"
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
                    help="comma-separated legs (default: core,full,py313,lowest; also py312)")
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
        "full": Leg("full", "3.11", extras=extras, packages=ALONGSIDE,
                    tests=SHORT_FULL if args.short else None),
        "py313": Leg("py313", "3.13", extras=extras, tests=suite),
        "py312": Leg("py312", "3.12", extras=extras, tests=suite),  # on request only
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
        with open(logpath, "w", buffering=1) as log:
            t0 = time.monotonic()
            ok, note = install(leg, python, venv, log, args.install_timeout)
            t_install = time.monotonic() - t0
            if not ok:
                print(f"leg {name}: FAILED: {note} after {t_install:.0f} s; see {logpath}")
                results.append((name, note, {}, t_install, 0.0))
                continue
            if leg.lowest:
                print("lowest allowed versions: "
                      + " ".join((venv / "lowest-constraints.txt").read_text().split("\n")[1:]))
            env = dict(base_env, PYTHONUNBUFFERED="1", **leg.env)  # progress as it happens
            cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   *(leg.tests or []), *args.pytest_args]
            if args.short and leg.tests not in (None, CORE_TESTS):
                cmd += ["-k", SHORT_DESELECT]
            t1 = time.monotonic()
            code = run(cmd, log, args.test_timeout, env=env, echo=True)
            t_tests = time.monotonic() - t1
        counts = summary_counts(logpath.read_text())
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
