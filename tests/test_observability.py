"""Per-task records, job logs in the store, summaries, plots and captured logs."""

from __future__ import annotations

import logging
import struct
import time

import numpy as np
import pytest
from click.testing import CliRunner

import shardwren
from shardwren import cli, plot
from shardwren.jobs import list_jobs, load_job
from shardwren.matrix import ShardedMatrix


def _png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _noisy(i):
    print(f"task {i} says hello")
    logging.getLogger("user").warning("task %d warns", i)
    time.sleep(0.01)
    if i == 3:
        raise ValueError("three is bad")
    return i


def test_stats_are_consistent(executor, tmp_path):
    m = ShardedMatrix.from_numpy(np.ones((40, 10), np.float32), "obs", (10, 10),
                                 store=executor.store)
    fs = executor.map(lambda i: m.get_block(i, 0).sum(), range(4))
    shardwren.wait(fs)
    for f in fs:
        s = f.stats
        assert s["submitted"] <= s["started"] <= s["finished"]
        assert s["attempt"] == 1 and s["outcome"] == "ok" and s["failure"] is None
        assert s["bytes_read"] == 404 and s["bytes_written"] == 0  # the block and its crc32c
    fs[0].result()
    assert fs[0].stats["fetched"] >= fs[0].stats["finished"]


def test_logs_are_captured_per_task(executor):
    fs = executor.map(_noisy, range(6))
    shardwren.wait(fs)
    for i, f in enumerate(fs):
        logs = f.logs()
        assert f"task {i} says hello" in logs and f"task {i} warns" in logs
        assert all(f"task {j} " not in logs for j in range(6) if j != i)
    assert fs[3].stats["outcome"] == "failed" and fs[3].stats["failure"] == "ValueError"


def test_summary_and_job_stats(executor, capsys):
    fs = executor.map(_noisy, range(6))
    shardwren.wait(fs)
    figures = executor.summary(fs)
    out = capsys.readouterr().out
    assert figures["tasks"] == 6 and figures["failures"] == {"ValueError": 1}
    assert "parallel efficiency" in out and "ValueError: 1" in out
    table = executor.job_stats(fs)
    assert len(table) == 6


def test_plots_render(executor, tmp_path):
    fs = executor.map(_noisy, range(12))
    shardwren.wait(fs)
    path = plot.timeline(fs, str(tmp_path / "t.png"), size=(8, 5), dpi=50)
    assert _png_size(path) == (400, 250)
    path = plot.histogram(executor.job_stats(fs), str(tmp_path / "h.png"), size=(6, 3), dpi=50)
    assert _png_size(path) == (300, 150)
    with pytest.raises(ValueError, match="no finished tasks"):
        plot.timeline([], str(tmp_path / "x.png"))


def test_jobs_recorded_in_store_and_cli(tmp_path):
    store = f"file://{tmp_path}/store"
    with shardwren.default_executor(workers=2, store=store, progress=False) as ex:
        a = ex.map(_noisy, range(5))
        b = ex.map(lambda x: x * 2, range(3))
        shardwren.wait(a + b)
    jobs = list_jobs(shardwren.open_store(store))
    assert [j["tasks"] for j in jobs] == [5, 3]
    assert [j["status"] for j in jobs] == ["failed", "done"]
    meta, recs = load_job(shardwren.open_store(store), a[0].job_id)
    assert len(recs) == 5 and recs[3]["failure"] == "ValueError"
    runner = CliRunner()
    out = runner.invoke(cli.main, ["jobs", "--store", store])
    assert out.exit_code == 0 and a[0].job_id in out.output and b[0].job_id in out.output
    out = runner.invoke(cli.main, ["jobs", "--store", store, "show", a[0].job_id,
                                   "--plot", str(tmp_path / "j.png")])
    assert out.exit_code == 0, out.output
    assert "ValueError: 1" in out.output and (tmp_path / "j.png").stat().st_size > 1000


def _mixed(x):
    import os

    if x == 1:
        time.sleep(30)
    if x == 2:
        os._exit(7)
    return x


def test_crashed_timed_out_and_cancelled_tasks_are_counted(tmp_path):
    """Crashed and timed-out tasks had no start or end, so timelines and summaries left
    them out; cancelled ones were neither finished nor counted."""
    from shardwren.jobs import records, summarize

    with shardwren.default_executor(workers=2, retries=0, store=f"file://{tmp_path}",
                                    progress=False) as ex:
        fs = ex.map(_mixed, range(4), timeout=1)
        shardwren.wait(fs)
        recs = {r["index"]: r for r in records(fs)}
        for i, failure in ((1, "TaskTimeoutError"), (2, "WorkerCrashedError")):
            r = recs[i]
            assert r["outcome"] == "failed" and r["failure"] == failure
            assert r["started"] and r["finished"] and r["finished"] >= r["started"]
        plot.timeline(fs, str(tmp_path / "t.png"))  # every task drawn, crash colours too
        blocker = ex.map(time.sleep, [2, 2])
        queued = ex.map(abs, range(6))
        cancelled = sum(f.cancel() for f in queued)
        shardwren.wait(blocker + queued)
        s = summarize(records(queued))
        assert cancelled >= 1  # both workers were busy for 2 s
        assert s["cancelled"] == cancelled and s["finished"] == 6 - cancelled
        from shardwren.jobs import format_summary

        assert f"{cancelled} cancelled" in format_summary(s)
