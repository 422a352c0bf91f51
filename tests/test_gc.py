"""`shardwren store gc`: what a killed driver left behind goes; what a live job owns stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

import shardwren
from shardwren.cli import main
from shardwren.matrix import ShardedMatrix, scratch_from_numpy
from shardwren.storage import _owners, collect_garbage

DRIVER = textwrap.dedent("""
    import sys, time, numpy as np, shardwren
    from shardwren.linalg._common import Inputs
    store = shardwren.open_store(sys.argv[1])
    with shardwren.default_executor(backend="local", store=store, workers=1, progress=False) as ex:
        with Inputs(ex, block_rows=50) as inputs:   # what knn/matmul do with array inputs
            m = inputs.matrix(np.ones((200, 8), np.float32), "train")
            store._write_temporary(store.path("results/D/c/0/0"), [b"half a chunk"])
            print("READY", m.key, flush=True)
            time.sleep(600)
""")


def _start_driver(tmp_path, url):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("READY"), line
    return proc, line.split()[1]


def test_killed_driver_leftovers_are_collected_live_ones_kept(tmp_path):
    url = f"file://{tmp_path}/store"
    store = shardwren.open_store(url)
    keep = ShardedMatrix.from_numpy(np.ones((4, 4)), "results/keep", (2, 2), store=store)
    mine = scratch_from_numpy(np.ones((6, 2)), store, "query", (3, 2))  # this process: alive
    my_partial = store._write_temporary(store.path("results/E/c/0/0"), [b"mine"])
    proc, theirs = _start_driver(tmp_path, url)
    try:
        assert theirs.startswith("tmp/train-o")
        assert collect_garbage(store, dry_run=True) == []  # the driver is alive: nothing
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    found = {g.kind: g for g in collect_garbage(store, dry_run=True)}
    assert sorted(found) == ["lease", "partial", "scratch"]
    owner = found["scratch"].owner
    assert found["scratch"].key == theirs and found["scratch"].nbytes >= 200 * 8 * 4
    assert found["partial"].key.startswith(f"results/D/c/0/0.{owner}.")
    assert found["lease"].key == _owners.lease_key(owner)
    assert all("has exited" in g.reason for g in found.values())
    assert store.list(theirs)  # a dry run removes nothing
    removed = collect_garbage(store)
    assert len(removed) == 3
    assert store.list(theirs) == [] and store.temporaries() == [
        (my_partial[len(store.root) + 1:], os.stat(my_partial).st_mtime, 4)]
    assert store.list(mine.key) and keep.numpy().sum() == 16  # the live and the kept stay
    assert collect_garbage(store) == []
    mine.delete()


def test_cli_store_gc(tmp_path):
    url = f"file://{tmp_path}/store"
    proc, theirs = _start_driver(tmp_path, url)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    runner = CliRunner()
    dry = runner.invoke(main, ["store", "gc", "--store", url, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would remove scratch  {theirs}" in dry.output and "would remove 3 items" in dry.output
    assert shardwren.open_store(url).list(theirs)
    real = runner.invoke(main, ["store", "gc", "--store", url])
    assert real.exit_code == 0 and "removed 3 items" in real.output, real.output
    assert shardwren.open_store(url).list(theirs) == []
    again = runner.invoke(main, ["store", "gc", "--store", url])
    assert "nothing to remove" in again.output
    nowhere = tmp_path / "no" / "store"  # a mistyped path: reported, and not created
    out = runner.invoke(main, ["store", "gc", "--dry-run", "--store", f"file://{nowhere}"])
    assert out.exit_code == 0 and "no store there" in out.output
    assert not (tmp_path / "no").exists()


def _foreign_tag(pid: int = 4242) -> str:
    return f"o{'0' * 8 if _owners.host_id() != '0' * 8 else '1' * 8}p{pid}s1a"


def test_owners_on_other_machines_count_by_lease(tmp_path):
    """An owner on another machine is alive while its lease is fresh."""
    store = shardwren.open_store(f"file://{tmp_path}")
    fresh, stale, none = _foreign_tag(1), _foreign_tag(2), _foreign_tag(3)
    for tag in (fresh, stale, none):
        store.put(f"tmp/train-{tag}-abc/zarr.json", b"{}")
    now = time.time()
    store.put(_owners.lease_key(fresh), json.dumps({"renewed": now - 30}).encode())
    store.put(_owners.lease_key(stale), json.dumps({"renewed": now - 3600}).encode())
    store.put("tmp/pruned-0123456789ab/zarr.json", b"{}")  # no owner tag: never touched
    found = {g.key: g for g in collect_garbage(store, dry_run=True)}
    assert set(found) == {f"tmp/train-{stale}-abc", f"tmp/train-{none}-abc",
                          _owners.lease_key(stale)}
    assert "renewed no lease for 600 s" in found[f"tmp/train-{none}-abc"].reason


def test_partials_of_other_machines_expire_by_age(tmp_path):
    store = shardwren.open_store(f"file://{tmp_path}")
    young = store._write_temporary(store.path("a/b"), [b"1"])
    old_foreign = store.path(f"a/c.{_foreign_tag(5)}.0123456789ab.partial")
    old_untagged = store.path("a/d.0123456789abcdef0123456789abcdef.partial")  # older shardwren
    for p in (old_foreign, old_untagged):
        with open(p, "wb") as fh:
            fh.write(b"x")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    found = sorted(g.key for g in collect_garbage(store, dry_run=True))
    assert found == sorted(p[len(store.root) + 1:] for p in (old_foreign, old_untagged))
    assert young  # our own, being written: kept


def test_owner_tag_names_this_process_and_survives_pid_reuse():
    tag = _owners.owner_tag()
    assert _owners.find_tag(f"tmp/x-{tag}-abc") == tag
    assert _owners.alive_here(tag) is True
    m = _owners.TAG_RE.fullmatch(tag)
    reused = f"o{m.group(1)}p{m.group(2)}s{m.group(3)}0"  # same pid, other start time
    assert _owners.alive_here(reused) is False
    child = subprocess.run([sys.executable, "-c",
                            "from shardwren.storage._owners import owner_tag; print(owner_tag())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert _owners.alive_here(child) is False  # exited


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_gc_on_other_stores(kind, s3_url):
    url = s3_url if kind == "s3" else "memory://gc-test"
    store = shardwren.open_store(url)
    dead = _foreign_tag(9)
    store.put(f"tmp/x-{dead}-abc/zarr.json", b"{}")
    assert [g.key for g in collect_garbage(store)] == [f"tmp/x-{dead}-abc"]
    assert store.list("tmp") == []
    # write times, which stored outcomes are collected by, come from every store
    store.put("_shardwren/results/job/0", b"x")
    assert abs(store.modified("_shardwren/results/job/0") - time.time()) < 120
    assert [g.kind for g in collect_garbage(store, results_max_age=3600)] == []
    assert [g.kind for g in collect_garbage(store, results_max_age=0)] == ["result"]
    assert store.list("_shardwren/results") == []


def test_stored_outcomes_go_by_age_and_only_when_asked(tmp_path):
    """Outcomes written for futures pickled before they finished are nobody's garbage
    until the user says how old is too old (``--results-older-than DAYS``)."""
    import pickle

    from shardwren.storage._gc import RESULTS_PREFIX

    url = f"file://{tmp_path}/store"
    with shardwren.default_executor(store=url, workers=1, progress=False) as ex:
        fs = ex.map(lambda x: (time.sleep(0.3), x)[1], range(2))
        blobs = [pickle.dumps(f) for f in fs]  # unfinished: their outcomes go to the store
        shardwren.wait(fs)
    store = shardwren.open_store(url)
    deadline = time.time() + 30
    while len(store.list(RESULTS_PREFIX)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    old, fresh = store.list(RESULTS_PREFIX)
    assert abs(store.modified(fresh) - time.time()) < 60
    from shardwren.errors import KeyIsPrefixError, KeyNotFoundError

    with pytest.raises(KeyIsPrefixError):
        store.modified(RESULTS_PREFIX)  # a folder of keys, as size() says
    with pytest.raises(KeyNotFoundError):
        store.modified(f"{RESULTS_PREFIX}/no/such")
    three_days = time.time() - 3 * 86400
    os.utime(store.path(old), (three_days, three_days))
    assert not [g for g in collect_garbage(store, dry_run=True) if g.kind == "result"]
    runner = CliRunner()
    out = runner.invoke(main, ["store", "gc", "--store", url, "--results-older-than", "1"])
    assert out.exit_code == 0, out.output
    assert f"removed result   {old}" in out.output and "3.0 days ago" in out.output
    assert store.list(RESULTS_PREFIX) == [fresh]
    assert pickle.loads(blobs[1]).result(timeout=30) == 1  # the kept one still loads
    bad = runner.invoke(main, ["store", "gc", "--store", url, "--results-older-than", "-1"])
    assert bad.exit_code != 0 and "results-older-than" in bad.output


def test_gc_from_another_pid_namespace_keeps_a_live_owner(tmp_path):
    """gc run in a container sharing the host name and kernel (another PID namespace) took a
    live driver for dead, its pid being invisible there, and removed its scratch."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a PID namespace here (needs root or user namespaces)")
    url = f"file://{tmp_path}/store"
    proc, theirs = _start_driver(tmp_path, url)
    try:
        gc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m",
                             "shardwren.cli", "store", "gc", "--store", url],
                            capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        assert "nothing to remove" in gc.stdout, gc.stdout
        assert shardwren.open_store(url).list(theirs)
    finally:
        proc.kill()
        proc.wait(30)


def test_the_pid_namespace_is_part_of_the_host_id(monkeypatch):
    here = _owners.host_id()
    monkeypatch.setattr(_owners, "_pid_namespace", lambda: "pid:[1]")
    assert _owners.host_id() != here


def test_a_key_of_ones_own_ending_in_partial_is_a_value(tmp_path):
    """A user's key "reports/2024.partial" was hidden from list() and collected as an
    abandoned temporary an hour later."""
    store = shardwren.open_store(f"file://{tmp_path}")
    store.put("reports/2024.partial", b"mine")
    path = store.path("reports/2024.partial")
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert store.list("reports") == ["reports/2024.partial"]
    assert collect_garbage(store) == []
    assert store.get("reports/2024.partial") == b"mine"


def test_a_clean_exit_removes_the_lease_on_s3(s3_url):
    """The lease's removal ran in atexit, where concurrent.futures already refuses new work
    and s3fs cannot resolve the endpoint: on S3 the lease stayed behind every clean exit."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import sys; from shardwren.storage import _owners, "
                    "open_store; _owners.hold_lease(open_store(sys.argv[1]))", s3_url],
                   check=True, timeout=120)
    assert shardwren.open_store(s3_url).list("_shardwren/owners") == []
