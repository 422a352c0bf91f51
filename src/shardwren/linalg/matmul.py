"""Blocked linear algebra on ShardedMatrices: matmul, Gram, elementwise maps, and plans.

Every function first makes a :class:`Plan` (tasks, bytes moved, flops, peak memory
per task) without running anything, refuses one whose per-task memory exceeds the
executor's ``memory_limit`` (proposing a block size that fits), then runs it.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import json
import math
import types
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import DTypeMismatchError, InvalidParameterError, MemoryPlanError, ShapeMismatchError
from ..executor import Executor
from ..futures import get_all_results
from ..matrix import ShardedMatrix
from ._cache import CACHE
from ._common import Inputs, describe, executor_for, new_token, output_matrix, todo


@dataclass
class Plan:
    """What a blocked operation will do, computed without running it."""

    op: str
    tasks: int
    bytes_read: int
    bytes_written: int
    flops: int
    peak_task_memory: int
    out_shape: tuple[int, int]
    out_blocks: tuple[int, int]
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.op}: {self.tasks} tasks, read {self.bytes_read / 2**20:.1f} MiB, "
                f"write {self.bytes_written / 2**20:.1f} MiB, {self.flops / 1e9:.2f} GFLOP, "
                f"peak {self.peak_task_memory / 2**20:.1f} MiB per task; output {self.out_shape} "
                f"in blocks of {self.out_blocks}" + "".join(f"; {n}" for n in self.notes))


def _shape_blocks(X: Any, block: int | None) -> tuple[tuple[int, int], tuple[int, int], np.dtype]:
    if isinstance(X, ShardedMatrix):
        return X.shape, X.shard_sizes, X.dtype or np.dtype(np.float64)
    X = np.asarray(X)
    if X.ndim != 2:
        raise ShapeMismatchError(f"expected a 2-D matrix, got shape {X.shape}")
    b = block or choose_block_size(X.shape, X.dtype)
    return X.shape, (min(b, max(X.shape[0], 1)), min(b, max(X.shape[1], 1))), X.dtype


def choose_block_size(shape: tuple[int, ...], dtype: Any = np.float32,
                      memory_budget: int = 1 << 30, operands: int = 4) -> int:
    """A square block edge whose ``operands`` blocks fit in ``memory_budget`` bytes.

    Rounded down to a multiple of 256 (GEMM-friendly) and capped at the largest
    dimension, so small matrices are one block.
    """
    item = np.dtype(dtype).itemsize
    edge = int(math.sqrt(memory_budget / (operands * item)))
    edge = max(256, edge - edge % 256) if edge >= 256 else max(1, edge)
    return max(1, min(edge, max(shape) if len(shape) else edge))


def _check_memory(plan: Plan, executor: Executor | None, shapes: list[tuple[int, int]],
                  dtype: np.dtype, operands: int = 4) -> None:
    limit = executor.settings.get("memory_limit") if executor is not None else None
    if limit and plan.peak_task_memory > limit:
        fit = choose_block_size(max(shapes, key=max), dtype, int(limit * 0.8), operands)
        raise MemoryPlanError(
            f"{plan.op} would need {plan.peak_task_memory / 2**20:.0f} MiB per task, more than the "
            f"executor's memory_limit of {limit / 2**20:.0f} MiB; re-shard with blocks of "
            f"{fit} x {fit} (e.g. block_size={fit}) or raise memory_limit")


# --- matmul ------------------------------------------------------------------------------


def _matmul_geometry(A_shape, A_blocks, B_shape, B_blocks):
    if A_shape[1] != B_shape[0]:
        raise ShapeMismatchError(
            f"matmul: inner dimensions differ: A is {A_shape}, B is {B_shape}")
    if A_blocks[1] != B_blocks[0] and not (A_blocks[1] >= A_shape[1] and B_blocks[0] >= B_shape[0]):
        raise ShapeMismatchError(
            f"matmul: A's column blocks ({A_blocks[1]}) must equal B's row blocks ({B_blocks[0]}) "
            "so that block products line up; re-shard one of them")
    grid = (-(-A_shape[0] // A_blocks[0]), -(-B_shape[1] // B_blocks[1]))
    inner = -(-A_shape[1] // A_blocks[1]) if A_shape[1] else 1
    return (A_shape[0], B_shape[1]), (A_blocks[0], B_blocks[1]), grid, inner


def _operand_blocks(A: Any, B: Any, block_size: int | None):
    """Shapes, blocks and dtypes of both operands, as they will be sharded.

    An array operand lines its inner blocks up with a ShardedMatrix partner's.
    """
    a_shape, a_blocks, a_dt = _shape_blocks(A, block_size)
    b_shape, b_blocks, b_dt = _shape_blocks(B, block_size)
    if isinstance(A, ShardedMatrix) and not isinstance(B, ShardedMatrix):
        b_blocks = (a_blocks[1], b_blocks[1])
    elif isinstance(B, ShardedMatrix) and not isinstance(A, ShardedMatrix):
        a_blocks = (a_blocks[0], b_blocks[0])
    elif not isinstance(A, ShardedMatrix):
        inner = min(a_blocks[1], b_blocks[0])
        a_blocks, b_blocks = (a_blocks[0], inner), (inner, b_blocks[1])
    return (a_shape, a_blocks, a_dt), (b_shape, b_blocks, b_dt)


def _groups(n_out: int, inner: int, parallelism: int) -> int:
    """How many groups to split the inner dimension into (1 = no tree)."""
    if n_out >= 2 * parallelism or inner == 1:
        return 1
    return min(inner, -(-2 * parallelism // max(n_out, 1)))


def plan_matmul(A: Any, B: Any, executor: Executor | None = None,
                block_size: int | None = None) -> Plan:
    """The plan of ``matmul(A, B)`` (nothing runs)."""
    (a_shape, a_blocks, a_dt), (b_shape, b_blocks, b_dt) = _operand_blocks(A, B, block_size)
    out_shape, out_blocks, grid, inner = _matmul_geometry(a_shape, a_blocks, b_shape, b_blocks)
    dt = np.result_type(a_dt, b_dt)
    item = dt.itemsize
    n_out = grid[0] * grid[1]
    groups = _groups(n_out, inner, executor.parallelism if executor else 1)
    bm, bk, bn = out_blocks[0], a_blocks[1], out_blocks[1]
    out_bytes = out_shape[0] * out_shape[1] * item
    reads = grid[1] * a_shape[0] * a_shape[1] * a_dt.itemsize + grid[0] * b_shape[0] * b_shape[1] * b_dt.itemsize
    plan = Plan("matmul", n_out * groups, reads, out_bytes * groups,
                2 * out_shape[0] * out_shape[1] * a_shape[1],
                (bm * bk + bk * bn + 2 * bm * bn) * item, out_shape, out_blocks)
    if groups > 1:
        adds = n_out * (groups - 1)
        plan.tasks += adds
        plan.bytes_read += 2 * adds * bm * bn * item
        plan.bytes_written += adds * bm * bn * item
        plan.notes.append(f"inner dimension split in {groups} groups, summed in a tree")
    _check_memory(plan, executor, [a_shape, b_shape], dt)
    return plan


def _gemm_acc(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """acc += a @ b in place, with BLAS beta=1: no temporary, no extra pass over acc.

    C-ordered arrays are the transposes of Fortran-ordered ones, so the call is
    made on the transposes: acc.T += b.T @ a.T.
    """
    from scipy.linalg import blas

    if acc.size == 0 or a.shape[1] == 0:
        return  # nothing to add (BLAS refuses empty operands)
    gemm = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}.get(acc.dtype)
    if gemm is None or not acc.flags.c_contiguous:
        acc += a @ b
        return
    gemm(1.0, np.ascontiguousarray(b).T, np.ascontiguousarray(a).T, beta=1.0, c=acc.T,
         overwrite_c=True)


def work_dtype(dt: Any) -> np.dtype:
    """The dtype products are accumulated in: float16 sums in float32, as numpy's
    float16 matmul does (a partial sum may overflow float16 when the total does not)."""
    dt = np.dtype(dt)
    return np.dtype(np.float32) if dt == np.float16 else dt


def _matmul_block(A: ShardedMatrix, B: ShardedMatrix, C: ShardedMatrix, i: int, j: int,
                  ls: range, token: str = "") -> int:
    """One output block: the sum over l of A[i, l] @ B[l, j], accumulated in place."""
    dt = work_dtype(C.dtype or np.result_type(A.dtype, B.dtype))
    acc = np.zeros(C.block_shape(i, j), dtype=dt)
    for l in ls:
        # Mapped reads (copy=False) share the page cache: no fresh memory per block.
        # Neighbouring output blocks reuse a block-row of A or a block-column of B,
        # so the worker's cache saves store reads (it matters on S3).
        a = CACHE.get(("matmul", token, "A", i, l),
                        lambda: A.get_block(i, l, copy=False).astype(dt, copy=False))
        b = CACHE.get(("matmul", token, "B", l, j),
                        lambda: B.get_block(l, j, copy=False).astype(dt, copy=False))
        _gemm_acc(acc, a, b)
    C.put_block(i, j, _rounded(acc, C))
    return 0


def _rounded(block: np.ndarray, out: ShardedMatrix) -> np.ndarray:
    """A block summed in its work dtype, rounded once to ``out``'s (float32 -> float16)."""
    return block if out.dtype is None else block.astype(out.dtype, copy=False)


def _add_blocks(P: ShardedMatrix, Q: ShardedMatrix, out: ShardedMatrix, i: int, j: int) -> int:
    out.put_block(i, j, _rounded(P.get_block(i, j, copy=False) + Q.get_block(i, j, copy=False),
                                 out))
    return 0


def matmul(A: Any, B: Any, out: ShardedMatrix | None = None, executor: Executor | None = None,
           key: str | None = None, block_size: int | None = None,
           progress: bool | None = None, resume: bool = False) -> ShardedMatrix:
    """C = A @ B for matrices that need not fit in memory.

    One task per output block, streaming over the inner dimension, when there are
    enough output blocks to keep the workers busy; otherwise the inner dimension
    is split into groups whose partial products are summed in a tree (as in
    numpywren).

    Parameters
    ----------
    A, B : ShardedMatrix or array
        A's column blocks must equal B's row blocks. Arrays are sharded for you
        (``block_size``, or one chosen from the shapes and a 1 GiB budget).
    out : ShardedMatrix, optional
        Destination (default: a new matrix ``key`` or a unique name in the executor's store).
    resume : bool
        Compute only the output blocks ``out`` lacks (after a driver died), whichever
        way the inner dimension is split. Blocks written from other inputs are refused
        (``ResumeMismatchError``).

    Returns
    -------
    ShardedMatrix
    """
    with executor_for(executor) as ex, Inputs(ex, block_size) as inputs:
        plan_matmul(A, B, ex, block_size)  # refuses plans that do not fit, before any work
        (_, a_blocks, _), (_, b_blocks, _) = _operand_blocks(A, B, block_size)
        A_m = inputs.matrix(A, "A", *a_blocks)
        B_m = inputs.matrix(B, "B", *b_blocks)
        out_shape, out_blocks, grid, inner = _matmul_geometry(A_m.shape, A_m.shard_sizes,
                                                              B_m.shape, B_m.shard_sizes)
        dt = np.result_type(A_m.dtype, B_m.dtype)
        C = output_matrix(out, key or _unique("matmul"), out_shape, out_blocks, dt, ex.store,
                          A=A_m, B=B_m)
        need = [tuple(ij) for ij in todo(C, C.block_idxs, resume, "matmul", {"A": A_m, "B": B_m})]
        if not need:
            return C
        groups = _groups(len(need), inner, ex.parallelism)
        token = new_token()
        if groups == 1:
            fs = ex.starmap(lambda i, j: _matmul_block(A_m, B_m, C, i, j, range(inner), token),
                            need)
            get_all_results(fs, progress=progress)
            return C
        size = -(-inner // groups)
        parts = [inputs.scratch(out_shape, out_blocks, f"partial{g}", work_dtype(dt))
                 for g in range(groups)]
        tasks = [(i, j, g) for g in range(groups) for i, j in need]
        fs = ex.starmap(lambda i, j, g: _matmul_block(A_m, B_m, parts[g], i, j,
                                                       range(g * size, min(inner, (g + 1) * size)),
                                                       token), tasks)
        get_all_results(fs, progress=progress)
        _tree_sum(parts, C, ex, progress, need)
        return C


def _tree_sum(parts: list[ShardedMatrix], C: ShardedMatrix, ex: Executor,
              progress: bool | None, blocks: list[tuple[int, int]]) -> None:
    """Sum matrices pairwise over ``blocks``, level by level; the last level writes C."""
    while len(parts) > 1:
        pairs = [(parts[k], parts[k + 1]) for k in range(0, len(parts) - 1, 2)]
        final = len(pairs) == 1 and len(parts) == 2
        targets = [C if final else p for p, _ in pairs]
        jobs = [(n, i, j) for n in range(len(pairs)) for i, j in blocks]
        fs = ex.starmap(lambda n, i, j: _add_blocks(pairs[n][0], pairs[n][1], targets[n], i, j), jobs)
        get_all_results(fs, progress=progress)
        parts = targets + ([parts[-1]] if len(parts) % 2 else [])
    if parts[0] is not C:
        fs = ex.starmap(lambda i, j: C.put_block(i, j, _rounded(parts[0].get_block(i, j, copy=False),
                                                                C)), blocks)
        get_all_results(fs, progress=progress)


def _unique(op: str) -> str:
    return f"{op}-{uuid.uuid4().hex[:10]}"


matmul.plan = plan_matmul  # type: ignore[attr-defined]


# --- Gram ------------------------------------------------------------------------------------


def plan_gram(X: Any, executor: Executor | None = None, block_size: int | None = None) -> Plan:
    """The plan of ``gram(X)``: only blocks i <= j are computed."""
    shape, blocks, dt = _shape_blocks(X, block_size)
    g = -(-shape[0] // blocks[0])
    pairs = g * (g + 1) // 2
    item = dt.itemsize
    b, k = blocks
    plan = Plan("gram", pairs, pairs * 2 * b * shape[1] * item,
                shape[0] * shape[0] * item, shape[0] * shape[0] * shape[1],
                (2 * b * k + 2 * b * b) * item, (shape[0], shape[0]), (b, b),
                [f"{pairs} of {g * g} block products (symmetry)"])
    _check_memory(plan, executor, [shape], dt)
    return plan


def _gram_block(X: ShardedMatrix, C: ShardedMatrix, i: int, j: int, inner: int) -> int:
    acc = tmp = None
    dt = work_dtype(X.dtype or np.float64)
    for l in range(inner):
        a = X.get_block(i, l, copy=False).astype(dt, copy=False)
        b = X.get_block(j, l, copy=False).astype(dt, copy=False)
        if acc is None:
            acc = a @ b.T
            tmp = np.empty_like(acc)
        else:
            acc += np.matmul(a, b.T, out=tmp)
    if acc is None:  # no columns: X X^T is all zeros
        acc = np.zeros(C.block_shape(i, j), dtype=C.dtype or np.float64)
    if i == j:  # BLAS rounds (r, c) and (c, r) differently: mirror the upper triangle
        lower = np.tril_indices_from(acc, -1)
        acc[lower] = acc.T[lower]
    acc = _rounded(acc, C)
    C.put_block(i, j, acc)
    if i != j:
        C.put_block(j, i, acc.T)  # mirrored: written, never recomputed
    return 0


def gram(X: Any, out: ShardedMatrix | None = None, executor: Executor | None = None,
         key: str | None = None, block_size: int | None = None,
         progress: bool | None = None) -> ShardedMatrix:
    """X @ X.T, computing only the blocks i <= j and mirroring the rest."""
    with executor_for(executor) as ex, Inputs(ex, block_size) as inputs:
        plan = plan_gram(X, ex, block_size)
        X_m = inputs.matrix(X, "X", rows=plan.out_blocks[0], cols=plan.out_blocks[1])
        n, b = X_m.shape[0], X_m.shard_sizes[0]
        C = output_matrix(out, key or _unique("gram"), (n, n), (b, b), X_m.dtype, ex.store, X=X_m)
        g, inner = X_m.grid
        pairs = [(i, j) for i in range(g) for j in range(i, g)]
        todo(C, pairs, False, "gram", {"X": X_m})  # records the job (no resume here)
        get_all_results(ex.starmap(lambda i, j: _gram_block(X_m, C, i, j, inner), pairs),
                        progress=progress)
        return C


gram.plan = plan_gram  # type: ignore[attr-defined]


# --- views and elementwise -------------------------------------------------------------------


def transpose(A: ShardedMatrix) -> ShardedMatrix:
    """A transposed view of A: no data is copied."""
    return A.T


def _apply(fn: Callable, out: ShardedMatrix, i: int, j: int, *ms: Any) -> int:
    args = [m.get_block(i, j) if isinstance(m, ShardedMatrix) else m for m in ms]
    block = np.asarray(fn(*args))
    if block.shape != out.block_shape(i, j):
        raise ShapeMismatchError(
            f"map_blocks: fn changed block ({i}, {j})'s shape from {out.block_shape(i, j)} to "
            f"{block.shape}; it must work elementwise")
    if out.dtype is not None and not _fits(block, out.dtype):
        # e.g. floats into an integer output, or 300 into uint8: astype would truncate or
        # wrap them silently
        raise DTypeMismatchError(
            f"map_blocks: fn returned {block.dtype} for block ({i}, {j}) and the output is "
            f"{out.dtype}, which cannot hold it; pass out_dtype={str(block.dtype)!r}")
    out.put_block(i, j, block.astype(out.dtype, copy=False) if out.dtype is not None else block)
    return 0


def _fits(block: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``block`` goes into ``dtype`` without a wrong value: a cast numpy calls
    safe or of the same kind, and for narrower integers only values in their range."""
    if not np.can_cast(block.dtype, dtype, "same_kind"):
        return False
    if np.can_cast(block.dtype, dtype, "safe") or dtype.kind not in "iu" or block.size == 0:
        return True
    info = np.iinfo(dtype)
    return bool(info.min <= block.min() and block.max() <= info.max)


def plan_map_blocks(A: ShardedMatrix, *others: Any, out_dtype: Any = None) -> Plan:
    """The plan of an elementwise map over A's blocks (and same-layout operands)."""
    a_dt = A.dtype or np.dtype(np.float64)  # dtype pending: the first block fixes it
    dt = np.dtype(out_dtype or a_dt)
    n = len([A, *[o for o in others if isinstance(o, ShardedMatrix)]])
    size = A.shape[0] * A.shape[1]
    b = A.shard_sizes[0] * A.shard_sizes[1]
    return Plan("map_blocks", A.num_blocks, n * size * a_dt.itemsize, size * dt.itemsize,
                size * n, (n + 1) * b * max(dt.itemsize, a_dt.itemsize), A.shape, A.shard_sizes)


def map_blocks(fn: Callable[..., Any], A: ShardedMatrix, *others: Any, out: ShardedMatrix | None = None,
               out_dtype: Any = None, executor: Executor | None = None, key: str | None = None,
               progress: bool | None = None, resume: bool = False) -> ShardedMatrix:
    """Apply an elementwise ``fn(block_of_A, block_of_other, ...)`` to every block.

    Other operands are ShardedMatrices of A's shape and blocks, or scalars (an array
    is refused: it would be applied to every block alike). The output's dtype is
    ``out_dtype``, by default A's; a block ``fn`` returns in a kind the output
    cannot hold (floats into integers) is refused with :class:`DTypeMismatchError`,
    never truncated. With ``resume``, blocks ``out`` already has are not computed again.
    """
    for o in others:
        if not isinstance(o, ShardedMatrix) and np.ndim(o) != 0:
            raise InvalidParameterError(
                f"map_blocks operands are ShardedMatrices of A's shape and blocks, or scalars; "
                f"got a {type(o).__name__} of shape {np.shape(o)}, which would be applied to every "
                "block alike: shard it first (ShardedMatrix.from_numpy with A's shard_sizes)")
        if isinstance(o, ShardedMatrix) and (o.shape != A.shape or o.shard_sizes != A.shard_sizes):
            raise ShapeMismatchError(
                f"operands must share shape and blocks: {A.shape}/{A.shard_sizes} vs "
                f"{o.shape}/{o.shard_sizes}")
    with executor_for(executor) as ex:
        plan = plan_map_blocks(A, *others, out_dtype=out_dtype)
        _check_memory(plan, ex, [A.shape], A.dtype or np.dtype(np.float64),
                      operands=len(others) + 2)
        C = output_matrix(out, key or _unique("map"), A.shape, A.shard_sizes,
                          np.dtype(out_dtype or A.dtype), ex.store, A=A,
                          **{f"operand {n + 2}": o for n, o in enumerate(others)})
        try:
            fn_id = _function_id(fn)
        except TypeError:
            if resume:
                raise
            fn_id = None
        job = {"fn": fn_id, "dtype": C.dtype.str if C.dtype else None,
               "operands": [A, *others]}
        get_all_results(ex.starmap(lambda i, j: _apply(fn, C, i, j, A, *others),
                                   todo(C, A.block_idxs, resume, "map_blocks", job)),
                        progress=progress)
        return C


def _code_digest(code: Any) -> str:
    """A digest of a code object (nested ones included, never their addresses)."""
    h = hashlib.sha256(code.co_code + repr(code.co_names).encode())
    for c in code.co_consts:
        h.update(_code_digest(c).encode() if hasattr(c, "co_code") else repr(c).encode())
    return h.hexdigest()[:16]


def _function_id(fn: Callable[..., Any], _seen: set[int] | None = None) -> Any:
    """What a resumed ``map_blocks`` compares its function by: module and name, with the
    code, captured values, defaults and the module-level values it reads of Python
    functions (every lambda has the same name; a changed global or helper changes the
    blocks), and a partial's arguments. Functions it reads are described the same way.
    A callable the job record cannot describe raises TypeError: such a call is not
    recorded, and cannot be resumed."""
    seen = set() if _seen is None else _seen
    if isinstance(fn, functools.partial):
        return {"partial": _function_id(fn.func, seen),
                "args": [_value_id(v, seen) for v in fn.args],
                "keywords": sorted([k, _value_id(v, seen)] for k, v in fn.keywords.items())}
    name = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', None)}"
    code = getattr(fn, "__code__", None)
    if code is not None:
        if id(fn) in seen:  # recursion: described once, higher up
            return {"function": name}
        seen.add(id(fn))
        try:
            cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
        except ValueError:  # a cell not filled yet: nothing to describe it by
            raise TypeError(f"map_blocks cannot record {name}: a captured name is unset") from None
        return {"function": name, "code": _code_digest(code),
                "captured": [_value_id(c, seen) for c in cells],
                "defaults": [_value_id(d, seen) for d in getattr(fn, "__defaults__", None) or ()],
                "kwdefaults": sorted([k, _value_id(v, seen)] for k, v in
                                     (getattr(fn, "__kwdefaults__", None) or {}).items()),
                "globals": _globals_read(fn, code, seen)}
    if getattr(fn, "__qualname__", None) is None:  # an instance of a callable class
        raise TypeError(f"map_blocks cannot record the callable {fn!r}: pass a function")
    return name  # a builtin or numpy ufunc: its name is its identity


def _value_id(value: Any, seen: set[int]) -> Any:
    """A value a function uses, as the job record describes it: functions by
    :func:`_function_id`, everything else as it is (described by the record)."""
    if isinstance(value, (functools.partial, types.FunctionType, types.BuiltinFunctionType,
                          np.ufunc)):
        return {"callable": _function_id(value, seen)}
    return value


def _names_read(code: Any) -> set[str]:
    """The global names ``code`` (and code nested in it) loads: not attribute names,
    which share ``co_names`` with them (``a.real`` reads no global ``real``)."""
    names = {ins.argval for ins in dis.get_instructions(code)
             if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str)}
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            names |= _names_read(c)
    return names


def _globals_read(fn: Any, code: Any, seen: set[int]) -> dict[str, Any]:
    """The module-level values ``fn`` reads that the record can describe (numbers,
    strings, arrays, matrices, functions, and containers of them). Modules and other
    objects (a model instance, say) are left out: they cannot be compared."""
    namespace = getattr(fn, "__globals__", None) or {}
    out: dict[str, Any] = {}
    for name in sorted(_names_read(code)):
        if name not in namespace or isinstance(namespace[name], types.ModuleType):
            continue
        try:  # described once, here: an array is hashed once, a long list kept as a digest
            desc = describe(_value_id(namespace[name], seen), name)
        except TypeError:
            continue
        text = json.dumps(desc, sort_keys=True)
        out[name] = desc if len(text) <= 256 else {
            "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return out


map_blocks.plan = plan_map_blocks  # type: ignore[attr-defined]


def _dtype_of(*xs: Any) -> np.dtype:
    return np.result_type(*[x.dtype if isinstance(x, ShardedMatrix) else np.asarray(x).dtype for x in xs])


def add(A: ShardedMatrix, B: ShardedMatrix, **kw: Any) -> ShardedMatrix:
    """A + B, blockwise."""
    return map_blocks(np.add, A, B, out_dtype=kw.pop("out_dtype", _dtype_of(A, B)), **kw)


def sub(A: ShardedMatrix, B: ShardedMatrix, **kw: Any) -> ShardedMatrix:
    """A - B, blockwise."""
    return map_blocks(np.subtract, A, B, out_dtype=kw.pop("out_dtype", _dtype_of(A, B)), **kw)


def scale(A: ShardedMatrix, alpha: float, **kw: Any) -> ShardedMatrix:
    """alpha * A, blockwise, in the dtype numpy gives ``A * alpha`` (float32 stays float32;
    integers times a float become float64)."""
    dt = np.result_type(A.dtype or np.float64, alpha)
    return map_blocks(lambda a, s: a * s, A, alpha, out_dtype=kw.pop("out_dtype", dt), **kw)


def plan(op: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Plan:
    """Plan an operation without running it: ``plan(matmul, A, B)`` or ``plan("gram", X)``."""
    ops = {"matmul": matmul, "gram": gram, "map_blocks": map_blocks}
    fn = ops.get(op, op) if isinstance(op, str) else op
    if not hasattr(fn, "plan"):
        raise ValueError(f"no plan for {op!r}; plannable operations: {sorted(ops)}")
    return fn.plan(*args, **kwargs)
