"""Job records: per-task stats saved to the store as JSON lines, summaries, and the
executor's bounded in-memory history.

Every map's records are written, once all its tasks are done, to
``<store>/_shardwren/jobs/<job_id>/tasks.jsonl`` with a ``job.json`` beside it,
by a background thread, so that ``shardwren jobs`` can list and plot past jobs.
The executor keeps recent jobs in a :class:`JobHistory`: compact columns of the
newest jobs' task records up to a row budget, and a summary of older ones.
"""

from __future__ import annotations

import array
import json
import math
import queue
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ._optional import optional
from .errors import KeyNotFoundError
from .storage import Store

PREFIX = "_shardwren/jobs"
TASK_FIELDS = ("job_id", "index", "attempt", "worker", "host", "pid", "submitted", "started",
               "finished", "fetched", "bytes_read", "bytes_written", "peak_rss", "outcome",
               "failure")


def records(fs_or_stats: Iterable[Any]) -> list[dict[str, Any]]:
    """Task records from futures (their ``stats``), from records already, or from the
    pandas DataFrame ``Executor.job_stats`` returns when pandas is installed.

    Raises
    ------
    TypeError
        For anything else, naming what was given.
    """
    frame = _frame_records(fs_or_stats)
    if frame is not None:
        return frame
    out = []
    for item in fs_or_stats:
        if isinstance(item, dict):
            stats = item
        elif isinstance(getattr(item, "stats", None), dict):
            stats = item.stats
        else:
            raise TypeError(
                f"expected futures, task records (dicts) or a DataFrame of them; got an "
                f"iterable of {type(item).__name__} ({item!r:.60})")
        out.append({k: stats.get(k) for k in TASK_FIELDS})
    return out


def _frame_records(table: Any) -> list[dict[str, Any]] | None:
    """The records in a pandas DataFrame, or None when ``table`` is not one.

    Iterating a DataFrame yields its column names, so it needs its own path.
    pandas stores a missing value as NaN (truthy), and numbers as numpy scalars
    (not JSON-serialisable): both become what a record holds, None and Python
    numbers, so a record read back from a table equals the one written.
    """
    pd = sys.modules.get("pandas")  # a DataFrame exists only if pandas was imported
    if pd is None or not isinstance(table, pd.DataFrame):
        return None
    cols = [c for c in table.columns if c in TASK_FIELDS]
    rows = table[cols].astype(object).where(table[cols].notna(), None).to_dict("records")
    return [{k: _native(r.get(k)) for k in TASK_FIELDS} for r in rows]


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value


def as_table(recs: list[dict[str, Any]]):
    """A pandas DataFrame when pandas is installed, else the list itself."""
    pd = optional("pandas", "job_stats")
    if pd is None:
        return recs
    return pd.DataFrame.from_records(recs, columns=TASK_FIELDS)


def summarize(recs: Sequence[dict[str, Any]], parallelism: int | None = None) -> dict[str, Any]:
    """Figures for a job: counts, failures by label, times, efficiency, bytes, slowest tasks."""
    done = [r for r in recs if r.get("finished") and r.get("started")]
    durations = sorted(((r["finished"] - r["started"], r) for r in done), key=lambda x: -x[0])
    submitted = [r["submitted"] for r in recs if r.get("submitted")]
    ends = [r["finished"] for r in done]
    wall = (max(ends) - min(submitted)) if ends and submitted else 0.0
    busy = sum(d for d, _ in durations)
    workers = parallelism or len({(r.get("host"), r.get("worker")) for r in done}) or 1
    return {
        "tasks": len(recs), "finished": len(done),
        "cancelled": sum(1 for r in recs if r.get("outcome") == "cancelled"),
        "failures": dict(Counter(r["failure"] for r in recs if r.get("outcome") == "failed")),
        "retries": sum(max(0, (r.get("attempt") or 1) - 1) for r in recs),
        "wall_s": wall, "task_s": busy,
        "efficiency": busy / (wall * workers) if wall > 0 else 0.0,
        "bytes_read": sum(r.get("bytes_read") or 0 for r in recs),
        "bytes_written": sum(r.get("bytes_written") or 0 for r in recs),
        "max_peak_rss": max((r.get("peak_rss") or 0 for r in recs), default=0),
        "slowest": [(r["index"], round(d, 4), r.get("worker")) for d, r in durations[:3]],
    }


def format_summary(s: dict[str, Any]) -> str:
    fails = ", ".join(f"{k}: {v}" for k, v in s["failures"].items()) or "none"
    slow = "; ".join(f"#{i} {d:.3f} s on {w}" for i, d, w in s["slowest"]) or "-"
    cancelled = f", {s['cancelled']} cancelled" if s.get("cancelled") else ""
    rows = [("tasks", f"{s['tasks']} ({s['finished']} finished{cancelled})"), ("failures", fails),
            ("retries", s["retries"]), ("wall time", f"{s['wall_s']:.3f} s"),
            ("total task time", f"{s['task_s']:.3f} s"),
            ("parallel efficiency", f"{s['efficiency'] * 100:.0f}%"),
            ("bytes read / written", f"{s['bytes_read'] / 1e6:.1f} MB / {s['bytes_written'] / 1e6:.1f} MB"),
            ("max peak RSS", f"{s['max_peak_rss'] / 1e6:.0f} MB"), ("slowest tasks", slow)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# Compact columns: numbers in typed arrays (None as NaN or -1), the rest as object lists.
_FLOAT_FIELDS = ("submitted", "started", "finished", "fetched")
_INT_FIELDS = ("index", "attempt", "pid", "bytes_read", "bytes_written", "peak_rss")
_OBJECT_FIELDS = ("worker", "host", "outcome", "failure")


class _Columns:
    """One finished job's task records as columns: about 110 bytes a task instead of ~700."""

    __slots__ = ("cols", "job_id", "n")

    def __init__(self, job_id: str, recs: Sequence[dict[str, Any]]):
        self.job_id, self.n = job_id, len(recs)
        self.cols: dict[str, Any] = {}
        for k in _FLOAT_FIELDS:
            self.cols[k] = array.array("d", (math.nan if r.get(k) is None else float(r[k])
                                             for r in recs))
        for k in _INT_FIELDS:
            self.cols[k] = array.array("q", (-1 if r.get(k) is None else int(r[k]) for r in recs))
        for k in _OBJECT_FIELDS:
            self.cols[k] = [r.get(k) for r in recs]

    def records(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.n):
            rec: dict[str, Any] = {"job_id": self.job_id}
            for k in _FLOAT_FIELDS:
                v = self.cols[k][i]
                rec[k] = None if math.isnan(v) else v
            for k in _INT_FIELDS:
                iv = self.cols[k][i]
                rec[k] = None if iv == -1 else iv
            for k in _OBJECT_FIELDS:
                rec[k] = self.cols[k][i]
            out.append({k: rec.get(k) for k in TASK_FIELDS})
        return out


class JobRecord:
    """One map in the executor's history.

    Attributes
    ----------
    job_id, name : str
        The map's id and its function's name.
    tasks : int
        Number of tasks.
    summary : dict or None
        :func:`summarize` figures, set once every task is done.

    Unpacks and indexes as the tuple ``(job_id, name, records)``.
    """

    __slots__ = ("_columns", "_live", "job_id", "name", "summary", "tasks")

    def __init__(self, job_id: str, name: str, live: list[dict[str, Any]]):
        self.job_id, self.name, self.tasks = job_id, name, len(live)
        self._live: list[dict[str, Any]] | None = live  # the futures' own stats, while running
        self._columns: _Columns | None = None
        self.summary: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """Whether every task finished (and the records were made compact)."""
        return self.summary is not None

    @property
    def records(self) -> list[dict[str, Any]]:
        """The task records (see :data:`TASK_FIELDS`); ``[]`` once dropped for the budget."""
        if self._live is not None:
            return records(self._live)
        return self._columns.records() if self._columns is not None else []

    @property
    def kept(self) -> int:
        """Task records held in compact form."""
        return self._columns.n if self._columns is not None else 0

    def _tuple(self) -> tuple[str, str, list[dict[str, Any]]]:
        return (self.job_id, self.name, self.records)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._tuple())

    def __getitem__(self, i: int) -> Any:
        return self._tuple()[i]

    def __len__(self) -> int:
        return 3

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<JobRecord {self.job_id} {self.name} tasks={self.tasks} {state}>"


class JobHistory:
    """The executor's recent maps, oldest first, in bounded memory.

    At most ``max_jobs`` jobs are remembered. A finished job's records are kept
    as compact columns while the total stays within ``max_tasks`` task records;
    past it, the oldest jobs keep only their :attr:`JobRecord.summary` (the newest
    job always keeps its records). A running job's records are its futures' own
    stats, so they cost nothing extra and never keep a future alive.
    """

    def __init__(self, max_jobs: int = 1000, max_tasks: int = 200_000):
        self.max_jobs = max_jobs
        self.max_tasks = max_tasks
        self._jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self._kept = 0  # task records held as columns, over all jobs
        self._lock = threading.Lock()

    def add(self, job_id: str, name: str, live: list[dict[str, Any]]) -> JobRecord:
        """Remember a new map whose tasks' stats are ``live``."""
        entry = JobRecord(job_id, name, live)
        with self._lock:
            self._jobs[job_id] = entry
            while len(self._jobs) > self.max_jobs:
                _, old = self._jobs.popitem(last=False)
                self._kept -= old.kept
        return entry

    def finish(self, entry: JobRecord, recs: Sequence[dict[str, Any]],
               summary: dict[str, Any] | None = None) -> None:
        """Replace a finished job's live stats with compact records and its summary."""
        columns = _Columns(entry.job_id, recs)
        summary = summary if summary is not None else summarize(recs)
        with self._lock:
            entry._columns, entry._live, entry.summary = columns, None, summary
            if entry.job_id not in self._jobs:
                return  # already forgotten (max_jobs): its columns count nowhere
            self._kept += columns.n
            if self._kept <= self.max_tasks:
                return
            newest = next(reversed(self._jobs.values()))
            for e in self._jobs.values():  # oldest first, until back within the budget
                if self._kept <= self.max_tasks:
                    break
                if e is not newest and e.kept:
                    self._kept -= e.kept
                    e._columns = None

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; KeyError naming it if it is not (or no longer) remembered."""
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(f"job {job_id!r} is not in this executor's history (it keeps the "
                               f"last {self.max_jobs} jobs)") from None

    def _list(self) -> list[JobRecord]:
        with self._lock:
            return list(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self._list())

    def __getitem__(self, i: Any) -> Any:
        return self._list()[i]

    def __bool__(self) -> bool:
        return bool(self._jobs)


class JobLog:
    """Finishes jobs from a background thread: compact history records, then the store's log.

    The thread runs while jobs are waiting to be written and exits after
    :meth:`close`.
    """

    def __init__(self, store: Store, history: JobHistory | None = None):
        self.store = store
        self.history = history
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def finish(self, entry: JobRecord, created: float, stats: list[dict[str, Any]]) -> None:
        """Record a job whose tasks (``stats``, their futures' stats) are all done."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.put((entry, created, stats))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="shardwren-joblog",
                                                    daemon=True)
                    self._thread.start()
        if closed:  # a task that finished after shutdown: record it here and now
            self._process(entry, created, stats)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._process(*item)
            del item  # an idle thread holds no job

    def _process(self, entry: JobRecord, created: float, stats: list[dict[str, Any]]) -> None:
        recs = records(stats)
        s = summarize(recs)
        if self.history is not None:
            self.history.finish(entry, recs, s)
        try:
            self._write(entry.job_id, entry.name, created, recs, s)
        except Exception:  # noqa: BLE001, S110 - a job log must never break the job
            pass

    def _write(self, job_id: str, name: str, created: float, recs: list[dict[str, Any]],
               s: dict[str, Any]) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in recs)
        self.store.put(f"{PREFIX}/{job_id}/tasks.jsonl", lines.encode())
        meta = {"job_id": job_id, "function": name, "created": created, "tasks": len(recs),
                "failed": sum(s["failures"].values()),
                "status": "failed" if s["failures"] else "done", "wall_s": s["wall_s"]}
        self.store.put(f"{PREFIX}/{job_id}/job.json", json.dumps(meta).encode())

    def close(self, timeout: float = 10.0) -> None:
        """Finish pending writes and stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


def list_jobs(store: Store) -> list[dict[str, Any]]:
    """Every job recorded in ``store``, oldest first."""
    jobs = []
    for key in store.list(PREFIX):
        if key.endswith("/job.json"):
            jobs.append(json.loads(store.get(key)))
    return sorted(jobs, key=lambda j: j["created"])


def load_job(store: Store, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A recorded job's metadata and task records (``job_id`` may be a unique prefix)."""
    matches = [j for j in list_jobs(store) if j["job_id"].startswith(job_id)]
    if len(matches) != 1:
        raise KeyNotFoundError(
            f"{'no' if not matches else 'several'} jobs matching {job_id!r} in {store.url}; "
            "`shardwren jobs` lists them")
    meta = matches[0]
    text = store.get(f"{PREFIX}/{meta['job_id']}/tasks.jsonl").decode()
    return meta, [json.loads(line) for line in text.splitlines() if line]
