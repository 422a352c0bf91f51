"""Serialisation of functions, arguments, results and exceptions.

Functions go through cloudpickle (closures, lambdas, functions defined in
``__main__``). Plain data goes through the standard pickle first, which is
several times faster, and falls back to cloudpickle for anything it rejects.
Errors name the object that could not be pickled and what to do about it.
"""

from __future__ import annotations

import io
import pickle
import traceback
from typing import Any, Callable

import cloudpickle

from .errors import (
    RemoteError,
    RemoteTraceback,
    UnpicklableArgumentError,
    UnpicklableFunctionError,
    UnpicklableResultError,
)

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (of type {type(obj).__module__}.{type(obj).__qualname__})"


def _culprit(obj: Any) -> str | None:
    """Find the smallest captured piece of ``obj`` that fails to pickle."""
    parts: list[tuple[str, Any]] = []
    code = getattr(obj, "__code__", None)
    if code is not None:
        closure = getattr(obj, "__closure__", None) or ()
        parts += [(f"captured variable {name!r}", cell.cell_contents)
                  for name, cell in zip(code.co_freevars, closure)
                  if _cell_filled(cell)]
        gl = getattr(obj, "__globals__", {})
        parts += [(f"global {name!r}", gl[name]) for name in code.co_names if name in gl]
        parts += [(f"default of {name!r}", v) for name, v in
                  zip(code.co_varnames[::-1], (getattr(obj, "__defaults__", None) or ())[::-1])]
    elif isinstance(obj, (list, tuple)):
        parts += [(f"item {i}", v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        parts += [(f"key {k!r}", v) for k, v in obj.items()]
    for label, value in parts:
        try:
            cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception:  # noqa: BLE001 - pickling raises anything a __reduce__ does
            inner = _culprit(value)
            return f"{label}, {_describe(value)}" + (f"; inside it, {inner}" if inner else "")
    return None


def _cell_filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a function for shipping to workers.

    Raises
    ------
    UnpicklableFunctionError
        Naming the captured object that cannot be pickled.
    """
    if not callable(fn):
        raise UnpicklableFunctionError(f"expected a callable, got {_describe(fn)}")
    try:
        return cloudpickle.dumps(fn, protocol=PROTOCOL)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or _describe(fn)
        culprit = _culprit(fn)
        where = f": the culprit is its {culprit}" if culprit else ""
        raise UnpicklableFunctionError(
            f"function {name} cannot be sent to workers ({type(exc).__name__}: {exc}){where}. "
            "Create such objects (locks, open files, clients, connections) inside the function, "
            "or pass something picklable (a path, a URL) instead."
        ) from exc


def dumps_value(obj: Any, what: str = "argument") -> bytes:
    """Pickle data (arguments or results); stdlib pickle first, cloudpickle as fallback."""
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:  # noqa: BLE001, S110 - anything stdlib pickle rejects goes to cloudpickle
        pass
    try:
        return cloudpickle.dumps(obj, protocol=PROTOCOL)
    except Exception as exc:
        culprit = _culprit(obj)
        where = f"; the culprit is {culprit}" if culprit else ""
        cls = UnpicklableResultError if what == "result" else UnpicklableArgumentError
        raise cls(
            f"{what} {_describe(obj)} cannot be pickled ({type(exc).__name__}: {exc}){where}. "
            f"Return or pass plain data (numbers, strings, numpy arrays, picklable objects)."
        ) from exc


SIG_BYTES = 32


def sign(key: bytes, data: bytes) -> bytes:
    """``data`` prefixed with its HMAC-SHA256 under ``key``."""
    import hashlib
    import hmac

    return hmac.new(key, data, hashlib.sha256).digest() + data


def open_signed(key: bytes, blob: bytes, what: str, hint: str | None = None) -> bytes:
    """The data inside a :func:`sign` blob, or PayloadSignatureError; never unpickles first.

    ``hint`` says what to do about a mismatch (default: the cluster's shared secret)."""
    import hashlib
    import hmac

    from .errors import PayloadSignatureError

    sig, data = blob[:SIG_BYTES], blob[SIG_BYTES:]
    if len(blob) < SIG_BYTES or not hmac.compare_digest(sig, hmac.new(key, data, hashlib.sha256).digest()):
        raise PayloadSignatureError(
            f"refusing to unpickle the task's {what}: its signature does not match, so it was not "
            "made by this executor (or was altered on the way). " + (
                hint or "On a cluster, give the driver and every worker the same SHARDWREN_SECRET"))
    return data


#: What pickled data may arrive as (a frame, a slice of one).
Buffer = bytes | bytearray | memoryview


def loads(data: Buffer) -> Any:
    """Inverse of :func:`dumps_function` and :func:`dumps_value`."""
    return pickle.loads(data)


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """The exceptions ``exc`` was raised from or while handling, nearest first."""
    out: list[BaseException] = []
    cur = exc.__cause__ or exc.__context__
    while cur is not None and len(out) < limit:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle a task's exception with its traceback text, keeping its type when possible.

    The exceptions it was raised from travel too when they pickle (pickling drops
    ``__cause__``): the retry policy looks down the chain, e.g. for the network
    error behind an s3fs ``OSError``.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    attempts: list[tuple[Callable[[Any], bytes], Any]] = [
        (_dumps_own_reduce, (exc, tb, _chain(exc))), (_dumps_own_reduce, (exc, tb, [])),
        (_dumps_default, (exc, tb, [])), (_dumps_cloudpickle, (exc, tb, []))]
    for dumps, payload in attempts:
        try:
            data = dumps(payload)
            pickle.loads(data)  # types that pickle but do not unpickle are common
            return data
        except Exception:  # noqa: BLE001, S110 - try the next, plainer form
            pass
    stand_in = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return pickle.dumps((stand_in, tb, []), protocol=PROTOCOL)


def _dumps_own_reduce(obj: Any) -> bytes:
    """Pickle with each object's own ``__reduce_ex__``, ignoring the reducers other
    libraries register with copyreg: tblib's (installed by distributed) cannot rebuild an
    exception with two builtin bases, such as TaskMemoryError."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=PROTOCOL)
    pickler.dispatch_table = {}
    pickler.dump(obj)
    return buf.getvalue()


def _dumps_default(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PROTOCOL)


def _dumps_cloudpickle(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def loads_exception(data: Buffer) -> BaseException:
    """Rebuild a task's exception with the remote traceback attached as ``__cause__``."""
    try:
        exc, tb, chain = pickle.loads(data)
    except Exception as err:  # noqa: BLE001 - its class may not exist in the driver
        return RemoteError(f"a task failed and its exception could not be rebuilt here: {err}")
    exc.__cause__ = link = RemoteTraceback(f'\n"""\n{tb}"""')
    for earlier in chain:  # reachable for the policy; not printed twice (tb has them)
        link.__context__, link.__suppress_context__ = earlier, True
        link = earlier
    return exc

