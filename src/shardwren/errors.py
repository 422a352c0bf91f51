"""One error hierarchy for shardwren.

Every class subclasses :class:`ShardwrenError` *and* the builtin exception that
callers already catch, so ``except FileNotFoundError`` keeps working for a
missing key and ``except ValueError`` for a shape mismatch.
"""

from __future__ import annotations

import concurrent.futures as _cf
import signal


class ShardwrenError(Exception):
    """Base class of every error raised by shardwren itself."""


# --- configuration -----------------------------------------------------------


class ConfigError(ShardwrenError, ValueError):
    """A setting has a value shardwren cannot use."""


class UnknownBackendError(ConfigError):
    """The backend name is not one shardwren knows."""


class MissingDependencyError(ShardwrenError, ImportError):
    """A feature needs an optional library that is not installed (or cannot be imported).

    The message names the library and the ``pip install`` line that brings it.
    """


class BackendNotInstalledError(MissingDependencyError):
    """A known backend or store needs an optional dependency that is missing."""


class UnknownSchemeError(ConfigError):
    """A store URL names a protocol neither shardwren nor fsspec knows."""


class StoreNotSharedError(ConfigError):
    """The store cannot be reached by the workers of a cluster backend."""


class SchedulerUnreachableError(ShardwrenError, ConnectionError):
    """The cluster scheduler did not answer in time."""


# --- serialisation -------------------------------------------------------------


class SerializationError(ShardwrenError, TypeError):
    """Something that must cross a process boundary cannot be pickled."""


class UnpicklableFunctionError(SerializationError):
    """The mapped function (or something it captures) cannot be pickled."""


class UnpicklableArgumentError(SerializationError):
    """A task argument cannot be pickled."""


class UnpicklableResultError(SerializationError):
    """A task's return value cannot be pickled by the worker."""


class ResultUnpicklingError(SerializationError):
    """A task's result arrived but cannot be unpickled in the driver (e.g. its class lives in
    a module only the workers have)."""


class PayloadSignatureError(ShardwrenError, PermissionError):
    """A task's function or arguments are unsigned or fail their HMAC: not unpickled."""


class NotIterableError(ShardwrenError, TypeError):
    """``map`` was given something that is not iterable."""


# --- storage -------------------------------------------------------------------


class KeyNotFoundError(ShardwrenError, FileNotFoundError):
    """A key is not present in the store."""


class BlockNotFoundError(KeyNotFoundError):
    """A block of a ShardedMatrix was never written."""


class ShapeMismatchError(ShardwrenError, ValueError):
    """An array does not have the shape the operation requires."""


class DTypeMismatchError(ShardwrenError, TypeError):
    """An array's dtype cannot be used (or safely cast) where it is given."""


class StoreWriteError(ShardwrenError, OSError):
    """The store refused a write: read-only, full, or out of quota."""


class StoreUnavailableError(ShardwrenError, ConnectionError):
    """The store could not be reached (endpoint down or frozen, network cut); a
    ``ConnectionError``, so tasks that meet it are retried."""


class StoreAccessError(ShardwrenError, PermissionError):
    """The store refused to be read with these credentials."""


class NonFiniteInputError(ShardwrenError, ValueError):
    """An input holds NaN or infinity where finite numbers are needed."""


class CorruptBlockError(ShardwrenError, ValueError):
    """Stored bytes fail their checksum."""


class MatrixExistsError(ShardwrenError, FileExistsError):
    """A matrix exists with another layout and ``overwrite=False`` was given."""


class KeyIsPrefixError(ShardwrenError, IsADirectoryError):
    """A key names a prefix (a directory of other keys), not a value."""


class KeyConflictError(ShardwrenError, FileExistsError):
    """A key would reach into another node's tree (or hold one inside its own)."""


class MetadataError(ShardwrenError, ValueError):
    """A node's metadata (``zarr.json``, ``.zarray``) is not valid JSON or lacks a field."""


class NotAMatrixError(ShardwrenError, ValueError):
    """A key holds a Zarr node that is not a 2-D numeric array (a group, a 1-D array, ...)."""


class ResumeMismatchError(ShardwrenError, ValueError):
    """Saved partial results under a key were produced by a different job."""


class OutputAliasError(ShardwrenError, ValueError):
    """An operation's output is one of its inputs (or inside one): writing it would
    change the input while other tasks still read it."""


class DatasetNotFoundError(ShardwrenError, FileNotFoundError):
    """A dataset's files could not be found or downloaded."""


# --- estimators ----------------------------------------------------------------


class InvalidParameterError(ShardwrenError, ValueError, TypeError):
    """An estimator parameter has a value or type it cannot use.

    Both a ValueError and a TypeError, like scikit-learn's own
    ``InvalidParameterError``, so code written for either keeps working.
    """


class NotEnoughSamplesError(ShardwrenError, ValueError):
    """More neighbours were asked for than the training set has points."""


# --- execution -----------------------------------------------------------------


class ExecutorShutdownError(ShardwrenError, RuntimeError):
    """Work was submitted to, or left pending in, an executor that shut down."""


class ExecutorBrokenError(ShardwrenError, _cf.BrokenExecutor):
    """The backend's own machinery failed (e.g. the local backend's manager thread died):
    every task still outstanding fails with this error, and new work is refused.

    Like :class:`concurrent.futures.BrokenExecutor` (which it subclasses, so a
    ``RuntimeError`` too); create a new executor to go on.
    """


class ResultTransferError(ShardwrenError, RuntimeError):
    """A task finished but its result could not be received by the driver
    (for example no memory for the frame that carries it). Not retried: a second run
    would send the same result."""


class WorkerCrashedError(ShardwrenError, RuntimeError):
    """The worker process running a task died before returning its result.

    Attributes
    ----------
    exitcode : int or None
        The worker's exit status; negative values are signal numbers.
    signal_name : str or None
        The signal's name (``"SIGKILL"``) when the worker was killed by one.
    """

    def __init__(self, message: str, exitcode: int | None = None):
        super().__init__(message)
        self.exitcode = exitcode
        self.signal_name = signal_name(exitcode)


class TaskTimeoutError(ShardwrenError, TimeoutError):
    """A task ran past its time limit."""


class TaskCancelledError(ShardwrenError, _cf.CancelledError):
    """The task was cancelled: :meth:`Future.result` of a cancelled future raises it,
    naming the task. Under PyWren's API (``shardwren.pywren``) a *running* call can be
    cancelled too: it is abandoned and its result, if it ever comes, ignored."""


class TaskExitError(ShardwrenError, RuntimeError):
    """The task called ``sys.exit()`` with a non-zero status (``os._exit`` ends its worker
    process: that is a :class:`WorkerCrashedError`, and is retried).

    Attributes
    ----------
    exitcode : int or str or None
        The status it passed.
    """

    def __init__(self, message: str, exitcode: object = None):
        super().__init__(message)
        self.exitcode = exitcode


class ResultLostError(ShardwrenError, RuntimeError):
    """A future loaded from a pickle waits for a result that will never come: the driver
    that ran the task ended before writing it to the store."""


class TaskMemoryError(ShardwrenError, MemoryError):
    """A task exceeded its memory limit."""


class MemoryPlanError(ShardwrenError, MemoryError):
    """A planned operation would need more memory per task than the limit allows."""


class RemoteError(ShardwrenError, RuntimeError):
    """A task raised an exception whose own type could not be sent back.

    The original type name, message and traceback are kept in the message.
    """


class RemoteTraceback(Exception):
    """Carries a worker-side traceback; attached as ``__cause__`` of re-raised errors.

    Modelled on ``concurrent.futures.process._RemoteTraceback``.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def signal_name(exitcode: int | None) -> str | None:
    """Name the signal behind a negative exit code (``-9`` -> ``"SIGKILL"``)."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def describe_exit(exitcode: int | None) -> str:
    """Human description of a process exit status, for error messages."""
    name = signal_name(exitcode)
    if name is not None:
        hint = {
            "SIGKILL": " (killed from outside, or by the kernel's OOM killer)",
            "SIGSEGV": " (a segmentation fault in native code)",
            "SIGABRT": " (aborted, often by a failed assertion in native code)",
        }.get(name, "")
        return f"signal {name}{hint}"
    if exitcode is None:
        return "an unknown exit status"
    return f"exit code {exitcode} (a non-zero return code)" if exitcode else f"exit code {exitcode}"
