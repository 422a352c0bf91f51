"""Object stores addressed by URL, over fsspec.

``file://`` (the default, ``$SHARDWREN_STORE`` or ``~/.shardwren/store``),
``memory://`` (this process only), ``s3://bucket/prefix`` (s3fs; endpoint and
credentials from the usual AWS environment or explicit options), and any other
fsspec protocol. Keys are ``/``-separated relative paths.

Every byte shardwren keeps goes through :class:`Store`: matrices' chunks and
metadata, resume parts, job records. Local, memory and S3 stores therefore share
one code path above this module; what differs (atomic rename, exclusive create,
mapping a file into memory) is decided here, once.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import mmap
import os
import re
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import builtins

import fsspec
import numpy as np

from .. import _iostats, config
from .._optional import missing
from ..errors import (
    BackendNotInstalledError,
    InvalidParameterError,
    KeyIsPrefixError,
    KeyNotFoundError,
    ShardwrenError,
    StoreAccessError,
    StoreUnavailableError,
    StoreWriteError,
    UnknownSchemeError,
)
from ..policy import is_transient
from ._owners import owner_tag

DEFAULT_STORE = "~/.shardwren/store"

#: Values smaller than this are read, not mapped, by ``get_buffer(mapped=True)``: each
#: mapping keeps a file descriptor open (Python's mmap holds a duplicate), and small
#: reads are cheap anyway.
MAP_MIN_BYTES = 4 << 20
#: Local reads go into the destination in pieces of this size.
_READ_PIECE = 1 << 20
#: Mapped reads fault their pages in at once (Linux), not one by one.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: Suffix of a local value being written (``<key>.<owner tag>.<id>.partial``).
PARTIAL = ".partial"
#: The whole name of such a temporary (or an older shardwren's, ``<key>.<32 hex>.partial``):
#: a user's own key that merely ends in ``.partial`` is a value like any other.
_TEMPORARY = re.compile(r"\.(?:o[0-9a-f]{8}p[0-9]+s[0-9a-z]+\.[0-9a-f]{12}|[0-9a-f]{32})"
                        + re.escape(PARTIAL) + "$")


def is_temporary(name: str) -> bool:
    """Whether a key or file name is a temporary of an interrupted or ongoing write."""
    return _TEMPORARY.search(name) is not None

# protocol -> the optional library implementing it (shardwren._optional names its extra)
_NEEDS = {"s3": "s3fs", "s3a": "s3fs"}
# Schemes whose put_if_absent is atomic between processes (or, for memory, threads).
_EXCLUSIVE = {"file", "memory", "s3", "s3a"}
# A memory store lives in this process: one lock makes its check-then-write atomic.
_MEMORY_LOCK = threading.Lock()


def location_of(url_or_path: str) -> str:
    """:meth:`Store.location` of any URL or local path (plain paths, ``file://`` and ``local://``
    URLs come back as ``file://`` URLs of their real path)."""
    if url_or_path.startswith(("file://", "local://")):
        url_or_path = url_or_path.split("://", 1)[1]
        if url_or_path.startswith("localhost/"):
            url_or_path = url_or_path[len("localhost"):]
    elif "://" in url_or_path:
        return url_or_path.rstrip("/")
    return "file://" + os.path.realpath(url_or_path)


def overlaps(a: str, b: str) -> bool:
    """Whether two locations are the same or one lies inside the other."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def default_store_url() -> str:
    """The store used when none is given: setting ``store``, else ``~/.shardwren/store``."""
    url = config.load()["store"] or DEFAULT_STORE
    return url if "://" in url else "file://" + str(Path(url).expanduser().resolve())


def _split(url: str) -> tuple[str, str]:
    if "://" not in url:
        return "file", url
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    # fsspec's "local" is its "file": the same disk, with local stores' atomic writes
    return ("file" if scheme == "local" else scheme), rest


def _check_key(key: str) -> str:
    key = key.strip("/")
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidParameterError(
            f"invalid store key {key!r}: use a relative path like 'matrices/x'")
    return key


def _parts(data: bytes | Sequence[Any]) -> list:
    return [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)


class Store:
    """A flat key -> bytes store rooted at a URL.

    Parameters
    ----------
    url : str
        ``file:///path``, ``memory://name``, ``s3://bucket/prefix`` or any fsspec URL.
        A plain path means ``file://``.
    **options
        Passed to the fsspec filesystem (e.g. ``endpoint_url=``, ``key=``,
        ``secret=`` for S3). They are pickled with the store, never printed.
    """

    def __init__(self, url: str, **options: Any):
        scheme, rest = _split(url)
        self.scheme = scheme
        self.options = options
        if scheme == "file":
            root = str(Path(rest).expanduser().resolve())
            try:
                os.makedirs(root, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise write_error(exc, "file://" + root, "(the store's root folder)") from exc
            self.url = "file://" + root
            self.fs = fsspec.filesystem("file")
        else:
            self.url = f"{scheme}://{rest.rstrip('/')}"
            self.fs = _filesystem(scheme, options)
            root = self.fs._strip_protocol(self.url).rstrip("/")
        self.root = root

    # -- pickling and display: URL and options only, never connections -----------
    def __reduce__(self):
        return (_rebuild, (self.url, self.options))

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and (self.url, self.options) == (other.url, other.options)

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def is_local(self) -> bool:
        """True for ``file://`` stores."""
        return self.scheme == "file"

    @property
    def exclusive_create(self) -> bool:
        """Whether :meth:`put_if_absent` is atomic: true for local disk (a hard link),
        memory (a lock) and S3 (a conditional ``If-None-Match: *`` PUT; S3-compatible
        services that ignore the condition make it a plain put)."""
        return self.scheme in _EXCLUSIVE

    def path(self, key: str) -> str:
        """Filesystem path (for fsspec) of ``key``."""
        return f"{self.root}/{_check_key(key)}"

    def url_for(self, key: str) -> str:
        """Full URL of ``key``, usable by zarr, dask or fsspec directly."""
        return f"{self.url}/{_check_key(key)}"

    def location(self, key: str = "") -> str:
        """One spelling of where ``key`` lives, whatever the store's root: its URL, with
        symlinks resolved on local disk (compare two with :func:`overlaps`)."""
        return location_of(self.url_for(key) if key else self.url)

    @contextlib.contextmanager
    def _talking(self, key: str, verb: str = "read") -> Iterator[None]:
        """Name the store and the key when an object store cannot be reached or
        refuses these credentials (its clients raise their own types: botocore's
        EndpointConnectionError is not even an OSError)."""
        try:
            yield
        except ShardwrenError:
            raise
        except PermissionError as exc:
            if verb not in ("read", "list"):
                raise  # a refused write or delete: StoreWriteError names it
            raise StoreAccessError(
                f"cannot read {key!r} in {self.url}: access denied ({exc}); check the "
                "credentials (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the store's "
                "key=/secret= options) and the bucket's permissions") from exc
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise StoreUnavailableError(
                f"cannot reach the store {self.url} to {verb} {key!r} ({type(exc).__name__}: "
                f"{exc}); check its endpoint and the network, then retry") from exc

    def _missing(self, key: str) -> KeyNotFoundError:
        return KeyNotFoundError(f"key {key!r} not found in store {self.url}")

    def _prefix(self, key: str) -> KeyIsPrefixError:
        return KeyIsPrefixError(f"key {key!r} in store {self.url} is a prefix (a folder of "
                                "other keys), not a value")

    # -- reading -------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """Return the bytes stored at ``key``.

        Raises
        ------
        KeyNotFoundError
            If there is no such key (also a ``FileNotFoundError``).
        KeyIsPrefixError
            If ``key`` is a folder of other keys on a local store.
        """
        return self._cat(key)

    def _cat(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes of ``key`` (all, or ``start:end``), with the store's errors and I/O count."""
        try:
            if start is not None and start < 0:
                start = max(0, self.size(key) + start)
            with self._talking(key):
                data = self.fs.cat_file(self.path(key), start=start, end=end)
        except IsADirectoryError:
            raise self._prefix(key) from None
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        _iostats.add_read(len(data))
        return data

    def get_buffer(self, key: str, mapped: bool = False) -> np.ndarray:
        """The whole value at ``key`` as a 1-D uint8 array, with as few copies as the
        store allows.

        On a local store the file is read straight into fresh (not zeroed) memory,
        which comes back writable; with ``mapped`` a value of at least
        :data:`MAP_MIN_BYTES` is instead mapped into memory read-only (no fresh
        memory; values are replaced by rename, so the mapping keeps its contents).
        Other stores return their client's bytes (read-only, no extra copy).

        Raises
        ------
        KeyNotFoundError, KeyIsPrefixError
        """
        if not self.is_local:
            return np.frombuffer(self.get(key), dtype=np.uint8)
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        except IsADirectoryError:
            raise self._prefix(key) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise self._prefix(key)
            size = info.st_size
            if mapped and size >= MAP_MIN_BYTES:
                buf = np.frombuffer(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE,
                                              prot=mmap.PROT_READ), dtype=np.uint8)
            else:
                # Fresh memory, not zeroed: reading fills it. (FileIO.readinto in pieces
                # measured 5x faster than one os.readv into a fresh buffer.)
                buf = np.empty(size, dtype=np.uint8)
                view, got = buf.data, 0
                with open(fd, "rb", buffering=0, closefd=False) as fh:
                    while got < size:
                        n = fh.readinto(view[got:got + _READ_PIECE])
                        if not n:  # truncated under us: what we hold is all there is
                            buf = buf[:got]
                            break
                        got += n
        finally:
            os.close(fd)
        _iostats.add_read(buf.nbytes)
        return buf

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``start:end`` of the value at ``key``; a negative ``start`` counts
        from its end (``get_range(k, -4)`` is its last four bytes)."""
        return self._cat(key, start, end)

    def size(self, key: str) -> int:
        """Size in bytes of the value at ``key``."""
        path = self.path(key)
        if self.is_local:
            try:
                info = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise self._missing(key) from None
            if stat.S_ISDIR(info.st_mode):
                raise self._prefix(key)
            return info.st_size
        try:
            with self._talking(key):
                info = self.fs.info(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        if info.get("type") == "directory":
            raise self._prefix(key)
        return int(info["size"])

    def modified(self, key: str) -> float | None:
        """When the value at ``key`` was last written (seconds since the epoch), or
        ``None`` when the file system does not say."""
        path = self.path(key)
        try:
            if self.is_local:
                info_local = os.stat(path)
                if stat.S_ISDIR(info_local.st_mode):
                    raise self._prefix(key)
                return info_local.st_mtime
            with self._talking(key):
                info = self.fs.info(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        if info.get("type") == "directory":
            raise self._prefix(key)
        for field in ("mtime", "LastModified", "last_modified", "updated", "created"):
            value = info.get(field)
            if value is None:
                continue
            if hasattr(value, "timestamp"):  # a datetime (s3fs, gcsfs)
                return float(value.timestamp())
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        return None

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value. A store that cannot be asked (unreachable,
        credentials refused) raises its error rather than answering False."""
        return self._is_file(self.path(key))

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under ``prefix`` (all keys when empty), relative to the root.

        Temporaries of writes in progress (or abandoned: see
        :func:`collect_garbage`) are not listed.
        """
        prefix = prefix.strip("/")
        # fsspec's memory file system cannot list below a key that is also a value:
        # list it all (it lives in this process, and is small) and filter.
        base = self.path(prefix) if prefix and self.scheme != "memory" else self.root
        try:
            with self._talking(prefix or "(all keys)", "list"):
                found = self.fs.find(base)
        except (FileNotFoundError, NotADirectoryError):
            return []
        cut = len(self.root.rstrip("/")) + 1
        under = prefix + "/" if prefix else ""
        # Only keys strictly under the prefix: object-store listings may also return
        # the prefix itself (a "directory" created meanwhile) or siblings sharing it.
        return sorted(k for k in (self.fs._strip_protocol(f)[cut:] for f in found)
                      if k.startswith(under) and not is_temporary(k))

    def temporaries(self) -> builtins.list[tuple[str, float, int]]:
        """``(key, modified time, size)`` of every ``.partial`` temporary: values a
        process began writing on a local store and has not (yet) renamed into place."""
        if not self.is_local:
            return []  # object stores write a value in one request: no temporaries
        out = []
        cut = len(self.root.rstrip("/")) + 1
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if is_temporary(name):
                    full = os.path.join(dirpath, name)
                    try:
                        info = os.stat(full)
                    except FileNotFoundError:
                        continue  # renamed into place meanwhile
                    out.append((full[cut:], info.st_mtime, info.st_size))
        return sorted(out)

    # -- writing -------------------------------------------------------------------
    def put(self, key: str, data: bytes | Sequence[Any]) -> None:
        """Store ``data`` at ``key``; atomic on local disk (temporary file + rename).

        ``data`` may be a sequence of byte buffers (memoryviews of arrays, say),
        stored one after the other without first being joined into a copy.

        Raises
        ------
        StoreWriteError
            When the store refuses the write (read-only, full, ...), naming ``key``.
        """
        path = self.path(key)
        parts = _parts(data)
        _iostats.add_written(sum(memoryview(p).nbytes for p in parts))
        try:
            if self.is_local:
                tmp = self._write_temporary(path, parts)
                try:
                    os.replace(tmp, path)
                finally:
                    _unlink_quietly(tmp)
            elif self.scheme == "memory":
                with _MEMORY_LOCK:
                    self.fs.pipe_file(path, b"".join(parts))
            else:
                with self._talking(key, "write"):
                    self.fs.pipe_file(path, b"".join(parts))
        except OSError as exc:
            raise write_error(exc, self.url, key) from exc

    def put_if_absent(self, key: str, data: bytes | Sequence[Any]) -> bool:
        """Store ``data`` at ``key`` only if ``key`` holds nothing yet.

        Returns True if this call created the value, False if one was there (it
        is left untouched). Atomic between processes where :attr:`exclusive_create`
        says so: of several concurrent callers exactly one gets True, and every
        reader sees either nothing or the whole value. Elsewhere it is a check
        followed by a put.
        """
        path = self.path(key)
        parts = _parts(data)
        try:
            if self.is_local:
                if os.path.lexists(path):  # the common case needs no temporary at all
                    return False
                tmp = self._write_temporary(path, parts)
                try:
                    os.link(tmp, path)  # fails if path exists: the exclusive step
                except FileExistsError:
                    return False
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    # No hard links on this file system: O_EXCL is exclusive too, but a
                    # reader may see the value partly written.
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    except FileExistsError:
                        return False
                    with os.fdopen(fd, "wb") as fh:
                        for part in parts:
                            fh.write(part)
                finally:
                    _unlink_quietly(tmp)
            elif self.scheme == "memory":
                with _MEMORY_LOCK:
                    if self.fs.exists(path):
                        return False
                    self.fs.pipe_file(path, b"".join(parts))
            else:
                try:
                    with self._talking(key, "write"):
                        self.fs.pipe_file(path, b"".join(parts), mode="create")
                except FileExistsError:
                    return False
                except TypeError:  # an fsspec implementation without mode=
                    if self.fs.exists(path):
                        return False
                    self.fs.pipe_file(path, b"".join(parts))
        except OSError as exc:
            raise write_error(exc, self.url, key) from exc
        _iostats.add_written(sum(memoryview(p).nbytes for p in parts))
        return True

    def _write_temporary(self, path: str, parts: builtins.list) -> str:
        """Write ``parts`` to a fresh temporary beside ``path``; return its path.
        Its name carries this process's owner tag, so that ``store gc`` can tell an
        abandoned temporary (its writer is dead) from one being written."""
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{owner_tag()}.{uuid.uuid4().hex[:12]}{PARTIAL}"
        try:
            with open(tmp, "wb") as fh:
                for part in parts:
                    fh.write(part)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def delete(self, key: str, missing_ok: bool = False) -> None:
        """Remove ``key`` (or, when ``key`` is a prefix, everything under it).

        Only that key or prefix: names are never read as glob patterns (fsspec's
        ``rm`` expands ``*``, ``?`` and ``[...]``, so ``delete("run*")`` would also
        remove ``runA``), and a delete the store refuses raises :class:`StoreWriteError`
        (S3's bulk delete reports refusals per key, which fsspec ignores: what is left
        is listed again and named).

        Raises
        ------
        KeyNotFoundError
            If nothing is at ``key`` (unless ``missing_ok``).
        StoreWriteError
            When the store refuses to delete something.
        """
        path = self.path(key)
        try:
            if self.is_local:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                return
            if self._is_file(path):
                with self._talking(key, "delete"):
                    self.fs.rm_file(path)
                return
            with self._talking(key, "delete"):
                found = [f for f in self.fs.find(path) if f.rstrip("/") != path]
                if not found:
                    raise FileNotFoundError(path)
                if any(glob.has_magic(f) for f in found) or self.scheme == "memory":
                    for f in found:
                        self.fs.rm_file(f)
                else:
                    self.fs.rm(found)  # one bulk request per 1,000 keys on S3
                # what it was asked to delete and still holds (not keys written meanwhile)
                left = sorted(set(self.fs.find(path)) & set(found))
            if left:
                raise StoreWriteError(
                    errno.EACCES, f"cannot delete {key!r} in {self.url}: the store kept "
                    f"{len(left)} of {len(found)} keys under it (e.g. {left[0]!r}), refusing to "
                    "delete them; check this user's delete permission")
        except (FileNotFoundError, NotADirectoryError):
            if not missing_ok:
                raise KeyNotFoundError(
                    f"cannot delete {key!r}: not found in store {self.url}") from None
        except OSError as exc:
            if isinstance(exc, KeyNotFoundError):
                raise
            raise write_error(exc, self.url, key, "delete") from exc

    def _is_file(self, path: str) -> bool:
        """Whether ``path`` holds a value; a failure to ask (network, permission) is
        raised, never taken for "no" (fsspec's ``isfile`` answers False to any error)."""
        if self.is_local:
            return os.path.isfile(path)
        try:
            with self._talking(path[len(self.root) + 1:]):
                return self.fs.info(path).get("type") == "file"
        except (FileNotFoundError, NotADirectoryError):
            return False

    # -- zarr --------------------------------------------------------------------
    def zarr_store(self, key: str, read_only: bool = False):
        """A zarr v3 store object rooted at ``key`` inside this store: zarr-python
        reads and writes through this store's methods, whatever its kind."""
        from ._zarr import ZarrStore

        return ZarrStore(self, _check_key(key), read_only=read_only)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_error(exc: OSError, url: str, key: str, verb: str = "write") -> OSError:
    """Name the problem when a store refuses a write: a :class:`StoreWriteError`
    (an ``OSError``) saying what was being written, where, and why; the store's own
    error stays attached as its cause (network errors remain retryable)."""
    if isinstance(exc, (StoreWriteError, StoreUnavailableError)):
        return exc  # already named; an unreachable store is not a full or read-only one
    reasons = {errno.ENOSPC: "the store is full (no space left on its device)",
               errno.EDQUOT: "the store's disk quota is exhausted",
               errno.EROFS: "the store is on a read-only file system",
               errno.EACCES: "the store is read-only for this user (permission denied)",
               errno.EPERM: "the store is read-only for this user (operation not permitted)",
               errno.ENOTDIR: "a prefix of the key is a value, not a folder"}
    reason = reasons.get(exc.errno or 0) or f"{type(exc).__name__}: {exc}"
    remedy = "free space, fix its permissions, or use another store"
    if "NoSuchBucket" in repr(exc) or "bucket does not exist" in str(exc):
        reason, remedy = "its bucket does not exist", "create the bucket, or use another store"
    err = StoreWriteError(exc.errno, f"cannot {verb} {key!r} in {url}: {reason}; {remedy}")
    err.__cause__ = exc
    return err


def _filesystem(scheme: str, options: dict[str, Any]):
    if scheme not in fsspec.available_protocols():
        raise UnknownSchemeError(
            f"unknown store URL scheme {scheme!r}; use file://, memory://, s3://, or another "
            f"fsspec protocol ({', '.join(sorted(fsspec.available_protocols())[:12])}, ...)"
        )
    kwargs = dict(options)
    if scheme in ("s3", "s3a"):
        # Listings must be fresh: other processes add blocks and metadata all the time.
        kwargs.setdefault("use_listings_cache", False)
        # A frozen endpoint must fail, not block: botocore's defaults (60 s per read,
        # 5 attempts) times s3fs's own 5 retries held one read for 7 minutes. Retries
        # are botocore's alone now (standard mode: backoff, and throttling handled), so
        # a read that gets no byte for 20 s is tried 5 times, about 2 minutes in all.
        config = dict(kwargs.get("config_kwargs") or {})
        config.setdefault("connect_timeout", 10)
        config.setdefault("read_timeout", 20)
        config.setdefault("retries", {"max_attempts": 5, "mode": "standard"})
        kwargs["config_kwargs"] = config
    try:
        fs = fsspec.filesystem(scheme, **kwargs)
        if scheme in ("s3", "s3a") and "retries" not in options:
            fs.retries = 1  # s3fs's own loop around botocore's retries: one pass
        return fs
    except ImportError as exc:
        if scheme in _NEEDS:
            raise missing(f"store scheme {scheme}://", _NEEDS[scheme], exc,
                          BackendNotInstalledError) from exc
        raise BackendNotInstalledError(
            f"store scheme {scheme}:// needs a package that is not installed ({exc}): "
            "install its fsspec implementation"
        ) from exc


def _rebuild(url: str, options: dict[str, Any]) -> Store:
    return Store(url, **options)


def open_store(store: Store | str | None = None, **options: Any) -> Store:
    """Return a :class:`Store` for a URL, an existing store, or the default (``None``)."""
    if isinstance(store, Store):
        return store
    return Store(store or default_store_url(), **options)


from ._gc import Garbage, collect_garbage  # noqa: E402  (needs Store)

__all__ = ["Store", "open_store", "default_store_url", "DEFAULT_STORE", "MAP_MIN_BYTES",
           "collect_garbage", "Garbage", "write_error", "location_of", "overlaps"]
