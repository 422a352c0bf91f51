"""resume=True: a job whose driver died finishes, recomputing only what is missing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from shardwren.linalg import knn, pairwise_sq_euclidean
from shardwren.matrix import ShardedMatrix

DRIVER = textwrap.dedent("""
    import sys, time, numpy as np, shardwren
    from shardwren.linalg import map_blocks
    from shardwren.matrix import ShardedMatrix
    store = sys.argv[1]
    A = ShardedMatrix("A", store=store)
    out = ShardedMatrix("B", shape=A.shape, shard_sizes=A.shard_sizes, dtype="float64", store=store)
    def slow_double(a):
        time.sleep(0.25)
        return a * 2
    with shardwren.default_executor(workers=2, store=store, progress=False) as ex:
        map_blocks(slow_double, A, out=out, executor=ex, resume=True)
        print("TASKS", len(ex.history[-1][2]) if ex.history else 0, flush=True)
""")


def test_killed_driver_resumes(tmp_path):
    store = f"file://{tmp_path}/store"
    X = np.arange(40 * 30, dtype=np.float64).reshape(40, 30)
    A = ShardedMatrix.from_numpy(X, "A", (4, 10), store=store)  # 30 blocks
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    first = subprocess.Popen([sys.executable, str(script), store], stdout=subprocess.PIPE, text=True)
    B = None
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            B = ShardedMatrix("B", store=store)
            if len(B.block_idxs_exist) >= 8:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(1.0)  # its workers notice the dead driver and exit
    done_before = len(B.block_idxs_exist)
    assert 8 <= done_before < A.num_blocks
    second = subprocess.run([sys.executable, str(script), store], capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    ran = int(second.stdout.split("TASKS")[1])
    assert ran == A.num_blocks - done_before  # only what was missing
    np.testing.assert_array_equal(ShardedMatrix("B", store=store).numpy(), 2 * X)


def test_pairwise_resume_recomputes_only_missing(executor):
    rng = np.random.default_rng(0)
    X, Y = rng.random((50, 8)), rng.random((30, 8))
    D = pairwise_sq_euclidean(X, Y, executor=executor, key="Dres", block_size=10)
    full = D.numpy()
    D.delete_block(1, 1)
    D.delete_block(4, 2)
    last = executor.history[-1][0]
    pairwise_sq_euclidean(X, Y, executor=executor, key="Dres", block_size=10, resume=True)
    assert executor.history[-1][0] != last and len(executor.history[-1][2]) == 2
    np.testing.assert_allclose(ShardedMatrix("Dres", store=executor.store).numpy(), full)
    with pytest.raises(ValueError, match="key="):
        pairwise_sq_euclidean(X, Y, executor=executor, resume=True)


def test_knn_resume_reuses_saved_tiles(executor):
    rng = np.random.default_rng(1)
    train, query = rng.random((400, 16), dtype=np.float32), rng.random((90, 16), dtype=np.float32)
    T = ShardedMatrix.from_numpy(train, "rt", (100, 16), store=executor.store)
    Q = ShardedMatrix.from_numpy(query, "rq", (30, 16), store=executor.store)
    tm = {}
    d1, i1 = knn(T, Q, 3, executor=executor, resume=True, key="knnjob", timings=tm)
    assert tm["tasks"] == 12 + 4
    parts = executor.store.list("knnjob/parts")
    assert len(parts) == 12
    for p in parts[:5]:
        executor.store.delete(p)
    tm2 = {}
    d2, i2 = knn(T, Q, 3, executor=executor, resume=True, key="knnjob", timings=tm2)
    assert tm2["tasks"] == 5 + 4
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    with pytest.raises(ValueError, match="key="):
        knn(T, Q, 1, executor=executor, resume=True)


def test_knn_resume_recomputes_a_part_copied_over_another(executor):
    """Parts carried the job's fingerprint but not which tile they answer: a part copied
    over another was reused, and 79 of 300 queries got another tile's neighbours."""
    rng = np.random.default_rng(8)
    train, query = rng.random((300, 8)), rng.random((60, 8))
    T = ShardedMatrix.from_numpy(train, "swp/T", (100, 8), store=executor.store)
    Q = ShardedMatrix.from_numpy(query, "swp/Q", (30, 8), store=executor.store)
    d1, i1 = knn(T, Q, 2, executor=executor, resume=True, key="swpjob")
    parts = executor.store.list("swpjob/parts")
    executor.store.put(parts[0], executor.store.get(parts[1]))
    tm = {}
    d2, i2 = knn(T, Q, 2, executor=executor, resume=True, key="swpjob", timings=tm)
    assert tm["tasks"] >= 1  # the misplaced part was computed again
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_pruned_knn_resume_reuses_saved_parts(executor):
    from shardwren.linalg import pruned

    rng = np.random.default_rng(2)
    centres = rng.normal(0, 10, (20, 32))
    data = (centres[rng.integers(0, 20, 6500)] + rng.normal(0, 1, (6500, 32))).astype(np.float32)
    T = ShardedMatrix.from_numpy(data[:4000], "pt", (1000, 32), store=executor.store)
    Q = ShardedMatrix.from_numpy(data[4000:], "pq", (1000, 32), store=executor.store)
    tm = {}
    d1, i1 = knn(T, Q, 2, executor=executor, method="pruned", resume=True, key="pjob", timings=tm)
    index = pruned.fit(T, executor, k=2)
    phase1, phase2, _ = pruned.plan_query(index, Q, executor.parallelism)
    assert tm["pruning"] and tm["tasks"] == len(phase1) + len(phase2)
    parts = executor.store.list("pjob/parts")
    assert len(parts) == tm["tasks"]
    lost = [p for p in parts if "pruned-range" in p][:1]  # a driver died before this one
    executor.store.delete(lost[0])
    tm2 = {}
    d2, i2 = knn(T, Q, 2, executor=executor, method="pruned", resume=True, key="pjob", timings=tm2)
    assert tm2["tasks"] == 1
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(i1, knn(T, Q, 2, executor=executor, method="brute")[1])


# --- issue 16: parts carry a fingerprint and are never unpickled ------------------------------


def test_knn_resume_refuses_a_different_jobs_parts(executor):
    """knn(..., resume=True, key=K) used to return another job's answer (other data, other k)."""
    from shardwren.errors import ResumeMismatchError

    rng = np.random.default_rng(7)
    train, query = rng.random((300, 8), dtype=np.float32), rng.random((60, 8), dtype=np.float32)
    T = ShardedMatrix.from_numpy(train, "ft", (100, 8), store=executor.store)
    T2 = ShardedMatrix.from_numpy(train[::-1].copy(), "ft2", (100, 8), store=executor.store)
    Q = ShardedMatrix.from_numpy(query, "fq", (30, 8), store=executor.store)
    d1, i1 = knn(T, Q, 3, executor=executor, resume=True, key="fjob")
    with pytest.raises(ResumeMismatchError, match="train: same shape, other data") as info:
        knn(T2, Q, 3, executor=executor, resume=True, key="fjob")
    assert isinstance(info.value, ValueError) and "key=" in str(info.value)
    with pytest.raises(ResumeMismatchError, match="k: 3 then, 5 now"):
        knn(T, Q, 5, executor=executor, resume=True, key="fjob")
    tm = {}
    d2, i2 = knn(T, Q, 3, executor=executor, resume=True, key="fjob", timings=tm)
    assert tm["tasks"] == T.grid[0]  # only the column pass: every tile reused
    np.testing.assert_array_equal(i1, i2)
    # the other job, under its own key, gets its own (correct) answer
    _, i3 = knn(T2, Q, 3, executor=executor, resume=True, key="fjob2")
    np.testing.assert_array_equal(i3, 299 - i1)


def test_resume_with_array_inputs_reuses_parts(executor):
    """Arrays are sharded under a new scratch key each call: the fingerprint digests the
    contents, not the key, so a resumed call still finds its parts."""
    rng = np.random.default_rng(8)
    train, query = rng.random((200, 6), dtype=np.float32), rng.random((50, 6), dtype=np.float32)
    _, i1 = knn(train, query, 2, executor=executor, resume=True, key="arrjob", block_size=50)
    tm = {}
    _, i2 = knn(train, query, 2, executor=executor, resume=True, key="arrjob", block_size=50,
                timings=tm)
    assert tm["tasks"] == 4  # 4 training blocks' column pass; 0 tiles
    np.testing.assert_array_equal(i1, i2)


def test_resume_parts_are_never_unpickled(executor, tmp_path):
    """Anyone who could write the bucket used to run code in the driver: parts were
    pickle.loads-ed. A planted pickle is now just an unreadable part, computed again."""
    import pickle

    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    rng = np.random.default_rng(9)
    train, query = rng.random((200, 6), dtype=np.float32), rng.random((40, 6), dtype=np.float32)
    T = ShardedMatrix.from_numpy(train, "et", (100, 6), store=executor.store)
    Q = ShardedMatrix.from_numpy(query, "eq", (40, 6), store=executor.store)
    _, i1 = knn(T, Q, 1, executor=executor, resume=True, key="evil")
    parts = executor.store.list("evil/parts")
    executor.store.put(parts[0], pickle.dumps(Evil()))
    tm = {}
    _, i2 = knn(T, Q, 1, executor=executor, resume=True, key="evil", timings=tm)
    assert not sentinel.exists()
    assert tm["tasks"] == 1 + T.grid[0]  # the planted part was recomputed
    np.testing.assert_array_equal(i1, i2)


def test_part_of_another_job_is_refused(executor):
    from shardwren.errors import ResumeMismatchError

    rng = np.random.default_rng(10)
    T = ShardedMatrix.from_numpy(rng.random((200, 4)), "ot", (100, 4), store=executor.store)
    Q = ShardedMatrix.from_numpy(rng.random((30, 4)), "oq", (30, 4), store=executor.store)
    knn(T, Q, 1, executor=executor, resume=True, key="ja")
    knn(T, Q, 2, executor=executor, resume=True, key="jb")
    s = executor.store
    s.put("ja/parts/tile-0-1", s.get("jb/parts/tile-0-1"))  # same name, other job
    with pytest.raises(ResumeMismatchError, match="tile-0-1 carries another fingerprint"):
        knn(T, Q, 1, executor=executor, resume=True, key="ja")


def test_resume_under_a_key_with_slashes_recomputes_only_missing(executor):
    """block_idxs_exist was empty for keys with '/', so resume=True recomputed everything."""
    rng = np.random.default_rng(11)
    X, Y = rng.random((40, 5)), rng.random((20, 5))
    D = pairwise_sq_euclidean(X, Y, executor=executor, key="proj/run1/D", block_size=10)
    D.delete_block(2, 1)
    D.delete_block(0, 0)
    pairwise_sq_euclidean(X, Y, executor=executor, key="proj/run1/D", block_size=10, resume=True)
    assert len(executor.history[-1][2]) == 2
    np.testing.assert_allclose(ShardedMatrix("proj/run1/D", store=executor.store).numpy(),
                               ((X[:, None] - Y[None]) ** 2).sum(-1))


def test_run_resumable_needs_a_fingerprint(executor):
    from shardwren.linalg._common import run_resumable

    with pytest.raises(TypeError, match="fingerprint="):
        run_resumable(executor, lambda i: i, [(1,)], "fp", "x", True)


@pytest.mark.parametrize("value", [
    (3, np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[1, 2]], np.int64)),
    [(0, np.zeros((0, 2)), np.ones((0, 2), np.int64)), (1, np.ones((1, 2)), np.eye(1))],
    (np.int64(4), np.float32(2.5), "text", None, True, {"a": [1.5, np.nan]}),
    (np.array("unicode"), np.array([b"ab"]), np.complex64(1 + 2j)),
])
def test_parts_round_trip_as_plain_arrays(value):
    from shardwren.linalg._common import _decode_result, _encode_result

    digest, back = _decode_result(_encode_result(value, "d" * 64))
    assert digest == "d" * 64

    def same(a, b):
        assert type(a) is type(b), (a, b)
        if isinstance(a, (tuple, list)):
            assert len(a) == len(b) and all(same(x, y) or True for x, y in zip(a, b))
        elif isinstance(a, dict):
            assert a.keys() == b.keys() and all(same(a[k], b[k]) or True for k in a)
        elif isinstance(a, (np.ndarray, np.generic)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        elif isinstance(a, float) and np.isnan(a):
            assert np.isnan(b)
        else:
            assert a == b
        return True

    same(value, back)


def test_results_that_need_pickle_are_refused():
    from shardwren.linalg._common import _decode_result, _encode_result

    for bad in [np.array([object()]), (1, {2: 3}), {1, 2}, object()]:
        with pytest.raises(TypeError, match="plain arrays"):
            _encode_result(bad, "d")
    with pytest.raises(ValueError, match="not a saved part"):
        _decode_result(b"\x80\x04K\x01.")  # a pickle


def test_pairwise_resume_refuses_blocks_of_other_inputs(executor):
    """Blocks under a key that other data wrote were returned as this job's answer."""
    from shardwren.errors import ResumeMismatchError

    rng = np.random.default_rng(21)
    A1, A2, B = rng.random((30, 4)), rng.random((30, 4)), rng.random((20, 4))
    A1m = ShardedMatrix.from_numpy(A1, "stale/A", (10, 4), store=executor.store)
    pairwise_sq_euclidean(A1m, B, executor=executor, key="stale/D", block_size=10)
    A2m = ShardedMatrix.from_numpy(A2, "stale/A", (10, 4), store=executor.store)  # rewritten
    with pytest.raises(ResumeMismatchError, match="A: same shape, other data"):
        pairwise_sq_euclidean(A2m, B, executor=executor, key="stale/D", block_size=10,
                              resume=True)
    # the same data resumes (nothing to do), and resume=False recomputes for the new data
    pairwise_sq_euclidean(A1m.__class__("stale/A", store=executor.store), B, executor=executor,
                          key="stale/D", block_size=10, resume=False)
    D = pairwise_sq_euclidean(A2m, B, executor=executor, key="stale/D", block_size=10,
                              resume=True)
    np.testing.assert_allclose(D.numpy(), ((A2[:, None] - B[None]) ** 2).sum(-1))


def test_resume_refuses_blocks_with_no_record_of_their_job(executor):
    from shardwren.errors import ResumeMismatchError

    X = np.arange(20.0).reshape(10, 2)
    D = ShardedMatrix("norecord/D", shape=(10, 10), shard_sizes=(5, 5), dtype="float64",
                      store=executor.store)
    D.put_block(0, 0, np.zeros((5, 5)))  # written by hand: not this job's
    with pytest.raises(ResumeMismatchError, match="no record of the job"):
        pairwise_sq_euclidean(X, X, out=D, executor=executor, block_size=5, resume=True)


def test_matmul_resume_with_the_inner_dimension_split(executor):
    """With fewer output blocks than workers the inner dimension is split and summed in a
    tree: resume=True ran every task again there."""
    from shardwren.linalg import matmul

    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((8, 64)), rng.standard_normal((64, 8))
    Am = ShardedMatrix.from_numpy(A, "split/A", (4, 8), store=executor.store)
    Bm = ShardedMatrix.from_numpy(B, "split/B", (8, 8), store=executor.store)
    def tasks(step) -> int:  # tasks of every map the step runs
        seen = {h[0] for h in executor.history}
        step()
        return sum(len(h[2]) for h in executor.history if h[0] not in seen)

    C = ShardedMatrix("split/C", shape=(8, 8), shard_sizes=(4, 8), dtype="float64",
                      store=executor.store)
    assert tasks(lambda: matmul(Am, Bm, out=C, executor=executor)) > 2  # 2 blocks, 8 inner
    assert tasks(lambda: matmul(Am, Bm, out=C, executor=executor, resume=True)) == 0
    C.delete_block(1, 0)
    ran = tasks(lambda: matmul(Am, Bm, out=C, executor=executor, resume=True))
    assert 0 < ran <= 8 + 7  # one block: its partial products and their sums
    np.testing.assert_allclose(C.numpy(), A @ B, rtol=1e-12, atol=1e-12)


def test_matmul_resume_refuses_blocks_written_in_the_other_orientation(executor):
    """Blocks written through C hold A @ B; resumed through C.T they would be read as its
    transpose and mixed with new ones: the record now notes the orientation."""
    from shardwren.errors import ResumeMismatchError
    from shardwren.linalg import matmul

    rng = np.random.default_rng(6)
    A, B = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    Am = ShardedMatrix.from_numpy(A, "orient/A", (4, 4), store=executor.store)
    Bm = ShardedMatrix.from_numpy(B, "orient/B", (4, 4), store=executor.store)
    C = ShardedMatrix("orient/C", shape=(8, 8), shard_sizes=(4, 4), dtype="float64",
                      store=executor.store)
    matmul(Am, Bm, out=C, executor=executor)
    C.delete_block(0, 1)  # an interrupted run
    with pytest.raises(ResumeMismatchError, match="out_orientation"):
        matmul(Am, Bm, out=C.T, executor=executor, resume=True)
    matmul(Am, Bm, out=C.T, executor=executor)  # not resuming: every block again
    np.testing.assert_allclose(C.numpy().T, A @ B, rtol=1e-12, atol=1e-12)
    C.delete_block(1, 0)
    matmul(Am, Bm, out=C.T, executor=executor, resume=True)  # its own blocks: resumed
    np.testing.assert_allclose(C.numpy().T, A @ B, rtol=1e-12, atol=1e-12)


def test_inputs_written_by_zarr_python_are_digested_only_when_resuming(executor, tmp_path):
    """Fingerprinting a zarr-python array reads its chunks whole: a call without resume
    does not pay for that, so only a job started with resume=True can be resumed."""
    import zarr

    from shardwren.errors import ResumeMismatchError

    X = np.random.default_rng(2).random((30, 4))
    z = zarr.create_array(str(tmp_path / "zx"), shape=X.shape, chunks=(10, 4), dtype="f8")
    z[:] = X
    Z = ShardedMatrix("zx", store=f"file://{tmp_path}")
    assert Z.layout.codec == "zarr"
    D = pairwise_sq_euclidean(Z, Z, executor=executor, key="zres/D")
    assert not executor.store.exists(D.job_record_key)
    D.delete_block(0, 0)
    with pytest.raises(ResumeMismatchError, match="only with resume=True"):
        pairwise_sq_euclidean(Z, Z, executor=executor, key="zres/D", resume=True)
    D.delete()
    pairwise_sq_euclidean(Z, Z, executor=executor, key="zres/D", resume=True)  # records
    D = ShardedMatrix("zres/D", store=executor.store)
    D.delete_block(2, 1)
    pairwise_sq_euclidean(Z, Z, executor=executor, key="zres/D", resume=True)
    assert len(executor.history[-1][2]) == 1
    np.testing.assert_allclose(D.numpy(), ((X[:, None] - X[None]) ** 2).sum(-1))


def test_a_rerun_interrupted_midway_never_leaves_old_blocks_under_its_record(executor):
    """A non-resuming rerun wrote its record first and left the old job's blocks: killed
    after one block, its resume returned the old data's distances for the rest."""
    from shardwren.linalg._common import todo

    rng = np.random.default_rng(8)
    A1, A2, B = rng.random((30, 4)), rng.random((30, 4)), rng.random((20, 4))
    Bm = ShardedMatrix.from_numpy(B, "mid/B", (10, 4), store=executor.store)
    A1m = ShardedMatrix.from_numpy(A1, "mid/A1", (10, 4), store=executor.store)
    A2m = ShardedMatrix.from_numpy(A2, "mid/A2", (10, 4), store=executor.store)
    D = pairwise_sq_euclidean(A1m, Bm, executor=executor, key="mid/D")
    # the rerun on A2 as far as its plan: then it is killed before writing any block
    todo(D, D.block_idxs, False, "pairwise_sq_euclidean", {"A": A2m, "B": Bm})
    assert D.block_idxs_exist == []
    D = pairwise_sq_euclidean(A2m, Bm, executor=executor, key="mid/D", resume=True)
    np.testing.assert_allclose(D.numpy(), ((A2[:, None] - B[None]) ** 2).sum(-1))
    # a record of another job over no blocks is simply replaced
    todo(D, D.block_idxs, False, "pairwise_sq_euclidean", {"A": A1m, "B": Bm})
    D = pairwise_sq_euclidean(A2m, Bm, executor=executor, key="mid/D", resume=True)
    np.testing.assert_allclose(D.numpy(), ((A2[:, None] - B[None]) ** 2).sum(-1))


def test_other_writers_invalidate_the_record(executor):
    """gram (no resume) and from_numpy wrote into a recorded output and left the record:
    a resume then took their blocks as its own."""
    from shardwren.errors import ResumeMismatchError
    from shardwren.linalg import gram

    rng = np.random.default_rng(9)
    A = rng.random((20, 20))
    D = pairwise_sq_euclidean(A, A, executor=executor, key="inv/D", block_size=10)
    gram(rng.random((20, 5)), out=D, executor=executor, block_size=10)
    with pytest.raises(ResumeMismatchError):
        pairwise_sq_euclidean(A, A, executor=executor, key="inv/D", block_size=10, resume=True)
    D = pairwise_sq_euclidean(A, A, executor=executor, key="inv/D", block_size=10)
    ShardedMatrix.from_numpy(np.zeros((20, 20)), "inv/D", (10, 10), store=executor.store)
    with pytest.raises(ResumeMismatchError, match="no record"):
        pairwise_sq_euclidean(A, A, executor=executor, key="inv/D", block_size=10, resume=True)


def test_map_blocks_records_which_function_it_applied(executor):
    """Every partial (and every lambda) had the same name: a resume mixed the blocks of
    two different functions. Complex scalars were refused even without resume."""
    import functools

    from shardwren.errors import ResumeMismatchError
    from shardwren.linalg import map_blocks

    X = np.arange(400.0).reshape(20, 20)
    A = ShardedMatrix.from_numpy(X, "fn/A", (10, 10), store=executor.store)
    C = map_blocks(np.multiply, A, 2j, out_dtype="c16", executor=executor, key="fn/C")
    np.testing.assert_array_equal(C.numpy(), X * 2j)
    out = ShardedMatrix("fn/P", shape=(20, 20), shard_sizes=(10, 10), dtype="f8",
                        store=executor.store)
    map_blocks(functools.partial(np.multiply, 2), A, out=out, executor=executor, resume=True)
    out.delete_block(0, 0)
    with pytest.raises(ResumeMismatchError, match="fn"):
        map_blocks(functools.partial(np.multiply, -100), A, out=out, executor=executor,
                   resume=True)
    factor = 3.0
    with pytest.raises(ResumeMismatchError):
        map_blocks(lambda a: a * factor, A, out=out, executor=executor, resume=True)
    map_blocks(functools.partial(np.multiply, 2), A, out=out, executor=executor, resume=True)
    np.testing.assert_array_equal(out.numpy(), 2 * X)


FACTOR = 2.0


def _times_factor(a):
    return a * FACTOR


def _through_helper(a, *, offset=0.0):
    return _times_factor(a) + offset


def test_map_blocks_records_the_globals_and_helpers_its_function_reads(executor):
    """A resume compared the function's code and captured values but not the module
    globals it reads: after FACTOR changed, the output mixed 2x and 10x blocks."""
    import functools

    from shardwren.errors import ResumeMismatchError
    from shardwren.linalg import map_blocks

    global FACTOR
    X = np.arange(400.0).reshape(20, 20)
    A = ShardedMatrix.from_numpy(X, "glob/A", (10, 10), store=executor.store)
    for n, fn in enumerate([_times_factor, _through_helper,
                            functools.partial(_through_helper, offset=0.0)]):
        FACTOR = 2.0
        out = ShardedMatrix(f"glob/C{n}", shape=(20, 20), shard_sizes=(10, 10), dtype="f8",
                            store=executor.store)
        map_blocks(fn, A, out=out, executor=executor, resume=True)
        out.delete_block(1, 1)
        FACTOR = 10.0
        with pytest.raises(ResumeMismatchError, match="fn"):
            map_blocks(fn, A, out=out, executor=executor, resume=True)
        FACTOR = 2.0
        map_blocks(fn, A, out=out, executor=executor, resume=True)  # the same job: resumed
        np.testing.assert_array_equal(out.numpy(), 2 * X)
    _through_helper.__kwdefaults__ = {"offset": 1.0}
    try:
        out = ShardedMatrix("glob/C1", store=executor.store)
        out.delete_block(0, 0)
        with pytest.raises(ResumeMismatchError, match="fn"):
            map_blocks(_through_helper, A, out=out, executor=executor, resume=True)
    finally:
        _through_helper.__kwdefaults__ = {"offset": 0.0}


def test_content_digest_reads_object_stores_in_parallel_and_agrees(s3_url, tmp_path):
    """The digest a job record keeps is the same however its blocks are fetched."""
    X = np.random.default_rng(4).random((50, 3))
    on_s3 = ShardedMatrix.from_numpy(X, "dig/X", (5, 3), store=s3_url)
    on_disk = ShardedMatrix.from_numpy(X, "dig/X", (5, 3), store=f"file://{tmp_path}")
    assert on_s3.content_digest() == on_disk.content_digest()
    on_s3.put_block(7, 0, X[35:40] + 1)
    assert on_s3.content_digest() != on_disk.content_digest()


real = 1.0  # a global that shares its name with an attribute the function reads


def test_map_blocks_does_not_take_attribute_names_for_globals(executor):
    """co_names holds attribute names too: lambda a: a.real * 2 recorded the unrelated
    global `real`, and changing it refused the resume."""
    from shardwren.linalg import map_blocks

    global real
    X = np.arange(16.0).reshape(4, 4)
    A = ShardedMatrix.from_numpy(X, "attr/A", (2, 2), store=executor.store)
    out = ShardedMatrix("attr/C", shape=(4, 4), shard_sizes=(2, 2), dtype="f8",
                        store=executor.store)
    fn = lambda a: a.real * 2  # noqa: E731
    map_blocks(fn, A, out=out, executor=executor, resume=True)
    out.delete_block(0, 0)
    real = 5.0
    try:
        map_blocks(fn, A, out=out, executor=executor, resume=True)
    finally:
        real = 1.0
    np.testing.assert_array_equal(out.numpy(), 2 * X)
