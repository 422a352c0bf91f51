"""Helpers shared by the block algorithms: inputs, executors, scratch matrices."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import numbers
import uuid
import zipfile
from collections.abc import Callable
from typing import Any, Iterator

import numpy as np

from ..errors import (
    DTypeMismatchError,
    InvalidParameterError,
    KeyNotFoundError,
    NonFiniteInputError,
    OutputAliasError,
    ResumeMismatchError,
    ShapeMismatchError,
    StoreNotSharedError,
)
from ..executor import Executor, default_executor
from ..matrix import ShardedMatrix, scratch_from_numpy, scratch_matrix
from ..storage import overlaps

DEFAULT_BLOCK = 4000


@contextlib.contextmanager
def executor_for(executor: Executor | None) -> Iterator[Executor]:
    """Use ``executor``, or a default one for the duration of the call."""
    if executor is not None:
        yield executor
        return
    with default_executor() as ex:
        yield ex


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as an int. :class:`InvalidParameterError` (a TypeError and a ValueError) for
    non-integers (1.5, "3", True) and for values below 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidParameterError(
            f"{name} must be an integer, got {k!r} of type {type(k).__name__}")
    if k < 1:
        raise InvalidParameterError(f"{name} must be at least 1, got {k}")
    return int(k)


def check_numeric(X: Any, name: str) -> None:
    """Refuse what the exact kernels cannot take as it is: non-numeric dtypes, extended
    precision (float64 is the reference's arithmetic) and masked entries."""
    if X.dtype is not None and np.dtype(X.dtype).kind not in "biuf":
        raise DTypeMismatchError(f"{name} must be numeric (int or float), got dtype {X.dtype}")
    if X.dtype is not None and np.dtype(X.dtype).kind == "f" and np.dtype(X.dtype).itemsize > 8:
        raise DTypeMismatchError(
            f"{name} is {np.dtype(X.dtype)} (extended precision); distances are float64's: "
            "convert it with np.asarray(X, np.float64) (values beyond float64's range, which "
            "would become inf, need rescaling first)")
    if isinstance(X, np.ma.MaskedArray) and np.ma.is_masked(X):
        raise NonFiniteInputError(
            f"{name} has masked (missing) entries: fill them (X.filled(value)) or drop "
            "those rows first")


class Inputs:
    """Turns numpy arrays into ShardedMatrices in the executor's store, and cleans up.

    Matrices the caller passed in are used as they are; arrays are sharded under
    a scratch key that is deleted when the ``with`` block ends.
    """

    def __init__(self, executor: Executor, block_rows: int | None = None):
        self.executor = executor
        self.block_rows = None if block_rows is None else check_k(block_rows, "block_size")
        self._scratch: list[ShardedMatrix] = []

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._scratch:
            m.delete()

    def matrix(self, X: Any, name: str, rows: int | None = None,
               cols: int | None = None) -> ShardedMatrix:
        """X as a ShardedMatrix; arrays are sharded in blocks of ``rows`` x ``cols``
        (default: the block size given at construction, whole rows)."""
        if isinstance(X, ShardedMatrix):
            check_numeric(X, name)
            require_shared(X.store, self.executor)
            return X
        if isinstance(X, np.ma.MaskedArray):
            check_numeric(X, name)  # before asarray, which drops the mask
        X = np.asarray(X)
        if X.ndim != 2:
            raise ShapeMismatchError(f"{name} must be a 2-D matrix (samples x features), got shape {X.shape}")
        check_numeric(X, name)
        # The dtype is kept (uint8 pixels stay 4x smaller than float32): the kernels
        # convert blocks as they need, exactly, and never through a narrower type.
        require_shared(self.executor.store, self.executor)
        rows = min(rows or self.block_rows or DEFAULT_BLOCK, max(1, X.shape[0]))  # not past the end
        cols = cols or X.shape[1]
        # Owned by this process: if it dies, `shardwren store gc` removes it.
        m = scratch_from_numpy(X, self.executor.store, name, (max(1, rows), max(1, cols)))
        self._scratch.append(m)
        return m

    def adopt(self, m: ShardedMatrix | None) -> None:
        """Delete ``m`` too when the call ends."""
        if m is not None:
            self._scratch.append(m)

    def scratch(self, shape: tuple[int, int], shard_sizes: tuple[int, int], name: str,
                dtype: Any = None) -> ShardedMatrix:
        m = scratch_matrix(self.executor.store, name, shape, shard_sizes, dtype)
        self._scratch.append(m)
        return m


def check_output(out: ShardedMatrix, **inputs: Any) -> None:
    """Refuse an output that is one of the inputs, or lies inside one's tree (or holds
    one in its own): tasks would overwrite blocks other tasks still read."""
    _refuse_alias(out.store, out.key, inputs)


def _refuse_alias(store: Any, key: str, inputs: dict[str, Any]) -> None:
    for name, m in inputs.items():
        if isinstance(m, ShardedMatrix) and overlaps(store.location(key),
                                                     m.store.location(m.key)):
            raise OutputAliasError(
                f"the output {key!r} in {store.url} is the input {name} ({m.key!r}) or "
                "inside it: its blocks would be overwritten while other tasks read them. "
                "Write the result to another key")


def output_matrix(out: ShardedMatrix | None, key: str, shape: tuple[int, int],
                  blocks: tuple[int, int], dtype: Any, store: Any,
                  **inputs: Any) -> ShardedMatrix:
    """A blockwise call's output: ``out``, checked against the result's shape and
    blocks, or a new matrix ``key`` in ``store``. Either way it is refused
    (:class:`OutputAliasError`) when it is one of ``inputs`` or overlaps one, and
    before anything is created: a new matrix replaces what is at its key."""
    if out is None:
        _refuse_alias(store, key, inputs)
        return ShardedMatrix(key, shape=shape, shard_sizes=blocks, dtype=dtype, store=store)
    if tuple(out.shape) != tuple(shape) or tuple(out.shard_sizes) != tuple(blocks):
        raise ShapeMismatchError(
            f"out has shape {out.shape} in blocks of {out.shard_sizes}; this result needs shape "
            f"{tuple(shape)} in blocks of {tuple(blocks)}")
    check_output(out, **inputs)
    return out


def _digest_is_cheap(value: Any) -> bool:
    """Whether fingerprinting ``value`` reads a few bytes per block (shardwren's own
    matrices store each block's checksum) rather than whole chunks (zarr-python's)."""
    if isinstance(value, ShardedMatrix):
        return value.layout.codec != "zarr"
    if isinstance(value, (list, tuple)):
        return all(_digest_is_cheap(v) for v in value)
    return True


def todo(out: ShardedMatrix, idxs: list, resume: bool, job: str,
         fingerprint: dict[str, Any]) -> list:
    """The output blocks still to compute: all of them, or with ``resume`` those
    ``out`` lacks.

    Each call records the job (``job`` and a ``fingerprint`` of its inputs and
    parameters, as for :func:`run_resumable`) beside ``out``'s blocks
    (:attr:`ShardedMatrix.job_record_key`); without ``resume`` only when that is cheap
    (no input written by zarr-python, whose chunks would have to be read whole to be
    digested) and possible (every ingredient describable). A call that is not resuming
    first removes blocks that another (or an unknown) job wrote, so that a run
    interrupted midway never leaves them under its own record. A resumed call reuses
    the existing blocks only when the record is this job's: blocks written from
    other inputs are refused with :class:`ResumeMismatchError`, never returned as this
    job's answer. A block that exists is complete (block writes are atomic) and its
    checksum is verified whenever it is read, so skipping it loses nothing.
    """
    record = out.job_record_key
    if out.transposed:
        # Blocks written through C and through C.T hold each other's transposes: the
        # orientation is part of the job (only when transposed, so older records still match).
        fingerprint = {**fingerprint, "out_orientation": "transposed"}
    digest = desc = None
    if resume or _digest_is_cheap(list(fingerprint.values())):
        try:
            desc, digest = job_fingerprint(job, fingerprint)
        except TypeError:
            if resume:
                raise
    try:
        saved = json.loads(out.store.get(record))
        saved_digest, saved_job = saved["digest"], saved.get("job", {})
    except KeyNotFoundError:
        saved_digest, saved_job = None, None
    except (ValueError, KeyError, TypeError):
        saved_digest, saved_job = "unreadable", None
    have = set(out.block_idxs_exist)
    mine = None if digest is None else json.dumps({"digest": digest, "job": desc},
                                                  indent=1).encode()
    if not resume:
        if have and (digest is None or saved_digest != digest):
            out.store.delete(record, missing_ok=True)  # first: no record over mixed blocks
            for ij in sorted(have):
                out.delete_block(*ij)
        if mine is None:
            out.store.delete(record, missing_ok=True)
        else:
            out.store.put(record, mine)
        return list(idxs)
    assert mine is not None and desc is not None
    if saved_digest == digest or not have:  # this job's blocks, or none to reuse
        if saved_digest != digest:
            out.store.put(record, mine)
        return [ij for ij in idxs if tuple(ij[:2]) not in have]
    if saved_digest is None:
        why = "no record of the job that wrote them"
        if not _digest_is_cheap(list(fingerprint.values())):
            why += ("; a call on matrices that zarr-python wrote records its inputs only with "
                    "resume=True, digesting them means reading them whole")
    elif saved_job is None:
        why = f"{record} is unreadable"
    else:
        why = _differences(saved_job, desc)
    raise ResumeMismatchError(
        f"the blocks of {out.key!r} in {out.store.url} were written by a different job "
        f"({why}); they are not reused. Write to another key, pass resume=False to "
        "compute every block again, or delete the matrix")


# --- resumable maps: task results kept in the store as plain arrays -------------------------
#
# A resumed job reuses the results a killed one left under ``<key>/parts/``. Two
# rules make that safe: nothing read back is unpickled (results are stored as .npz
# arrays plus a JSON tree, loaded with allow_pickle=False), and every part carries
# the fingerprint of the job that made it (inputs' contents, k, method, ...), so a
# part of a different job under the same key is refused, never returned.

_TREE, _DIGEST, _PART = "__tree__", "__fingerprint__", "__part__"


def _encode_result(value: Any, digest: str, part: str = "") -> bytes:
    """A task result as .npz bytes: its arrays, plus a JSON tree of the containers
    (tuples, lists, str-keyed dicts) and plain scalars around them, the job's
    fingerprint and the part's own name (a part copied over another is not its answer)."""
    arrays: dict[str, np.ndarray] = {}

    def tree(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, np.ndarray) or isinstance(v, np.generic):
            a = np.asarray(v)
            if a.dtype.hasobject:
                raise TypeError("holds an object array")
            name = f"a{len(arrays)}"
            arrays[name] = a
            return {"a" if isinstance(v, np.ndarray) else "s": name}
        if isinstance(v, tuple):
            return {"t": [tree(x) for x in v]}
        if isinstance(v, list):
            return {"l": [tree(x) for x in v]}
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"d": [[k, tree(x)] for k, x in v.items()]}
        raise TypeError(f"holds a {type(v).__name__}")

    try:
        doc = json.dumps(tree(value))
    except TypeError as exc:
        raise TypeError(f"resume=True keeps each task's result as plain arrays, but this result "
                        f"{exc}: return arrays, numbers, strings and tuples/lists/dicts of them"
                        ) from None
    buf = io.BytesIO()
    members: dict[str, Any] = {**arrays, _TREE: np.array(doc), _DIGEST: np.array(digest),
                               _PART: np.array(part)}
    np.savez(buf, **members)
    return buf.getvalue()


def _decode_result(data: bytes, part: str = "") -> tuple[str, Any]:
    """(fingerprint, value) of the part named ``part``; ValueError if it is not that
    part (damaged, copied from another part, or older than part names: never unpickles)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        doc, digest = json.loads(str(arrays.pop(_TREE))), str(arrays.pop(_DIGEST))
        if str(arrays.pop(_PART)) != part:
            raise ValueError("it was saved as another part")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a saved part ({type(exc).__name__}: {exc})") from None

    def build(t: Any) -> Any:
        if not isinstance(t, dict):
            return t
        if "a" in t:
            return arrays[t["a"]]
        if "s" in t:
            return arrays[t["s"]][()]
        if "t" in t:
            return tuple(build(x) for x in t["t"])
        if "l" in t:
            return [build(x) for x in t["l"]]
        return {k: build(x) for k, x in t["d"]}

    try:
        return digest, build(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a saved part ({type(exc).__name__}: {exc})") from None


def describe(value: Any, what: str) -> Any:
    """A JSON description of one ingredient of a job's fingerprint."""
    if isinstance(value, ShardedMatrix):
        return {"matrix": {"shape": list(value.shape), "blocks": list(value.shard_sizes),
                           "dtype": None if value.dtype is None else value.dtype.str,
                           "content": value.content_digest()}}
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return {"array": {"shape": list(a.shape), "dtype": a.dtype.str,
                          "content": hashlib.sha256(a.view(np.uint8).reshape(-1).data).hexdigest()}}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    if isinstance(value, (tuple, list)):
        return [describe(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: describe(v, what) for k, v in sorted(value.items())}
    raise TypeError(f"fingerprint ingredient {what!r} is a {type(value).__name__}; use "
                    "matrices, arrays, numbers, strings or tuples of them")


def job_fingerprint(name: str, fingerprint: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The description (JSON) and digest of what produces a resumable map's results."""
    desc = {"task": name, **{k: describe(v, k) for k, v in sorted(fingerprint.items())}}
    return desc, hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and "matrix" in a and "matrix" in b:
            a, b = a["matrix"], b["matrix"]
            what = [f for f in ("shape", "blocks", "dtype", "content") if a.get(f) != b.get(f)]
            out.append(f"{k}: {', '.join(what)} differ" if what != ["content"]
                       else f"{k}: same shape, other data")
        else:
            out.append(f"{k}: {a!r} then, {b!r} now")
    return "; ".join(out) or "their fingerprint differs"


def _part_id(key: str) -> str:
    """A part's own name, whatever job key it sits under (``tile-0-1``)."""
    return key.rsplit("/", 1)[-1]


def _keep(store: Any, part: str, digest: str, fn, *args):
    """Run a task and keep its result (plain arrays, fingerprinted) for a resumed job."""
    result = fn(*args)
    store.put(part, _encode_result(result, digest, _part_id(part)))
    return result


def _mismatch(store: Any, key: str, name: str, why: str) -> ResumeMismatchError:
    return ResumeMismatchError(
        f"the partial results saved under {key!r} in {store.url} were made by a different job "
        f"({why}); they are not reused. Pass another key=, or delete them to start this job "
        f"afresh: store.delete({key + '/parts'!r}); store.delete({f'{key}/parts-{name}.json'!r})")


def run_resumable(ex: Executor, fn, items: list[tuple], key: str | None, name: str,
                  resume: bool, progress: bool | None = None, *,
                  fingerprint: dict[str, Any] | None = None,
                  fold: Callable[[int, Any], None] | None = None) -> tuple[list, int]:
    """``[fn(*item) for item in items]`` as tasks; with ``resume``, each result is
    kept in the store under ``<key>/parts/`` and those already there are reused.

    Parameters
    ----------
    fingerprint : dict, optional (required with ``resume``)
        Everything the results depend on: input matrices (their contents are
        digested, cheaply: each block's stored checksum), and parameters such as
        ``k``. Saved parts of a job with another fingerprint are refused with
        :class:`ResumeMismatchError` (never reused, never silently overwritten).
    fold : callable, optional
        ``fold(position, result)`` is called for each result as it arrives (saved
        parts first), and nothing is kept: the driver's memory then depends on the
        fold's state, not on the number of tasks. The returned list is empty.

    Returns the results in order (none with ``fold``) and how many tasks ran. Parts
    are plain arrays (.npz) read with ``allow_pickle=False``; a part that does not
    load (damaged, or written by an older shardwren that pickled them) is computed
    again.
    """
    from ..futures import fold_results

    results: list = [] if fold is not None else [None] * len(items)

    def keep(n: int, value: Any) -> None:
        results[n] = value

    sink = fold if fold is not None else keep

    if not resume:
        fold_results(ex.starmap(fn, items), sink, progress)
        return results, len(items)
    if not key:
        raise ValueError("resume=True needs a name for the job's saved partial results: pass key=")
    if fingerprint is None:
        raise TypeError("run_resumable(resume=True) needs fingerprint=: what the results "
                        "depend on (inputs and parameters)")
    store = ex.store
    desc, digest = job_fingerprint(name, fingerprint)
    manifest = f"{key}/parts-{name}.json"
    if not store.put_if_absent(manifest, json.dumps({"digest": digest, "job": desc},
                                                    indent=1).encode()):
        try:
            saved = json.loads(store.get(manifest))
            same = saved["digest"] == digest
        except (ValueError, KeyError, TypeError):
            raise _mismatch(store, key, name, f"{manifest} is unreadable") from None
        if not same:
            raise _mismatch(store, key, name, _differences(saved.get("job", {}), desc))
    parts = [f"{key}/parts/{name}-" + "-".join(_part_name(x) for x in it) for it in items]
    have = set(store.list(f"{key}/parts"))
    missing = []
    for n, p in enumerate(parts):
        if p not in have:
            missing.append(n)
            continue
        try:
            got, value = _decode_result(store.get(p), _part_id(p))
        except ValueError:
            missing.append(n)  # damaged, misplaced or old: never unpickled, recomputed
            continue
        if got != digest:
            raise _mismatch(store, key, name, f"part {p} carries another fingerprint")
        sink(n, value)
    fold_results(ex.starmap(lambda part, *it: _keep(store, part, digest, fn, *it),
                            [(parts[n], *items[n]) for n in missing]),
                 lambda m, value: sink(missing[m], value), progress)
    return results, len(missing)


def _part_name(x: Any) -> str:
    """One task argument in a part's key: numbers as they are, lists joined by '_'."""
    if isinstance(x, (list, tuple)):
        return "_".join(_part_name(v) for v in x)
    return str(x)


def new_token() -> str:
    """A unique id for one call's cache entries."""
    return uuid.uuid4().hex


def require_shared(store: Any, executor: Executor) -> None:
    """Refuse a store the executor's workers cannot read."""
    if store.scheme == "memory":
        raise StoreNotSharedError(
            f"store {store.url} lives in this process's memory, so {executor.backend.name} "
            "workers cannot read it; use a file:// store (the default) or s3://...")
    executor.backend.check_store(store)


def check_features(A: ShardedMatrix, B: ShardedMatrix, what: str = "the two matrices") -> None:
    if A.shape[1] != B.shape[1]:
        raise ShapeMismatchError(
            f"{what} have different numbers of features (columns): {A.shape[1]} and {B.shape[1]}")
    for m in (A, B):
        if m.shard_sizes[1] < m.shape[1]:
            raise ShapeMismatchError(
                f"matrix {m.key!r} is split across columns (blocks of {m.shard_sizes}); "
                "distance and k-NN functions need whole rows in each block: "
                f"re-shard it with shard_sizes=({m.shard_sizes[0]}, {m.shape[1]})")
