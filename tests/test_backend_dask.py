"""The Dask backend against a real scheduler and worker processes on loopback."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import shardwren
from shardwren.errors import SchedulerUnreachableError, StoreNotSharedError
from shardwren.linalg import knn
from shardwren.matrix import ShardedMatrix

from conftest import free_port
from executor_conformance import ExecutorConformance

pytest.importorskip("distributed")


def _executor_on(address, tmp_path_factory):
    store = f"file://{tmp_path_factory.mktemp('dask-store')}"
    ex = shardwren.default_executor(backend="dask", address=address, store=store, progress=False)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def dask_ex(dask_cluster, tmp_path_factory):
    yield from _executor_on(dask_cluster, tmp_path_factory)


class TestDaskConformance(ExecutorConformance):
    @pytest.fixture
    def ex(self, dask_ex):
        return dask_ex

    def test_stats_name_the_dask_worker(self, ex):
        f = ex.call_async(lambda x: x, 1)
        f.result()
        assert f.stats["worker"].startswith("tcp://127.0.0.1:")


def test_configured_by_environment(dask_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDWREN_BACKEND", "dask")
    monkeypatch.setenv("SHARDWREN_DASK_ADDRESS", dask_cluster)
    with shardwren.default_executor(store=f"file://{tmp_path}") as ex:
        assert ex.backend.name == "dask" and ex.parallelism == 2
        assert ex.call_async(lambda x: x * 2, 21).result() == 42


def test_existing_client(dask_cluster, tmp_path):
    from distributed import Client

    with Client(dask_cluster, set_as_default=False) as client:
        with shardwren.default_executor(backend="dask", client=client, store=f"file://{tmp_path}") as ex:
            assert ex.map(lambda x: x + 1, [1, 2])[1].result() == 3
        assert client.status == "running"  # not ours to close


def test_unreachable_scheduler_fails_fast():
    t = time.time()
    with pytest.raises(SchedulerUnreachableError, match="dask scheduler"):
        shardwren.default_executor(backend="dask", address=f"tcp://127.0.0.1:{free_port()}",
                                   connect_timeout=2)
    assert time.time() - t < 30


def test_memory_store_refused(dask_cluster):
    with pytest.raises(StoreNotSharedError, match="s3://"):
        shardwren.default_executor(backend="dask", address=dask_cluster, store="memory://x")


def test_local_store_refused_for_remote_workers(dask_ex, monkeypatch):
    monkeypatch.setattr(type(dask_ex.backend), "worker_hosts", lambda self: {"10.9.8.7"})
    with pytest.raises(StoreNotSharedError, match="10.9.8.7.*shared_filesystem"):
        dask_ex.backend.check_store(shardwren.open_store(dask_ex.store.url))
    dask_ex.backend.shared_filesystem = True
    try:
        dask_ex.backend.check_store(shardwren.open_store(dask_ex.store.url))
    finally:
        dask_ex.backend.shared_filesystem = False


def test_sharded_matrix_on_s3_from_dask_workers(dask_cluster, s3_url):
    with shardwren.default_executor(backend="dask", address=dask_cluster, store=s3_url) as ex:
        X = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
        m = ShardedMatrix("x", shape=X.shape, shard_sizes=[70, 20], store=s3_url)
        m.shard_matrix(X, executor=ex)  # blocks written by the Dask workers
        np.testing.assert_array_equal(m.numpy(), X)
        sums = shardwren.get_all_results(ex.map(lambda i: float(m.get_block(i, 0).sum()), range(m.grid[0])))
        np.testing.assert_allclose(sum(sums), X.sum(), rtol=1e-4)


def _subset():
    path = os.path.join(os.environ.get("SHARDWREN_DATA_DIR", "/nonexistent"), "mnist")
    if os.path.isdir(path):
        from shardwren.datasets import load_mnist

        X, _, Xt, _ = load_mnist(download=False)
        return X[:6000], Xt[:1000]
    rng = np.random.default_rng(1)
    return rng.random((6000, 784), dtype=np.float32), rng.random((1000, 784), dtype=np.float32)


def test_knn_identical_to_local_backend(dask_ex, executor):
    train, query = _subset()
    d1, i1 = knn(train, query, 3, executor=dask_ex, block_size=1500)
    d2, i2 = knn(train, query, 3, executor=executor, block_size=1500)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_worker_killed_mid_map_is_survived(dask_cluster, dask_ex):
    from distributed import Client

    with Client(dask_cluster, set_as_default=False) as c:
        pids = c.run(os.getpid)
    fs = dask_ex.map(lambda x: time.sleep(0.3) or x * x, range(20))
    time.sleep(1.0)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    assert shardwren.get_all_results(fs) == [x * x for x in range(20)]
    with Client(dask_cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_tune_workers_applies_to_every_worker(dask_ex):
    from shardwren.backends.dask import tune_workers

    result = tune_workers(dask_ex.backend.client)
    assert len(result) == 2 and all(result.values())


def test_pruned_knn_identical_to_local_backend(dask_ex, executor):
    train, query = _subset()
    d1, i1 = knn(train, query, 3, executor=dask_ex, method="pruned", block_size=1500)
    d2, i2 = knn(train, query, 3, executor=executor, method="pruned", block_size=1500)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_signed_tasks_need_the_secret_on_workers(dask_cluster, tmp_path):
    from shardwren.errors import PayloadSignatureError

    with shardwren.default_executor(backend="dask", address=dask_cluster, store=f"file://{tmp_path}",
                                    secret="cluster-secret", retries=0) as ex:
        with pytest.raises(PayloadSignatureError, match="no SHARDWREN_SECRET"):
            ex.call_async(lambda x: x, 1).result(timeout=60)


def _pid_then_sleep(path, seconds=4.0):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def test_worker_killed_during_the_only_task_of_a_map_runs_it_again(dask_cluster, dask_ex, tmp_path):
    # The only task of its map: nothing else keeps the function's bytes alive on the cluster.
    marker = tmp_path / "pid"
    f = dask_ex.map(_pid_then_sleep, [str(marker)], retries=0)[0]
    _kill_first_run_and_finish(dask_cluster, f, marker)


def _kill_first_run_and_finish(dask_cluster, f, marker, after=0.0):
    """SIGKILL the worker running ``f`` (``after`` seconds into it, by its pid in
    ``marker``); the task must finish on another worker, and the cluster get back to two."""
    from distributed import Client

    deadline = time.time() + 60
    while not (marker.exists() and marker.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(after)
    first = int(marker.read_text())
    marker.unlink()
    os.kill(first, signal.SIGKILL)
    assert f.result(timeout=120) == "finished"
    assert f.stats["pid"] != first
    with Client(dask_cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)


def test_shutdown_waits_with_its_own_client(dask_cluster, tmp_path):
    import distributed

    with pytest.raises(ValueError):
        distributed.default_client()  # no default client anywhere in this process
    ex = shardwren.default_executor(backend="dask", address=dask_cluster, store=f"file://{tmp_path}",
                                    progress=False)
    fs = ex.map(lambda s: time.sleep(s) or s, [1.0, 1.0])
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in fs] == [1.0, 1.0]


def test_a_late_backup_of_a_finished_task_is_ignored_quietly(dask_ex, caplog):
    import logging
    import pickle

    from shardwren import serialize
    from shardwren.futures import Future

    caplog.set_level(logging.DEBUG)
    f = Future("late-backup", 0)
    f.set_running()
    f.set_payload(pickle.dumps("original"))
    dask_ex.backend.submit("late-backup-fn", serialize.dumps_function(lambda x: x), [(f, pickle.dumps((1,)))])
    assert f.result() == "original"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def dask_threaded_ex(dask_cluster_threaded, tmp_path_factory):
    yield from _executor_on(dask_cluster_threaded, tmp_path_factory)


class TestDaskThreadedConformance(ExecutorConformance):
    """The same behaviour on one worker running four tasks at once in threads."""

    @pytest.fixture
    def ex(self, dask_threaded_ex):
        return dask_threaded_ex


def test_memory_limit_refused_up_front_on_threaded_workers(dask_threaded_ex):
    from shardwren.errors import ConfigError

    assert not dask_threaded_ex.backend.enforces_memory_limit
    with pytest.raises(ConfigError, match=r"memory_limit.*--nthreads 1"):
        dask_threaded_ex.map(lambda x: x, [1], memory_limit="1GiB")


def test_peak_rss_is_unknown_not_wrong_on_threaded_workers(dask_threaded_ex, dask_ex):
    fs = dask_threaded_ex.map(lambda n: float(np.ones(n).sum()), [20_000_000, 10, 10, 10])
    shardwren.wait(fs)
    assert [f.stats["peak_rss"] for f in fs] == [None] * 4
    # One task per process: measured. Unless a task an earlier test abandoned after its
    # timeout (conformance suite) still sleeps in its thread there: then None, until it ends.
    deadline = time.time() + 120
    while True:
        g = dask_ex.call_async(lambda n: float(np.ones(n).sum()), 10)
        g.result()
        if g.stats["peak_rss"] is not None or time.time() > deadline:
            break
        time.sleep(1)
    assert g.stats["peak_rss"] > 10_000_000


def test_a_stopped_worker_times_out_on_the_driver_side(dask_ex, tmp_path):
    # SIGSTOP freezes the whole worker, its own deadline thread included: only the driver can
    # notice. The task's start was announced, so the driver's deadline (limit + margin) fires.
    marker = tmp_path / "pid"
    f = dask_ex.map(_pid_then_sleep, [str(marker)], timeout=1, retries=0)[0]
    deadline = time.time() + 60
    # running() once the driver has the start event: stopping the worker earlier could
    # swallow the event itself, and then nothing tells the driver the task started.
    while not (f.running() and marker.exists() and marker.read_text()) and time.time() < deadline:
        time.sleep(0.01)
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        exc = f.exception(timeout=120)
        assert isinstance(exc, shardwren.errors.TaskTimeoutError), exc
        assert "stopped responding" in str(exc)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert dask_ex.call_async(lambda x: x + 1, 1).result(timeout=60) == 2


def _pid_then_stop(path):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)  # the whole worker freezes as its task starts
    return "resumed"


def test_a_worker_frozen_as_its_task_starts_times_out_on_the_driver_side(dask_ex, tmp_path):
    """The task freezes its worker at once. Its start event must have left the worker
    before the task ran: the driver arms its deadline on that event, and without it the
    future would never finish (the event used to sit in the worker's send buffer)."""
    marker = tmp_path / "pid"
    f = dask_ex.map(_pid_then_stop, [str(marker)], timeout=1, retries=0)[0]
    try:
        exc = f.exception(timeout=60)
        assert isinstance(exc, shardwren.errors.TaskTimeoutError), exc
        assert "stopped responding" in str(exc)
    finally:
        f.cancel()
        deadline = time.time() + 60
        while not (marker.exists() and marker.read_text()) and time.time() < deadline:
            time.sleep(0.01)
        if marker.exists() and marker.read_text():  # resume it once it has stopped
            pid = int(marker.read_text())
            while time.time() < deadline and _process_state(pid) not in ("T", "t", None):
                time.sleep(0.01)
            os.kill(pid, signal.SIGCONT)
    assert dask_ex.call_async(lambda x: x + 1, 1).result(timeout=60) == 2


def _process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_knn_identical_on_threaded_workers(dask_threaded_ex, executor):
    train, query = _subset()
    d2, i2 = knn(train, query, 3, executor=executor, block_size=1000)
    for _ in range(2):
        d1, i1 = knn(train, query, 3, executor=dask_threaded_ex, block_size=1000)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)


def _cancel_every_other(ex, marks, n):
    """Cancel every odd task of a map; return (cancelled, ran, futures)."""

    def touch(i):
        time.sleep(0.02)
        open(marks / str(i), "w").close()

    fs = ex.map(touch, range(n))
    cancelled = {i for i, f in enumerate(fs) if i % 2 and f.cancel()}
    shardwren.wait(fs, timeout=120)
    return cancelled, {int(p.name) for p in marks.iterdir()}, fs


@pytest.mark.parametrize("which", ["processes", "threads"])
def test_cancelled_tasks_queued_on_dask_never_run(which, dask_ex, dask_threaded_ex, tmp_path):
    """Dask keeps most of a map in its scheduler's queue: cancel() takes those back
    (before, every task handed to Dask was marked running and cancel() returned False).
    A task reported cancelled must never run; one not cancelled must run and succeed."""
    ex = dask_ex if which == "processes" else dask_threaded_ex
    marks = tmp_path / "ran"
    marks.mkdir()
    n = 120
    cancelled, ran, fs = _cancel_every_other(ex, marks, n)
    assert len(cancelled) > n // 4, f"only {len(cancelled)} of {n // 2} queued tasks cancelled"
    assert not cancelled & ran, "a task reported cancelled ran"
    assert ran | cancelled == set(range(n)), "a task neither ran nor was cancelled"
    assert all(fs[i].cancelled() for i in cancelled)
    with pytest.raises(shardwren.errors.TaskCancelledError, match="before it started"):
        fs[min(cancelled)].exception()
    assert all(fs[i].result() is None for i in set(range(n)) - cancelled)
    assert not ex.backend._outstanding, "withdrawn tasks left in the backend's books"
    # concurrent.futures' own waiting sees the withdrawn ones as done (notified)
    assert len(list(shardwren.as_completed(fs, timeout=60))) == n


def test_dask_tasks_are_pending_until_they_start(dask_ex, tmp_path):
    gate = tmp_path / "go"

    def wait_for_gate(_):
        while not gate.exists():
            time.sleep(0.01)

    fs = dask_ex.map(wait_for_gate, range(20))
    deadline = time.time() + 60
    while sum(f.running() for f in fs) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    assert sum(f.running() for f in fs) == 2  # two worker threads: two tasks run, 18 wait
    assert fs[-1].cancel() and fs[-1].cancelled()
    gate.touch()
    shardwren.wait(fs, timeout=60)
    assert all(f.result() is None for f in fs[:-1])


def test_two_executors_sharing_a_client_both_see_starts(dask_cluster, tmp_path):
    from distributed import Client

    with Client(dask_cluster, set_as_default=False) as client:
        a = shardwren.default_executor(backend="dask", client=client, store=f"file://{tmp_path}/a",
                                       progress=False)
        b = shardwren.default_executor(backend="dask", client=client, store=f"file://{tmp_path}/b",
                                       progress=False)
        a.call_async(lambda x: x, 1).result()
        a.shutdown()  # must not unsubscribe b
        f = b.call_async(time.sleep, 2.0)
        deadline = time.time() + 30
        while not f.running() and time.time() < deadline:
            time.sleep(0.01)
        assert f.running()
        assert f.result() is None
        b.shutdown()


def test_tasks_queued_in_dask_are_not_backed_up_as_stragglers(dask_ex):
    """Tasks waiting in Dask's queue have not started: before they were marked running
    when handed to Dask, the last tasks of a map looked like stragglers and got backups."""
    fs = dask_ex.map(time.sleep, [0.4] * 16)
    shardwren.wait(fs, timeout=120)
    assert all(f.exception() is None for f in fs)
    assert not [f.index for f in fs if f.stats.get("backups")], "queued tasks were backed up"


def test_announce_start_falls_back_to_a_batched_event_outside_a_worker():
    from shardwren.backends import dask_worker

    class Worker:  # no scheduler connection nor loop: outside a running worker
        def __init__(self):
            self.events = []

        def log_event(self, topic, msg):
            self.events.append((topic, msg))

    w = Worker()
    t = time.monotonic()
    dask_worker.announce_start(w, "k1", wait=5.0)
    assert w.events == [(dask_worker.STARTED_TOPIC, {"key": "k1"})]
    assert time.monotonic() - t < 1.0


def test_a_run_again_after_its_worker_died_has_a_deadline_from_its_own_start(dask_cluster,
                                                                             dask_ex, tmp_path):
    """Dask runs a task again when its worker dies, and the new run announces its start
    too. The driver's deadline must count from that start: one left from the first run
    expired the second (limit 10 s + margin 5 s from the first start, while the second,
    started 6.5 s later, needs 9 s)."""
    marker = tmp_path / "pid"
    f = dask_ex.map(_pid_then_sleep, [str(marker)], extra_args=[9.0], timeout=10, retries=0)[0]
    _kill_first_run_and_finish(dask_cluster, f, marker, after=6.5)


def test_the_test_cluster_starts_again_when_its_port_was_taken(tmp_path, monkeypatch):
    """tools/dask_cluster.py picked a free port, and another process took it before the
    scheduler bound it ("Address already in use"): the chaos test failed 30 s later."""
    import socket

    import dask_cluster

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real = dask_cluster.free_port
    monkeypatch.setattr(dask_cluster, "free_port", lambda: next(ports, None) or real())
    try:
        cluster = dask_cluster.Cluster(1, tmp_path)
        try:
            assert cluster.address != f"tcp://127.0.0.1:{taken.getsockname()[1]}"
            client = cluster.client()
            assert client.submit(abs, -3).result(timeout=60) == 3
            client.close()
        finally:
            cluster.close()
    finally:
        taken.close()
