from __future__ import annotations

import os
import signal
import time

import pytest

import shardwren
from shardwren.errors import ExecutorShutdownError, UnknownBackendError, WorkerCrashedError

from executor_conformance import ExecutorConformance


class TestLocalConformance(ExecutorConformance):
    @pytest.fixture
    def ex(self, executor):
        return executor


def _sleep_then(x):
    time.sleep(0.3)
    return x


def _suicide(how):
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segfault":
        import ctypes

        ctypes.string_at(0)
    time.sleep(0.2)
    return how


@pytest.mark.parametrize("how,label", [("sigkill", "SIGKILL"), ("exit", "exit code 3"),
                                       ("segfault", "SIGSEGV")])
def test_dying_worker_fails_only_its_task(tmp_path, how, label):
    with shardwren.default_executor(workers=2, store=f"file://{tmp_path}") as ex:
        pids_before = set(ex.backend.worker_pids())
        fs = ex.map(_suicide, ["ok", "ok", how, "ok", "ok", "ok"])
        done, not_done = shardwren.wait(fs, timeout=120)
        assert not not_done, "a future hung after a worker died"
        with pytest.raises(WorkerCrashedError, match=label) as info:
            fs[2].result()
        assert "task 2" in str(info.value)
        assert [fs[i].result() for i in (0, 1, 3, 4, 5)] == ["ok"] * 5
        assert len(ex.backend.worker_pids()) == 2
        assert set(ex.backend.worker_pids()) != pids_before
        # the replacement works
        assert ex.call_async(lambda x: x + 1, 1).result(timeout=60) == 2


@pytest.mark.parametrize("retries", [0, 2])
def test_worker_killed_from_outside_mid_task(tmp_path, retries):
    with shardwren.default_executor(workers=2, store=f"file://{tmp_path}", retries=retries) as ex:
        fs = ex.map(lambda s: time.sleep(s) or s, [2.0, 2.0, 0.1, 0.1])
        deadline = time.time() + 60  # both 2 s tasks started (worker start-up varies with load)
        while len(ex.backend.busy_worker_pids()) < 2 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(ex.backend.busy_worker_pids()[0], signal.SIGKILL)
        shardwren.wait(fs, timeout=120)
        crashed = [f for f in fs if isinstance(f.exception(), WorkerCrashedError)]
        if retries == 0:
            assert len(crashed) == 1 and "SIGKILL" in str(crashed[0].exception())
        else:  # the killed task ran again elsewhere: nothing is lost
            assert not crashed and [f.result() for f in fs] == [2.0, 2.0, 0.1, 0.1]
            assert sorted(f.stats["attempt"] for f in fs) == [1, 1, 1, 2]
        assert all(f.result() for f in fs if f not in crashed)


def _crash_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def test_crash_is_retried_and_user_errors_are_not(executor, tmp_path):
    f = executor.call_async(_crash_once, str(tmp_path / "marker"))
    assert f.result(timeout=60) == "survived" and f.stats["attempt"] == 2
    assert "SIGKILL" in f.stats["failures"][0]
    g = executor.call_async(_suicide_value_error, 1)
    with pytest.raises(ValueError):
        g.result(timeout=60)
    assert g.stats["attempt"] == 1


def _suicide_value_error(x):
    raise ValueError(x)


def test_retry_on_user_exception(tmp_path):
    marker = tmp_path / "m"

    def flaky(_):
        if not marker.exists():
            marker.touch()
            raise ConnectionResetError("store hiccup")
        if not (tmp_path / "m2").exists():
            (tmp_path / "m2").touch()
            raise KeyError("user says retry me")
        return "ok"

    with shardwren.default_executor(workers=1, store=f"file://{tmp_path}", retry_on=(KeyError,)) as ex:
        f = ex.call_async(flaky, 0)
        assert f.result(timeout=60) == "ok" and f.stats["attempt"] == 3


def test_deterministic_crash_fails_after_retries(tmp_path):
    with shardwren.default_executor(workers=1, store=f"file://{tmp_path}", retries=1) as ex:
        f = ex.call_async(_suicide, "exit")
        with pytest.raises(WorkerCrashedError, match="exit code 3"):
            f.result(timeout=60)
        assert f.stats["attempt"] == 2


def test_shutdown_leaves_no_orphans(tmp_path):
    ex = shardwren.default_executor(workers=2, store=f"file://{tmp_path}")
    ex.map(lambda x: x, range(10))[0].result()
    pids = ex.backend.worker_pids()
    ex.shutdown()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_terminate_fails_pending(tmp_path):
    ex = shardwren.default_executor(workers=1, store=f"file://{tmp_path}")
    fs = ex.map(lambda s: time.sleep(s), [5.0] + [0.0] * 5)
    time.sleep(0.3)
    ex.terminate()
    shardwren.wait(fs, timeout=30)
    assert all(isinstance(f.exception(), ExecutorShutdownError) for f in fs[1:])
    with pytest.raises(ExecutorShutdownError):
        ex.map(lambda x: x, [1])


def test_orphans_die_with_driver(tmp_path):
    """Workers of a driver killed with SIGKILL exit on their own."""
    import subprocess
    import sys

    code = ("import shardwren, time, sys; ex = shardwren.default_executor(workers=2);"
            "ex.call_async(lambda x: x, 1).result(); print(*ex.backend.worker_pids(), flush=True);"
            "time.sleep(60)")
    env = dict(os.environ, SHARDWREN_STORE=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    p.kill()
    p.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between the two looks
        return False


def test_unknown_backend_lists_choices():
    with pytest.raises(UnknownBackendError, match="'local'.*'dask'.*shardwren\\[dask\\]"):
        shardwren.default_executor(backend="lambda")


def test_progress_bar_when_forced(executor, capsys):
    fs = executor.map(lambda x: x, range(30))
    shardwren.wait(fs, progress=True)
    assert "30/30" in capsys.readouterr().err


EXIT_SCRIPT = """
import sys, time, shardwren
out = sys.argv[1]
def work(i):
    time.sleep(1.0)
    open(f"{out}/{i}", "w").write("done")
    return i
if __name__ == "__main__":
    ex = shardwren.default_executor(workers=2, store=sys.argv[3], progress=False)
    ex.map(work, range(4))
    if sys.argv[2] == "nowait":
        ex.shutdown(wait=False)
"""


@pytest.mark.parametrize("how", ["nowait", "no-shutdown"])
def test_the_program_waits_for_submitted_tasks_at_exit(tmp_path, how):
    """concurrent.futures: the program does not exit until pending futures are done, with
    shutdown(wait=False) or none at all. Every task was failed at exit instead: 0 of 4 ran."""
    import subprocess
    import sys

    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, str(script), str(out), how, f"file://{tmp_path}/store"],
                   check=True, timeout=120)
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2", "3"]


def test_a_dropped_executor_releases_its_workers(tmp_path):
    """Executors dropped without shutdown() kept their worker processes until the program
    ended (a notebook calling default_executor() again and again piled them up)."""
    import gc
    import weakref

    ex = shardwren.default_executor(workers=1, store=f"file://{tmp_path}", progress=False)
    assert shardwren.get_all_results(ex.map(lambda x: x + 1, [1, 2])) == [2, 3]
    pids = ex.backend.worker_pids()
    ref = weakref.ref(ex)
    del ex
    deadline = time.time() + 30
    while time.time() < deadline:
        gc.collect()
        if ref() is None and not any(_alive(p) for p in pids):
            break
        time.sleep(0.2)
    assert ref() is None, "the executor is still referenced"
    assert not any(_alive(p) for p in pids), "its workers outlived it"


def test_an_executor_inherited_through_fork_refuses_work(tmp_path):
    """In a forked child, submit was accepted and the task never ran (a hang)."""
    from shardwren.errors import ExecutorBrokenError

    ex = shardwren.default_executor(workers=1, store=f"file://{tmp_path}", progress=False)
    try:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            try:
                ex.call_async(abs, -1)
            except ExecutorBrokenError:
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(2)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ex.call_async(abs, -1).result(timeout=60) == 1  # the parent's still works
    finally:
        ex.shutdown()


ENDINGS = """
import os, sys, threading, time, shardwren
out, how, store = sys.argv[1], sys.argv[2], sys.argv[3]
def work(i):
    time.sleep(2.0)
    open(f"{out}/{i}", "w").write("done")
    return i
if __name__ == "__main__":
    ex = shardwren.default_executor(workers=1, store=store, progress=False)
    if how == "thread":  # the main thread ends; a non-daemon thread still uses the executor
        def late():
            time.sleep(0.5)
            print("thread", shardwren.get_all_results(ex.map(work, [7])), flush=True)
        threading.Thread(target=late).start()
    elif how == "reduce":  # a reduce waiting for its inputs when the program ends
        ex.reduce(lambda rs: open(f"{out}/sum", "w").write(str(sum(rs))), ex.map(work, [1, 2]))
    else:  # the program ends on an uncaught exception: stop, do not wait for 3 x 2 s
        ex.map(work, range(3))
        raise KeyboardInterrupt
"""


@pytest.mark.parametrize("how", ["thread", "reduce", "interrupted"])
def test_how_the_program_ends_with_tasks_submitted(tmp_path, how):
    """The exit hook closed every executor before Python joined non-daemon threads (their
    map raised ExecutorShutdownError), did not wait for a pending reduce, and made Ctrl-C
    wait for every task submitted."""
    import subprocess
    import sys

    script = tmp_path / "endings.py"
    script.write_text(ENDINGS)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, str(script), str(out), how, f"file://{tmp_path}/s"],
                         capture_output=True, text=True, timeout=120)
    if how == "thread":
        assert run.returncode == 0, run.stderr
        assert "thread [7]" in run.stdout
    elif how == "reduce":
        assert run.returncode == 0, run.stderr
        assert (out / "sum").read_text() == "3"
    else:
        assert "KeyboardInterrupt" in run.stderr
        time.sleep(3)  # a task left running would write its file by now
        assert list(out.iterdir()) == []
