"""Pictures of jobs: a PyWren-style timeline and a histogram of task durations.

matplotlib (``pip install 'shardwren[plot]'``), headless (Agg). Both accept futures
or task records: ``ex.job_stats`` (a list of dicts, or a pandas DataFrame),
``shardwren.jobs.load_job``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ._optional import require
from .jobs import records

#: Bar colours by outcome; failures by label, other labels fall back to red.
COLORS = {"ok": "#2a9d8f", "WorkerCrashedError": "#e63946", "TaskTimeoutError": "#9b5de5",
          "TaskMemoryError": "#f4a261", "ExecutorShutdownError": "#adb5bd"}
USER_ERROR = "#e9c46a"


def _figure(feature: str):
    matplotlib = require("matplotlib", feature)
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", feature)


def _color(r: dict[str, Any]) -> str:
    if r.get("outcome") == "ok":
        return COLORS["ok"]
    return COLORS.get(r.get("failure") or "", USER_ERROR)


def timeline(fs_or_stats: Iterable[Any], path: str, title: str | None = None,
             size: tuple[float, float] = (10, 6), dpi: int = 100) -> str:
    """Draw one bar per task over time, coloured by outcome, and the running count below.

    Parameters
    ----------
    fs_or_stats : futures or task records
    path : str
        PNG file to write.

    Returns
    -------
    str
        ``path``.
    """
    plt = _figure("plot.timeline")
    recs = [r for r in records(fs_or_stats) if r.get("started") and r.get("finished")]
    if not recs:
        raise ValueError("no finished tasks to plot")
    t0 = min(r["submitted"] or r["started"] for r in recs)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=size, sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    order = sorted(recs, key=lambda r: r["index"])
    y = np.arange(len(order))
    starts = np.array([r["started"] - t0 for r in order])
    ends = np.array([r["finished"] - t0 for r in order])
    subs = np.array([(r["submitted"] or r["started"]) - t0 for r in order])
    ax.hlines(y, subs, starts, colors="#dddddd", linewidth=1, label="queued")
    ax.barh(y, ends - starts, left=starts, height=0.8, color=[_color(r) for r in order])
    from matplotlib.patches import Patch

    labels = sorted({r.get("failure") or "ok" for r in order})
    handles = [Patch(color=COLORS.get(lab, USER_ERROR), label=lab) for lab in labels]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_ylabel("task")
    ax.set_title(title or f"job {order[0].get('job_id')}: {len(order)} tasks")
    edges = np.sort(np.concatenate([starts, ends]))
    running = [np.sum((starts <= t) & (ends > t)) for t in edges]
    ax2.step(edges, running, where="post", color="#264653")
    ax2.set_ylabel("running")
    ax2.set_xlabel("seconds since first submission")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def histogram(fs_or_stats: Iterable[Any], path: str, bins: int = 30,
              size: tuple[float, float] = (8, 4), dpi: int = 100) -> str:
    """Histogram of task durations (seconds) to ``path`` (PNG)."""
    plt = _figure("plot.histogram")
    recs = [r for r in records(fs_or_stats) if r.get("started") and r.get("finished")]
    if not recs:
        raise ValueError("no finished tasks to plot")
    d = [r["finished"] - r["started"] for r in recs]
    fig, ax = plt.subplots(figsize=size)
    ax.hist(d, bins=bins, color="#2a9d8f")
    ax.set_xlabel("task duration (s)")
    ax.set_ylabel("tasks")
    ax.set_title(f"{len(d)} tasks, median {np.median(d):.3f} s, max {max(d):.3f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
