"""Object stores addressed by URL, over fsspec.

``file://`` (the default, ``$SHARDWREN_STORE`` or ``~/.shardwren/store``),
``memory://`` (this process only), ``s3://bucket/prefix`` (s3fs; endpoint and
credentials from the usual AWS environment or explicit options), and any other
fsspec protocol. Keys are ``/``-separated relative paths.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec

from .. import _iostats, config
from .._optional import missing
from ..errors import BackendNotInstalledError, KeyNotFoundError, StoreWriteError, UnknownSchemeError

DEFAULT_STORE = "~/.shardwren/store"

# protocol -> the optional library implementing it (shardwren._optional names its extra)
_NEEDS = {"s3": "s3fs", "s3a": "s3fs"}


def default_store_url() -> str:
    """The store used when none is given: setting ``store``, else ``~/.shardwren/store``."""
    url = config.load()["store"] or DEFAULT_STORE
    return url if "://" in url else "file://" + str(Path(url).expanduser().resolve())


def _split(url: str) -> tuple[str, str]:
    if "://" not in url:
        return "file", url
    scheme, rest = url.split("://", 1)
    return scheme.lower(), rest


def _check_key(key: str) -> str:
    key = key.strip("/")
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid store key {key!r}: use a relative path like 'matrices/x'")
    return key


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
            os.makedirs(root, mode=0o700, exist_ok=True)
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

    def path(self, key: str) -> str:
        """Filesystem path (for fsspec) of ``key``."""
        return f"{self.root}/{_check_key(key)}"

    def url_for(self, key: str) -> str:
        """Full URL of ``key``, usable by zarr, dask or fsspec directly."""
        return f"{self.url}/{_check_key(key)}"

    # -- the five operations -------------------------------------------------------
    def get(self, key: str) -> bytes:
        """Return the bytes stored at ``key``.

        Raises
        ------
        KeyNotFoundError
            If there is no such key (also a ``FileNotFoundError``).
        """
        try:
            data = self.fs.cat_file(self.path(key))
        except (FileNotFoundError, IsADirectoryError):
            raise KeyNotFoundError(f"key {key!r} not found in store {self.url}") from None
        _iostats.add_read(len(data))
        return data

    def put(self, key: str, data: bytes | Sequence[Any]) -> None:
        """Store ``data`` at ``key``; atomic on local disk (temporary file + rename).

        ``data`` may be a sequence of byte buffers (memoryviews of arrays, say),
        stored one after the other without first being joined into a copy.
        """
        path = self.path(key)
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        _iostats.add_written(sum(memoryview(p).nbytes for p in parts))
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                tmp = f"{path}.{uuid.uuid4().hex}.partial"
                try:
                    with open(tmp, "wb") as fh:
                        for part in parts:
                            fh.write(part)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                self.fs.pipe_file(path, b"".join(parts))
        except OSError as exc:
            raise write_error(exc, self.url, key) from None

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value."""
        return self.fs.isfile(self.path(key))

    def delete(self, key: str, missing_ok: bool = False) -> None:
        """Remove ``key`` (or, when ``key`` is a prefix, everything under it)."""
        path = self.path(key)
        if not self.fs.exists(path):
            if missing_ok:
                return
            raise KeyNotFoundError(f"cannot delete {key!r}: not found in store {self.url}")
        self.fs.rm(path, recursive=True)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under ``prefix`` (all keys when empty), relative to the root."""
        base = self.root if not prefix.strip("/") else self.path(prefix)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        cut = len(self.root.rstrip("/")) + 1
        return sorted(p[cut:] for p in (self.fs._strip_protocol(f) for f in found)
                      if not p.endswith(".partial"))

    # -- zarr --------------------------------------------------------------------
    def zarr_store(self, key: str, read_only: bool = False):
        """A zarr v3 store object rooted at ``key`` inside this store."""
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path(key), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url_for(key), storage_options=dict(self.options) or None, read_only=read_only
        )


def write_error(exc: OSError, url: str, key: str) -> OSError:
    """Name the problem when a store refuses a write (other errors pass through)."""
    import errno

    reasons = {errno.ENOSPC: "the store is full (no space left on its device)",
               errno.EDQUOT: "the store's disk quota is exhausted",
               errno.EROFS: "the store is on a read-only file system",
               errno.EACCES: "the store is read-only for this user (permission denied)",
               errno.EPERM: "the store is read-only for this user (operation not permitted)"}
    reason = reasons.get(exc.errno)
    if reason is None:
        return exc
    err = StoreWriteError(exc.errno, f"cannot write {key!r} to {url}: {reason}; free space, "
                                     "fix its permissions, or use another store")
    err.__cause__ = exc
    return err


def _filesystem(scheme: str, options: dict[str, Any]):
    if scheme not in fsspec.available_protocols():
        raise UnknownSchemeError(
            f"unknown store URL scheme {scheme!r}; use file://, memory://, s3://, or another "
            f"fsspec protocol ({', '.join(sorted(fsspec.available_protocols())[:12])}, ...)"
        )
    try:
        return fsspec.filesystem(scheme, **options)
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


__all__ = ["Store", "open_store", "default_store_url", "DEFAULT_STORE"]
