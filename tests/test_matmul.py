from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import shardwren
from shardwren import cli
from shardwren.errors import MemoryPlanError, ShapeMismatchError
from shardwren.linalg import (
    add, choose_block_size, gram, map_blocks, matmul, plan, scale, sub, transpose)
from shardwren.matrix import ShardedMatrix


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-3) if np.dtype(dtype) == np.float32 else dict(rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,k,n,b", [(130, 77, 45, 32),     # ragged everywhere
                                     (1000, 30, 20, 128),   # tall-skinny
                                     (20, 1000, 30, 64),    # short-fat: inner split in a tree
                                     (1, 1, 1, 8), (50, 50, 50, 50)])
def test_matmul_matches_numpy(executor, dtype, m, k, n, b):
    rng = np.random.default_rng(m + k + n)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    C = matmul(A, B, executor=executor, block_size=b)
    assert C.dtype == np.dtype(dtype) and C.shape == (m, n)
    np.testing.assert_allclose(C.numpy(), A @ B, **tol(dtype))
    C.delete()


def test_matmul_sharded_inputs_and_out(executor):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((90, 70))
    B = rng.standard_normal((70, 40))
    Am = ShardedMatrix.from_numpy(A, "mA", (25, 30), store=executor.store)
    Bm = ShardedMatrix.from_numpy(B, "mB", (30, 15), store=executor.store)
    out = ShardedMatrix("mC", shape=(90, 40), shard_sizes=(25, 15), store=executor.store)
    C = matmul(Am, Bm, out=out, executor=executor)
    assert C is out
    np.testing.assert_allclose(out.numpy(), A @ B, rtol=1e-10)
    # a sharded operand with an array partner: the array is sharded to line up
    np.testing.assert_allclose(matmul(Am, B, executor=executor).numpy(), A @ B, rtol=1e-10)
    # transposed views multiply too, without copies
    np.testing.assert_allclose(matmul(transpose(Bm), transpose(Am), executor=executor).numpy(),
                               (A @ B).T, rtol=1e-10)


def test_matmul_errors(executor):
    A = ShardedMatrix.from_numpy(np.ones((10, 8)), "eA", (5, 4), store=executor.store)
    B = ShardedMatrix.from_numpy(np.ones((8, 6)), "eB", (3, 3), store=executor.store)
    with pytest.raises(ShapeMismatchError, match="column blocks \\(4\\).*row blocks \\(3\\)"):
        matmul(A, B, executor=executor)
    with pytest.raises(ShapeMismatchError, match="inner dimensions differ.*\\(10, 8\\).*\\(7, 6\\)"):
        matmul(A, np.ones((7, 6)), executor=executor)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gram(executor, dtype):
    X = np.random.default_rng(2).standard_normal((103, 41)).astype(dtype)
    p = plan(gram, X, block_size=20)
    assert p.tasks == 6 * 7 // 2  # blocks i <= j only
    G = gram(X, executor=executor, block_size=20)
    np.testing.assert_allclose(G.numpy(), X @ X.T, **tol(dtype))
    np.testing.assert_array_equal(G.numpy(), G.numpy().T)  # mirrored exactly


def test_elementwise(executor):
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((33, 21)), rng.standard_normal((33, 21))
    Am = ShardedMatrix.from_numpy(A, "xA", (10, 8), store=executor.store)
    Bm = ShardedMatrix.from_numpy(B, "xB", (10, 8), store=executor.store)
    np.testing.assert_allclose(add(Am, Bm, executor=executor).numpy(), A + B)
    np.testing.assert_allclose(sub(Am, Bm, executor=executor).numpy(), A - B)
    np.testing.assert_allclose(scale(Am, 2.5, executor=executor).numpy(), 2.5 * A)
    np.testing.assert_allclose(map_blocks(np.exp, Am, out_dtype="float32", executor=executor).numpy(),
                               np.exp(A).astype(np.float32), rtol=1e-6)
    with pytest.raises(ShapeMismatchError, match="elementwise"):
        map_blocks(lambda a: a[:1], Am, executor=executor)
    Cm = ShardedMatrix.from_numpy(A, "xC", (11, 8), store=executor.store)
    with pytest.raises(ShapeMismatchError, match="share shape and blocks"):
        add(Am, Cm, executor=executor)


def test_plan_counts_without_running(executor):
    A = np.zeros((4096, 2048), np.float32)
    B = np.zeros((2048, 1024), np.float32)
    p = plan("matmul", A, B, block_size=1024)
    assert (p.tasks, p.out_blocks, p.out_shape) == (4, (1024, 1024), (4096, 1024))
    assert p.flops == 2 * 4096 * 1024 * 2048
    assert p.bytes_written == 4096 * 1024 * 4
    assert p.bytes_read == A.nbytes * 1 + B.nbytes * 4
    assert p.peak_task_memory == (1024 * 1024 * 4) * 4
    assert "matmul: 4 tasks" in str(p)


def test_plan_refused_over_memory_limit_with_proposal(tmp_path):
    with shardwren.default_executor(workers=1, store=f"file://{tmp_path}", memory_limit="64MiB") as ex:
        A = np.zeros((4000, 4000), np.float32)
        with pytest.raises(MemoryPlanError, match=r"64 MiB.*blocks of (\d+) x \1") as info:
            matmul(A, A, executor=ex, block_size=4000)
        b = int(info.value.args[0].split("blocks of ")[1].split(" ")[0])
        assert plan(matmul, A, A, ex, b).peak_task_memory <= 64 * 2**20
        assert isinstance(info.value, MemoryError)


def test_choose_block_size():
    assert choose_block_size((100, 100)) == 100  # small: one block
    b = choose_block_size((100_000, 100_000), np.float32, memory_budget=1 << 30)
    assert b % 256 == 0 and 4 * b * b * 4 <= 1 << 30


def test_cli_matmul_and_info(executor, tmp_path):
    rng = np.random.default_rng(4)
    A, B = rng.standard_normal((40, 30)), rng.standard_normal((30, 20))
    store = f"file://{tmp_path}/s"
    ShardedMatrix.from_numpy(A, "A", (16, 16), store=store)
    ShardedMatrix.from_numpy(B, "B", (16, 16), store=store)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["matmul", f"{store}/A", f"{store}/B", f"{store}/C", "--workers", "2"])
    assert out.exit_code == 0, out.output
    assert "matmul: 6 tasks" in out.output
    np.testing.assert_allclose(ShardedMatrix("C", store=store).numpy(), A @ B, rtol=1e-10)
    out = runner.invoke(cli.main, ["matrix", "info", f"{store}/C"])
    assert out.exit_code == 0, out.output
    assert "shape (40, 20)" in out.output and "blocks written 6 of 6" in out.output
    out = runner.invoke(cli.main, ["matrix", "info", f"{store}/nope"])
    assert out.exit_code != 0 and "no matrix 'nope'" in out.output


@pytest.mark.parametrize("op", ["matmul", "gram", "pairwise", "map_blocks"])
def test_an_output_that_is_an_input_is_refused(executor, op):
    """matmul(S, T, out=S) overwrote S while other tasks read it: a wrong product, no error."""
    from shardwren.errors import OutputAliasError
    from shardwren.linalg import gram, map_blocks, matmul, pairwise_sq_euclidean

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 40))
    S = ShardedMatrix.from_numpy(X, f"alias-{op}/S", (10, 10), store=executor.store)
    T = ShardedMatrix.from_numpy(X, f"alias-{op}/T", (10, 10), store=executor.store)
    run = {"matmul": lambda out: matmul(S, T, out=out, executor=executor),
           "gram": lambda out: gram(S, out=out, executor=executor),
           # D (40 x 10, blocks 10 x 10) has the shape and blocks of S[:, :10]
           "pairwise": lambda out: pairwise_sq_euclidean(out, X[:10, :10], out=out,
                                                         executor=executor, block_size=10),
           "map_blocks": lambda out: map_blocks(np.negative, S, out=out, executor=executor)}[op]
    if op == "pairwise":
        X = X[:, :10]
        S = ShardedMatrix.from_numpy(X, f"alias-{op}/W", (10, 10), store=executor.store)
    with pytest.raises(OutputAliasError, match="is the input"):
        run(S)
    np.testing.assert_array_equal(S.numpy(), X)  # untouched


@pytest.mark.parametrize("op", ["matmul", "gram", "pairwise", "map_blocks"])
def test_a_key_naming_an_input_is_refused_before_anything_is_written(executor, op):
    """key="A" created the output (replacing A: its blocks deleted, its metadata the
    result's shape) before the alias check refused it."""
    from shardwren.errors import OutputAliasError
    from shardwren.linalg import gram, map_blocks, matmul, pairwise_sq_euclidean

    key = f"keyalias-{op}/A"
    X = np.random.default_rng(1).standard_normal((30, 20))
    blocks = (10, 20) if op == "pairwise" else (10, 10)  # distances need whole rows
    A = ShardedMatrix.from_numpy(X, key, blocks, store=executor.store)
    run = {"matmul": lambda: matmul(A, A.T, key=key, executor=executor),
           "gram": lambda: gram(A, key=key, executor=executor),
           "pairwise": lambda: pairwise_sq_euclidean(A, A, key=key, executor=executor),
           "map_blocks": lambda: map_blocks(np.negative, A, key=key,
                                            out_dtype="float32", executor=executor)}[op]
    with pytest.raises(OutputAliasError, match="is the input"):
        run()
    again = ShardedMatrix(key, store=executor.store)
    assert again.shape == (30, 20) and again.shard_sizes == blocks
    np.testing.assert_array_equal(again.numpy(), X)  # untouched


def test_the_alias_check_sees_one_matrix_under_two_store_roots(executor, tmp_path):
    """Store file:///d with key s/S and store file:///d/s with key S are one matrix."""
    from shardwren.errors import OutputAliasError
    from shardwren.linalg import matmul

    X = np.random.default_rng(3).standard_normal((20, 20))
    S = ShardedMatrix.from_numpy(X, "s/S", (10, 10), store=f"file://{tmp_path}")
    same = ShardedMatrix("S", store=f"file://{tmp_path}/s")
    (tmp_path / "link").symlink_to(tmp_path / "s")
    through_link = ShardedMatrix("S", store=f"file://{tmp_path}/link")
    for out in (same, through_link):
        with pytest.raises(OutputAliasError):
            matmul(S, S, out=out, executor=executor)
    np.testing.assert_array_equal(S.numpy(), X)


@pytest.mark.parametrize("shapes", [((0, 5), (5, 3)), ((4, 5), (5, 0)), ((0, 0), (0, 0)),
                                    ((4, 0), (0, 3))])
def test_matmul_with_an_empty_dimension_is_numpys(executor, shapes):
    """(0, k) @ (k, n) failed inside BLAS with a bare ValueError; numpy returns an empty
    (or all-zero) product."""
    from shardwren.linalg import matmul

    A, B = np.ones(shapes[0]), np.ones(shapes[1])
    C = matmul(A, B, executor=executor)
    assert C.shape == (A @ B).shape
    np.testing.assert_array_equal(C.numpy(), A @ B)


def test_float16_products_are_summed_in_float32_like_numpy(executor):
    """Each block product was rounded to float16, so a partial sum could overflow to inf
    (then nan) where numpy's float16 matmul, which sums in float32, gives a finite answer."""
    from shardwren.linalg import gram, matmul

    A = np.array([[256, 256, -256, -256]] * 2, dtype=np.float16)
    B = np.full((4, 2), 256, dtype=np.float16)
    assert np.array_equal(A @ B, np.zeros((2, 2), np.float16))  # the referee
    for blocks in (2, 1):  # one group per output block, and the inner dimension split
        C = matmul(A, B, executor=executor, block_size=blocks)
        assert C.dtype == np.float16
        np.testing.assert_array_equal(C.numpy(), A @ B)
    # Off the diagonal the total cancels to 0 while each 2-column partial overflows.
    X = np.array([[200, 200, 200, 200], [200, 200, -200, -200]], dtype=np.float16)
    with np.errstate(over="ignore"):  # the diagonal (160000) overflows float16 in both
        ref = X @ X.T
        G = gram(X, executor=executor, block_size=2).numpy()
    assert ref[0, 1] == 0 and np.isinf(ref[0, 0])
    np.testing.assert_array_equal(G, ref)


def test_map_blocks_never_truncates_into_the_output_dtype(executor):
    """The output kept A's dtype and blocks were cast with astype: sqrt of uint8 gave
    [1 1 14], scale(uint8 200, 2.0) gave 144."""
    from shardwren.errors import DTypeMismatchError
    from shardwren.linalg import map_blocks, scale

    X = np.array([[2, 3, 200, 7]], dtype=np.uint8)
    A = ShardedMatrix.from_numpy(X, "trunc/A", (1, 2), store=executor.store)
    with pytest.raises(DTypeMismatchError, match="out_dtype='float16'"):  # numpy's sqrt(uint8)
        map_blocks(np.sqrt, A, executor=executor)
    np.testing.assert_array_equal(map_blocks(np.sqrt, A, out_dtype="f2", executor=executor)
                                  .numpy(), np.sqrt(X))
    S = scale(A, 2.0, executor=executor)
    assert S.dtype == (X * 2.0).dtype
    np.testing.assert_array_equal(S.numpy(), X * 2.0)
    F = ShardedMatrix.from_numpy(X.astype(np.float32), "trunc/F", (1, 2), store=executor.store)
    assert scale(F, 0.5, executor=executor).dtype == np.float32  # numpy keeps float32 here
    np.testing.assert_array_equal(map_blocks(np.negative, A, executor=executor).numpy(), -X)
    # the same kind, narrower: only values the output holds (400 wrapped to 144 in uint8)
    with pytest.raises(DTypeMismatchError, match="cannot hold it"):
        map_blocks(lambda a: a.astype(np.uint16) * 2, A, executor=executor)
    np.testing.assert_array_equal(
        map_blocks(lambda a: a.astype(np.uint16) // 2, A, executor=executor).numpy(), X // 2)


def test_map_blocks_refuses_array_operands(executor):
    """A (2, 2) array operand was applied to every block of a (4, 4) matrix alike."""
    from shardwren.errors import InvalidParameterError
    from shardwren.linalg import map_blocks

    A = ShardedMatrix.from_numpy(np.ones((4, 4)), "arrop/A", (2, 2), store=executor.store)
    with pytest.raises(InvalidParameterError, match="shard it first"):
        map_blocks(np.add, A, np.eye(2), executor=executor)
    np.testing.assert_array_equal(map_blocks(np.add, A, np.float64(2), executor=executor)
                                  .numpy(), np.full((4, 4), 3.0))


def test_pairwise_distances_refuse_an_integer_output(executor):
    """An int16 out= failed inside every task with numpy's 'not inexact'."""
    from shardwren.errors import DTypeMismatchError
    from shardwren.linalg import pairwise_sq_euclidean

    D = ShardedMatrix("intout/D", shape=(1, 1), shard_sizes=(1, 1), dtype="int16",
                      store=executor.store)
    with pytest.raises(DTypeMismatchError, match="floating point"):
        pairwise_sq_euclidean(np.ones((1, 3)), np.zeros((1, 3)), out=D, executor=executor)
    # arrays are sharded in blocks no longer than themselves: a (1, 1) output fits
    D = ShardedMatrix("intout/F", shape=(1, 1), shard_sizes=(1, 1), dtype="float64",
                      store=executor.store)
    pairwise_sq_euclidean(np.ones((1, 3)), np.zeros((1, 3)), out=D, executor=executor)
    assert D.numpy()[0, 0] == 3.0
