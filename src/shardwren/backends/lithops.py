"""Driver side of the serverless backend: tasks run as Lithops function calls.

`Lithops <https://lithops-cloud.github.io>`_ runs Python functions on AWS
Lambda, Google Cloud Run/Functions, Azure, IBM Code Engine, Kubernetes and, for
development, on this machine (its ``localhost`` backend). shardwren uses it as
an invoker and nothing more: each :meth:`LithopsBackend.submit` is one Lithops
``map`` whose function is a :class:`~shardwren.backends.lithops_worker.Call`
carrying the shardwren map's pickled function (uploaded once per map, not per
task) and whose items are the tasks' signed argument bytes. The call runs
shardwren's own task wrapper, so values, user exceptions (with remote
tracebacks), logs and stats come back exactly as on the other backends.

Retries and speculative backups stay in shardwren's executor: a retry or a
backup is a new one-item Lithops map. Lithops' ``RetryingFunctionExecutor`` is
not used (it would retry the task's own exceptions too).

Failures Lithops reports itself are infrastructure: its ``TimeoutError`` becomes
:class:`TaskTimeoutError`, a function process that exits or is killed becomes
:class:`WorkerCrashedError`, and a runtime that cannot import shardwren becomes
one :class:`BackendNotInstalledError` (not retried) saying how to build the
runtime. Lithops only notices the death of the function's own process: if the
process that runs a localhost job (its ``localhost-runner``), or a cloud
function's sandbox, dies, nothing is ever reported. So the driver keeps its own
deadline per task (its timeout plus a margin, or the runtime's timeout) and
watches the runner processes of localhost jobs; either ends the task with
:class:`WorkerCrashedError`. Nothing here ever waits on Lithops without a bound.

Results are collected by one thread that watches the Lithops futures (which
Lithops' job monitor marks as their statuses arrive) and fetches the finished
ones in a small thread pool; Lithops' own ``wait``/``get_result`` are not used
because their timeout is a ``SIGALRM``, which only the main thread can arm.

On ``localhost``, Lithops runs one job at a time per ``FunctionExecutor``
(version 1 of its localhost backend, which shardwren selects unless the
configuration names a version: version 2 of Lithops 3.8 can hang on a race
between one job's teardown and the next job's start). To let a backup or a
retry run beside the straggling map, the backend keeps a few executors
("lanes") and gives each map an idle one.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import copy
import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lithops
from lithops import config as lithops_config_module

from .. import serialize
from ..errors import (
    BackendNotInstalledError,
    ConfigError,
    ExecutorBrokenError,
    ExecutorShutdownError,
    StoreNotSharedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from . import lithops_worker
from .base import Backend

if TYPE_CHECKING:
    from ..futures import Future
    from ..storage import Store

log = logging.getLogger(__name__)

#: Extra seconds past a task's limit before the driver gives up on a silent function.
DEADLINE_MARGIN = 10.0
#: Seconds between two looks at the running calls (statuses themselves arrive through
#: Lithops' job monitor, every ``lithops.monitoring_interval`` with remote storage).
POLL_SECONDS = 0.02
#: At most this many Lithops executors run localhost jobs side by side.
MAX_LOCAL_LANES = 4
#: Seconds a localhost job's runner may be gone before its unreported calls are
#: declared lost (its last statuses may still be on their way through the monitor).
RUNNER_GRACE = 3.0
#: Extra MiB of function memory above ``memory_limit`` for the interpreter, numpy and
#: Lithops itself (``memory_limit`` caps what the task allocates on top of that).
RUNTIME_MEMORY_HEADROOM_MIB = 384

#: The limits of the serverless platforms that matter to a plan (AWS Lambda).
LAMBDA_MAX_MEMORY_MIB = 10240
LAMBDA_MAX_TIMEOUT_S = 900

# Lithops' localhost setup writes its runner through a temporary file named after the
# process: two FunctionExecutors created at once in one process collide on it.
_SETUP_LOCK = threading.Lock()

RUNTIME_HELP = (
    "The Lithops runtime must have shardwren installed (with the same version and the "
    "libraries your functions import). Build one from a Dockerfile that runs "
    "`pip install 'shardwren[s3]'` and deploy it with `lithops runtime build -f Dockerfile "
    "-b <backend> <name>` then `lithops runtime deploy -b <backend> <name>`, and name it "
    "as `runtime` in the backend's section of the Lithops config (see the README, "
    "'Serverless: Lithops and AWS Lambda'); on localhost, `runtime` must be a Python "
    "interpreter that can import shardwren")


def _load_config(lithops_config: Any) -> tuple[dict[str, Any] | None, str | None]:
    """``lithops_config`` as Lithops takes it: ``(config dict, config file)``."""
    if lithops_config is None:
        return None, None
    if isinstance(lithops_config, Mapping):
        return copy.deepcopy(dict(lithops_config)), None
    if isinstance(lithops_config, (str, os.PathLike)):
        path = os.fspath(lithops_config)
        if not os.path.isfile(path):
            raise ConfigError(f"lithops_config={path!r}: no such Lithops config file")
        return None, path
    raise ConfigError(f"lithops_config must be a dict or the path of a Lithops config file, "
                      f"got {type(lithops_config).__name__}")


_LAUNCHER = """#!/bin/sh
# shardwren's Lithops localhost runtime: this interpreter, with shardwren's worker (and the
# BLAS limit) loaded before Lithops' runner starts. Every function process Lithops forks
# then inherits them instead of importing them again for each call.
exec {python} -c 'import os, sys, runpy
from shardwren.backends import lithops_worker
lithops_worker.preload({blas})
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python runner.py` would
runpy.run_path(sys.argv[0], run_name="__main__")' "$@"
"""


def _localhost_runtime(processes: int, blas_threads: int | None) -> str:
    """The path of the localhost launcher (written once per interpreter and BLAS setting).

    Lithops runs every call in a process freshly forked from its runner's pool:
    whatever the call imports is lost with it. Importing shardwren's worker in the
    runner itself, before the fork, takes that cost off every call.
    """
    import hashlib

    from lithops.constants import LITHOPS_TEMP_DIR

    blas = int(blas_threads or max(1, (os.cpu_count() or 1) // max(1, processes)))
    text = _LAUNCHER.format(python=sys.executable, blas=blas)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = os.path.join(LITHOPS_TEMP_DIR, "shardwren")  # beside Lithops' own runner
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"python-{digest}")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # atomic: a runner never execs a half-written file
    return path


def _env_var(env_vars: Any, name: str) -> Any:
    """A variable of a Lithops ``env_vars`` setting: a list of ``{name, value}`` items
    (AWS Lambda's form), or a mapping."""
    if isinstance(env_vars, Mapping):
        return env_vars.get(name)
    for item in env_vars or ():
        if isinstance(item, Mapping) and item.get("name") == name:
            return item.get("value")
    return None


def _manager_alive(lane: _Lane) -> bool:
    """Whether the lane's localhost job manager thread (which starts queued jobs) runs."""
    manager = getattr(lane.fexec.compute_handler, "job_manager", None)
    return manager is not None and manager.is_alive()


def _cannot_withdraw(fut: Future) -> bool:
    """``Future.cancel`` of a call handed to Lithops, which has no way to take it back."""
    fut.set_running()
    return False


def _delete_job_data(fexec: Any) -> None:
    """Delete what an executor's jobs left in Lithops' storage, here and now.

    Lithops' own ``clean()`` hands this to a detached cleaner process, which would
    outlive the executor; the keys are few and known: the functions under
    ``lithops.jobs/<executor id>/`` and each job's data, statuses and results under
    ``lithops.jobs/<executor id>-<job id>/``.
    """
    from lithops.constants import JOBS_PREFIX
    from lithops.job.job import invalidate_function_cache

    storage, bucket = fexec.internal_storage.storage, fexec.internal_storage.bucket
    for prefix in (f"{JOBS_PREFIX}/{fexec.executor_id}/", f"{JOBS_PREFIX}/{fexec.executor_id}-"):
        keys = storage.list_keys(bucket, prefix)
        if keys:
            storage.delete_objects(bucket, keys)
    invalidate_function_cache(fexec.executor_id)


def _stop_jobs(handler: Any, wait: float = 10.0) -> None:
    """Stop every job of a compute handler, localhost runners included, for good.

    ``clear()`` kills the runners it knows of, but Lithops' localhost job manager may
    be just starting the next queued job (a backup's, say): it is stopped again until
    the manager thread is gone, so no runner outlives the executor.
    """
    handler.clear()
    manager = getattr(handler, "job_manager", None)
    env = getattr(handler, "env", None)
    deadline = time.time() + wait
    while manager is not None and manager.is_alive() and time.time() < deadline:
        manager.join(0.1)
        if env is not None and manager.is_alive():
            env.stop()


class _Call:
    """One Lithops call standing for one copy of a shardwren task."""

    __slots__ = ("fn_id", "fut", "job_key", "lane", "lf", "limit", "queued", "started",
                 "stuck_since", "submitted")

    def __init__(self, fut: Future, lf: Any, lane: _Lane, fn_id: str, limit: float):
        self.fut, self.lf, self.lane, self.fn_id, self.limit = fut, lf, lane, fn_id, limit
        self.job_key = f"{lf.executor_id}-{lf.job_id}"
        self.submitted = time.time()
        self.started: float | None = None  # when the driver saw the call (or its job) start
        self.queued = True  # fetching its result is under way
        self.stuck_since: float | None = None  # queued with no job manager to run it


class _Lane:
    """One Lithops FunctionExecutor and the calls it has running."""

    def __init__(self, fexec: Any):
        self.fexec = fexec
        self.running = 0  # calls not yet reported
        #: Lithops futures reported since the last pass, for the job monitor to forget:
        #: it lists the statuses of every job it still tracks at each poll, so one that
        #: kept every finished job would cost more at each map (Lithops' own wait()
        #: removes them too).
        self.reported: list[Any] = []

    def forget(self, done: list[Any]) -> None:
        """Stop the job monitor tracking calls already reported (collector thread)."""
        if done:
            try:
                self.fexec.job_monitor.remove(done)
            except Exception:  # noqa: BLE001 - only a cost: the monitor lists a few more keys
                log.debug("could not untrack finished Lithops calls", exc_info=True)

    def runner(self, job_key: str) -> Any:
        """The process running a localhost v1 job (``None`` before it starts, or elsewhere)."""
        env = getattr(self.fexec.compute_handler, "env", None)
        jobs = getattr(env, "jobs", None)
        return jobs.get(job_key) if isinstance(jobs, dict) else None


class LithopsBackend(Backend):
    """Tasks as Lithops function calls (AWS Lambda, Cloud Run, ..., or ``localhost``).

    Parameters
    ----------
    lithops_config : dict or str, optional
        A Lithops configuration (as a dict, or the path of a Lithops config file).
        Default: Lithops' own lookup (``LITHOPS_CONFIG_FILE``, ``~/.lithops/config``,
        else its ``localhost`` backend).
    workers : int, optional
        ``localhost``: function processes per job (default: Lithops' ``worker_processes``,
        the number of cores). Elsewhere ignored: the platform's concurrency is the
        backend's ``max_workers``.
    blas_threads : int, optional
        BLAS threads per task (default: cores // workers on localhost, else 1 per vCPU
        Lithops reports, at least 1).
    settings, key
        See :class:`~shardwren.backends.base.Backend`. Signed tasks need
        ``SHARDWREN_SECRET`` in the functions' environment (the runtime's, e.g.
        ``aws_lambda: env_vars``; on localhost the driver's own environment, which the
        runner inherits): it is never sent with a job.
    """

    name = "lithops"
    options = ("lithops_config",)
    kills_on_timeout = True  # Lithops kills the function process past its timeout
    enforces_memory_limit = True  # RLIMIT_DATA in the function's own process
    isolates_tasks = True  # one process per call

    def __init__(self, *, workers: int | None = None, blas_threads: int | None = None,
                 settings: Mapping[str, Any] | None = None, key: bytes | None = None,
                 lithops_config: Any = None, **options: Any):
        settings = settings or {}
        self._config_data, self._config_file = _load_config(lithops_config)
        overwrite: dict[str, Any] = {}
        probe = lithops_config_module.default_config(
            config_file=self._config_file, config_data=copy.deepcopy(self._config_data),
            load_storage_config=False)
        self.lithops_backend: str = probe["lithops"]["backend"]
        self.mode: str = probe["lithops"]["mode"]
        section = dict(probe.get(self.lithops_backend) or {})
        self.local = self.mode == "localhost"
        if self.local:
            # Version 2 of Lithops 3.8's localhost backend can hang for ever between two
            # jobs (lithops issues 1369, 1438); version 1 runs each job in a process of
            # its own. An explicit choice in the user's configuration is honoured.
            raw = self._raw_section("localhost")
            if "version" not in raw:
                overwrite["version"] = 1
            if workers:
                overwrite["worker_processes"] = int(workers)
            if "runtime" not in raw:
                # Lithops' default is whichever `python` is first on PATH; the driver's own
                # interpreter is the one known to have shardwren, started through a
                # launcher that imports shardwren's worker before Lithops forks.
                overwrite["runtime"] = _localhost_runtime(
                    int(workers or (raw.get("worker_processes") or os.cpu_count() or 1)),
                    blas_threads)
        self._overwrite = overwrite
        procs = int(overwrite.get("worker_processes") or section.get("worker_processes") or 1)
        if self.local:
            self._parallelism = max(1, procs)
            cores = os.cpu_count() or 1
            self.blas_threads = int(blas_threads or max(1, cores // self._parallelism))
        else:
            self._parallelism = max(1, int(section.get("max_workers") or 1000))
            self.blas_threads = int(blas_threads or 1)
        self.runtime_timeout = float(section.get("runtime_timeout")
                                     or probe["lithops"].get("execution_timeout") or 3600)
        self.runtime_memory_mib = section.get("runtime_memory")
        self.storage_backend: str = str(probe["lithops"].get("storage") or "")
        self.signed = key is not None
        secret = key.decode() if key is not None else None
        self._check_secret(section, secret)
        self.shared_filesystem = bool(settings.get("shared_filesystem"))
        self._lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._lanes: list[_Lane] = []
        self._calls: dict[int, _Call] = {}  # id(Lithops future) -> call
        self._closing = False
        self._broken: BaseException | None = None  # the runtime cannot import shardwren
        self._wake = threading.Event()
        self._fetchers = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="shardwren-lithops-fetch")
        try:
            self._lanes.append(self._new_lane())  # fails here, not at the first map, on bad config
        except BaseException:
            self._fetchers.shutdown(wait=False)
            raise
        self._collector = threading.Thread(target=self._collect, name="shardwren-lithops-collector",
                                           daemon=True)
        self._collector.start()

    # -- configuration ---------------------------------------------------------------------
    def _check_secret(self, section: Mapping[str, Any], secret: str | None) -> None:
        """Signed tasks need the same secret in the functions' environment, set on the runtime."""
        if secret is None:
            return
        if self.local:
            if os.environ.get("SHARDWREN_SECRET") != secret:
                raise ConfigError(
                    "signed tasks on Lithops localhost need the secret in the environment the "
                    "localhost runner inherits: set SHARDWREN_SECRET (not secret=) in the driver's "
                    "environment")
            return
        if _env_var(section.get("env_vars"), "SHARDWREN_SECRET") != secret:
            # It may have been set on the deployed function directly (which keeps it out of
            # the configuration Lithops sends with every invocation): a function without it
            # refuses each task with a PayloadSignatureError saying so.
            log.warning(
                "signed tasks need SHARDWREN_SECRET in the %s functions' environment; it is not "
                "in `%s: env_vars:` of the Lithops config, so it must be set on the deployed "
                "function itself", self.lithops_backend, self.lithops_backend)

    def _raw_section(self, name: str) -> dict[str, Any]:
        """A section of the user's Lithops configuration as written (before Lithops' defaults)."""
        data: Any = self._config_data or lithops_config_module.load_config(self._config_file, log=False)
        section = data.get(name) if isinstance(data, dict) else None
        return dict(section) if isinstance(section, dict) else {}

    def _new_lane(self) -> _Lane:
        with _SETUP_LOCK:  # Lithops installs its localhost runner under a per-process name
            fexec = lithops.FunctionExecutor(
                config=copy.deepcopy(self._config_data), config_file=self._config_file,
                log_level=(False if (self._config_data or {}).get("lithops", {}).get("log_level")
                           else "WARNING"),
                **self._overwrite)
        # Cleaned up by shutdown(); Lithops' own exit hook would keep every executor alive.
        atexit.unregister(fexec._clean_at_exit)
        return _Lane(fexec)

    @property
    def parallelism(self) -> int:
        return self._parallelism

    def check_store(self, store: Store) -> None:
        if store.scheme == "memory":
            raise StoreNotSharedError(
                f"store {store.url} lives in this process's memory; Lithops functions run in "
                "other processes and cannot reach it. Use s3://bucket/prefix (on localhost, a "
                "file:// path also works)")
        if store.is_local and not self.local and not self.shared_filesystem:
            raise StoreNotSharedError(
                f"store {store.url} is a directory on this machine, which {self.lithops_backend} "
                "functions cannot reach; use s3://bucket/prefix (credentials on Lambda come from "
                "the function's execution role), or a file:// path only with the Lithops "
                "localhost backend")

    def check_limits(self, limits: Mapping[str, Any]) -> None:
        timeout, memory = limits.get("timeout"), limits.get("memory_limit")
        if not self.local and timeout and timeout > self.runtime_timeout:
            raise ConfigError(
                f"timeout={timeout:g} s is longer than the {self.lithops_backend} runtime's "
                f"runtime_timeout of {self.runtime_timeout:g} s, after which the platform kills "
                "the function; raise runtime_timeout in the Lithops config (Lambda: at most "
                f"{LAMBDA_MAX_TIMEOUT_S} s) or split the work into smaller tasks")
        if memory and self.lithops_backend == "aws_lambda":
            need = self._runtime_memory(memory)
            if need is not None and need > LAMBDA_MAX_MEMORY_MIB:
                raise ConfigError(
                    f"memory_limit={memory / 2**20:.0f} MiB needs a {need} MiB function, more than "
                    f"Lambda's {LAMBDA_MAX_MEMORY_MIB} MiB; use smaller blocks")

    def _runtime_memory(self, memory_limit: int | None) -> int | None:
        """Lithops' ``runtime_memory`` (MiB) for a task that may allocate ``memory_limit`` bytes."""
        if not memory_limit or self.local:
            return None  # localhost runs in this machine's memory: the limit is RLIMIT_DATA alone
        return max(128, math.ceil(memory_limit / 2**20) + RUNTIME_MEMORY_HEADROOM_MIB)

    # -- submission ------------------------------------------------------------------------
    def _pick_lane(self) -> _Lane:
        with self._lock:
            idle = [lane for lane in self._lanes if lane.running == 0]
            if idle or not self.local or len(self._lanes) >= MAX_LOCAL_LANES:
                return idle[0] if idle else min(self._lanes, key=lambda lane: lane.running)
        lane = self._new_lane()
        with self._lock:
            self._lanes.append(lane)
        return lane

    def submit(self, fn_id: str, fn_bytes: bytes, tasks: Sequence[tuple[Future, bytes]]) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
            broken = self._broken
        futs, items = [], []
        for fut, payload in tasks:
            # Pending until its call starts: a call waiting for a free function is no
            # straggler (the executor's backups count from the start). Lithops cannot
            # take a call back, so cancel() then finds it started.
            if not fut.set_queued(functools.partial(_cannot_withdraw, fut)):
                continue  # cancelled, or another copy already finished
            if broken is not None:
                fut.set_failure(broken)
                continue
            where = f"task {fut.index} of job {fut.job_id}"
            futs.append(fut)
            items.append({"task": (payload, fut.limits.get("memory_limit"), where)})
        if not futs:
            return
        # Tasks of one map share its limits (a retry or a backup is a map of its own).
        timeout = futs[0].limits.get("timeout")
        memory = futs[0].limits.get("memory_limit")
        call = lithops_worker.Call(fn_id, fn_bytes, self.signed, self.blas_threads)
        kwargs: dict[str, Any] = {"include_modules": None}  # the runtime has shardwren
        if timeout:
            kwargs["timeout"] = timeout
        runtime_memory = self._runtime_memory(memory)
        if runtime_memory:
            kwargs["runtime_memory"] = runtime_memory
        limit = float(timeout or self.runtime_timeout)
        try:
            lane = self._pick_lane()
            # One map at a time: FunctionExecutor.map is not thread-safe, and a new lane's
            # first map reads and writes Lithops' runtime metadata cache.
            with self._map_lock:
                with self._lock:
                    if self._closing:
                        raise ExecutorShutdownError("cannot submit tasks: the executor was shut down")
                    lane.running += len(futs)
                try:
                    lfs = lane.fexec.map(call, items, **kwargs)
                except BaseException:
                    with self._lock:
                        lane.running -= len(futs)
                    raise
                with self._lock:
                    for fut, lf in zip(futs, lfs):
                        c = _Call(fut, lf, lane, fn_id, limit)
                        c.queued = False
                        self._calls[id(lf)] = c
        except ExecutorShutdownError:
            raise  # the caller fails the copies it submitted (reporting them here too counted them twice)
        except Exception as exc:  # noqa: BLE001 - Lithops could not start the job
            err = ExecutorBrokenError(
                f"Lithops could not start {len(futs)} task(s) of job {futs[0].job_id} "
                f"({type(exc).__name__}: {exc})")
            err.__cause__ = exc
            for fut in futs:
                fut.set_failure(err)
            return
        self._wake.set()

    # -- collection ------------------------------------------------------------------------
    def _collect(self) -> None:
        """Watch every outstanding call; hand the finished ones to the fetchers."""
        calls: list[_Call] = []
        while True:
            # Every call is looked at on each pass: fewer passes when there are many.
            self._wake.wait(POLL_SECONDS * (1 + len(calls) // 1000))
            self._wake.clear()
            with self._lock:
                if self._closing and not self._calls:
                    return
                calls = [c for c in self._calls.values() if not c.queued]
                reported = [(lane, lane.reported) for lane in self._lanes if lane.reported]
                for lane, _ in reported:
                    lane.reported = []
            for lane, done in reported:
                lane.forget(done)
            now = time.time()
            pending: dict[int, list[Any]] = {}
            for c in calls:
                lf = c.lf
                if lf.ready or lf.success or lf.done:  # its status arrived
                    c.queued = True
                    try:
                        self._fetchers.submit(self._fetch, c)
                    except RuntimeError:  # shutting down: shutdown() fails what is left
                        return
                    continue
                pending.setdefault(id(c.lane), [c.lane, []])[1].append(lf)
                try:
                    self._check_alive(c, now)
                except Exception:  # noqa: BLE001 - this thread must not die: looked at again
                    log.exception("checking task %d of job %s failed", c.fut.index, c.fut.job_id)
            for lane, lfs in pending.values():
                monitor = lane.fexec.job_monitor
                if not monitor.is_alive():
                    # Lithops' monitor exits once every future it knew was done: wake it for
                    # the ones that came after (as lithops.wait does).
                    try:
                        monitor.start(fs=lfs)
                    except Exception:  # noqa: BLE001 - tried again at the next look
                        log.debug("could not restart the Lithops job monitor", exc_info=True)

    def _check_alive(self, c: _Call, now: float) -> None:
        """The driver's own deadline, and the runner process of a localhost job."""
        if not c.fut.running() and (c.lf.running or c.lf.ready or c.lf.done):
            c.fut.set_running()  # the call itself started (its status says so)
        if c.started is None:
            status = getattr(c.lf, "_call_status", None) or {}
            if c.lf.running and status.get("worker_start_tstamp"):
                c.started = float(status["worker_start_tstamp"])
            elif not self.local and len(self._calls) <= self._parallelism:
                # No call can be waiting for a free function (Lithops invokes at most
                # max_workers at once), so this one was invoked by now: count from here,
                # which is never earlier than its real start. A call whose sandbox dies
                # before it reports its start is then caught too.
                c.started = now
                c.fut.set_running()
        if self.local:
            proc = c.lane.runner(c.job_key)
            if proc is None and c.started is None and not _manager_alive(c.lane):
                # Queued, but Lithops' job manager thread is gone: the job will never start.
                if c.stuck_since is None:
                    c.stuck_since = now
                elif now - c.stuck_since > RUNNER_GRACE and self._still_silent(c):
                    self._lost(c, "Lithops' localhost job manager stopped before running its job")
                    return
            else:
                c.stuck_since = None
            if proc is not None:
                if c.started is None:
                    c.started = now
                code = proc.poll()
                if code is not None:
                    gone = getattr(proc, "_shardwren_gone", None)
                    if gone is None:
                        proc._shardwren_gone = now
                    elif now - gone > RUNNER_GRACE and self._still_silent(c):
                        self._lost(c, f"the Lithops localhost runner of its job exited (code {code}) "
                                      "without reporting it")
                        return
        if c.started is not None:
            margin = max(DEADLINE_MARGIN, 0.25 * c.limit)
            if now > c.started + c.limit + margin and self._still_silent(c):
                self._lost(c, f"it did not report back {c.limit + margin:.0f} s after it started "
                              f"(its {c.limit:g} s limit plus {margin:g} s): the function's process "
                              "or sandbox died without Lithops noticing")

    def _still_silent(self, c: _Call) -> bool:
        """Whether the call's status is still missing, asking the storage directly."""
        try:
            status = c.lf.status(throw_except=False, check_only=True,
                                 internal_storage=c.lane.fexec.internal_storage)
        except Exception:  # noqa: BLE001 - no status to be had: as silent as ever
            return True
        return status is None and not (c.lf.ready or c.lf.success or c.lf.done)

    def _take(self, c: _Call) -> bool:
        with self._lock:
            if self._calls.pop(id(c.lf), None) is None:
                return False
            c.lane.running -= 1
            c.lane.reported.append(c.lf)
            self._trim(c.lane)
        return True

    def _trim(self, lane: _Lane) -> None:
        # FunctionExecutor keeps every future it made; keep only the live ones.
        live = {id(c.lf) for c in self._calls.values() if c.lane is lane}
        if len(lane.fexec.futures) > 4 * len(live) + 256:
            lane.fexec.futures = [f for f in lane.fexec.futures if id(f) in live]

    def _lost(self, c: _Call, why: str) -> None:
        if not self._take(c):
            return
        fut = c.fut
        fut.set_failure(WorkerCrashedError(f"task {fut.index} of job {fut.job_id} was lost: {why}"))

    def _fetch(self, c: _Call) -> None:
        """Read one finished call and report it (runs in a fetcher thread)."""
        lf = c.lf
        try:
            out = lf.result(throw_except=False, internal_storage=c.lane.fexec.internal_storage)
        except BaseException as exc:  # noqa: BLE001 - the output could not be read
            if self._take(c):
                err = WorkerCrashedError(
                    f"task {c.fut.index} of job {c.fut.job_id} finished but Lithops could not "
                    f"read its output ({type(exc).__name__}: {exc})")
                err.__cause__ = exc
                c.fut.set_failure(err)
            return
        if not self._take(c):
            return
        fut = c.fut
        if lf.error or out is None:
            fut.set_failure(self._infra_error(lf, fut))
            return
        ok, data, stats = out
        if ok:
            fut.set_payload(data, stats)
        else:
            fut.set_failure(serialize.loads_exception(data), stats)

    def _infra_error(self, lf: Any, fut: Future) -> BaseException:
        """The shardwren error for a failure Lithops reported itself."""
        where = f"task {fut.index} of job {fut.job_id}"
        info = getattr(lf, "_exception", None)
        exc = info[1] if isinstance(info, tuple) and len(info) > 1 else None
        handler = bool(getattr(lf, "_handler_exception", False))
        name = type(exc).__name__ if exc is not None else "no exception"
        text = f"{name}: {exc}" if exc is not None else "no result and no exception"
        err: BaseException
        if self._closing:
            err = ExecutorShutdownError(f"{where} was cancelled: the executor shut down")
        elif isinstance(exc, TimeoutError):
            limit = fut.limits.get("timeout")
            err = TaskTimeoutError(
                f"{where} ran longer than its {limit:g} s limit; Lithops killed its function "
                f"process ({text})" if limit else
                f"{where} ran longer than the Lithops runtime's timeout ({text}); raise "
                "runtime_timeout/execution_timeout in the Lithops config or use smaller tasks")
        elif isinstance(exc, ImportError) and not handler and "shardwren" in str(exc):
            err = BackendNotInstalledError(
                f"the Lithops runtime cannot run {where}: it cannot import shardwren ({text}). "
                + RUNTIME_HELP)
            with self._lock:
                self._broken = err  # every later task would fail the same way
        elif handler:
            err = WorkerCrashedError(f"the Lithops function process running {where} died ({text})")
        else:
            # Our wrapper never raises: anything else failed in Lithops around it.
            err = WorkerCrashedError(f"Lithops failed to run {where} ({text})")
        if isinstance(exc, BaseException):
            err.__cause__ = exc
        return err

    # -- lifetime --------------------------------------------------------------------------
    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._closing:
                return
            waiting = [c.fut for c in self._calls.values()]
        if wait and waiting:
            cf.wait(waiting)
        with self._lock:
            self._closing = True
            remaining = list(self._calls.values())
            self._calls.clear()
            lanes = list(self._lanes)
        self._wake.set()
        self._collector.join(timeout=30)
        self._fetchers.shutdown(wait=True, cancel_futures=True)
        for c in remaining:
            c.fut.set_failure(ExecutorShutdownError(
                f"the executor shut down before task {c.fut.index} of job {c.fut.job_id} finished"))
        for lane in lanes:
            fexec = lane.fexec
            try:
                fexec.job_monitor.stop()
                fexec.invoker.stop(wait=not remaining)
                _stop_jobs(fexec.compute_handler)
            except Exception:  # noqa: BLE001 - best effort: the platform may be gone
                log.debug("Lithops executor did not stop cleanly", exc_info=True)
            try:
                fexec.job_monitor.cleanup()
                _delete_job_data(fexec)
            except Exception:  # noqa: BLE001 - temporary job data only
                log.debug("Lithops temporary data not cleaned", exc_info=True)

