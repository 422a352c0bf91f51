"""Job records: per-task stats saved to the store as JSON lines, and summaries.

Every map's records are written, once all its tasks are done, to
``<store>/_shardwren/jobs/<job_id>/tasks.jsonl`` with a ``job.json`` beside it,
by a background thread, so that ``shardwren jobs`` can list and plot past jobs.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from typing import Any, Iterable, Sequence

from .errors import KeyNotFoundError
from .storage import Store

PREFIX = "_shardwren/jobs"
TASK_FIELDS = ("job_id", "index", "attempt", "worker", "host", "pid", "submitted", "started",
               "finished", "fetched", "bytes_read", "bytes_written", "peak_rss", "outcome",
               "failure")


def records(fs_or_stats: Iterable[Any]) -> list[dict[str, Any]]:
    """Task records from futures (their ``stats``), from records already, or from
    the DataFrame :func:`as_table` made of them."""
    if hasattr(fs_or_stats, "to_dict"):  # a pandas DataFrame (pandas came with xarray)
        fs_or_stats = fs_or_stats.to_dict("records")
    out = []
    for item in fs_or_stats:
        stats = item if isinstance(item, dict) else item.stats
        out.append({k: stats.get(k) for k in TASK_FIELDS})
    return out


def as_table(recs: list[dict[str, Any]]):
    """A pandas DataFrame when pandas is installed, else the list itself."""
    try:
        import pandas as pd
    except ImportError:
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
    rows = [("tasks", f"{s['tasks']} ({s['finished']} finished)"), ("failures", fails),
            ("retries", s["retries"]), ("wall time", f"{s['wall_s']:.3f} s"),
            ("total task time", f"{s['task_s']:.3f} s"),
            ("parallel efficiency", f"{s['efficiency'] * 100:.0f}%"),
            ("bytes read / written", f"{s['bytes_read'] / 1e6:.1f} MB / {s['bytes_written'] / 1e6:.1f} MB"),
            ("max peak RSS", f"{s['max_peak_rss'] / 1e6:.0f} MB"), ("slowest tasks", slow)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class JobLog:
    """Writes each finished job's records to the store from a background thread."""

    def __init__(self, store: Store):
        self.store = store
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def track(self, job_id: str, name: str, fs: Sequence[Any]) -> None:
        """Write the job's records once every future in ``fs`` is done."""
        remaining = [len(fs)]
        lock = threading.Lock()
        created = time.time()

        def one_done(_):
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._queue.put((job_id, name, created, fs))
                self._ensure_thread()

        for f in fs:
            f.add_done_callback(one_done)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shardwren-joblog",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(*item)
            except Exception:  # noqa: BLE001 - a job log must never break the job
                pass

    def _write(self, job_id: str, name: str, created: float, fs: Sequence[Any]) -> None:
        recs = records(fs)
        lines = "".join(json.dumps(r) + "\n" for r in recs)
        self.store.put(f"{PREFIX}/{job_id}/tasks.jsonl", lines.encode())
        s = summarize(recs)
        meta = {"job_id": job_id, "function": name, "created": created, "tasks": len(recs),
                "failed": sum(s["failures"].values()),
                "status": "failed" if s["failures"] else "done", "wall_s": s["wall_s"]}
        self.store.put(f"{PREFIX}/{job_id}/job.json", json.dumps(meta).encode())

    def close(self, timeout: float = 10.0) -> None:
        """Finish pending writes."""
        with self._lock:
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
