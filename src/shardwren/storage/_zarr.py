"""A zarr-python v3 store over a shardwren :class:`~shardwren.storage.Store`.

zarr-python reads and writes arrays shardwren did not lay out itself (any codec,
Zarr v2, sharding, ...) through this adapter, so that those chunks too go through
the one Store interface, whatever the store's kind: atomic local writes, the same
error types, the same byte counters. Modelled on zarr's own ``LocalStore``; the
blocking Store calls run in threads so zarr's event loop keeps fetching in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    SuffixByteRequest,
)
from zarr.abc.store import Store as _ZarrStore
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ..errors import KeyNotFoundError

if TYPE_CHECKING:
    from . import Store


class ZarrStore(_ZarrStore):
    """The keys of ``store`` under ``prefix``, as a zarr store."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True
    # zarr < 3.1.2 declares partial writes abstract; it never calls them when this is False.
    supports_partial_writes = False

    async def set_partial_values(self, key_start_values) -> None:  # zarr < 3.1.2 only
        raise NotImplementedError("shardwren's zarr store writes whole chunks only")

    def __init__(self, store: Store, prefix: str, read_only: bool = False):
        super().__init__(read_only=read_only)
        self.store = store
        self.prefix = prefix.strip("/")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ZarrStore) and self.store == other.store
                and self.prefix == other.prefix)

    def __repr__(self) -> str:
        return f"ZarrStore({self.store.url_for(self.prefix)!r})"

    def with_read_only(self, read_only: bool = False) -> ZarrStore:
        return ZarrStore(self.store, self.prefix, read_only=read_only)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if key else self.prefix

    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        full = self._key(key)
        try:
            if byte_range is None:
                return self.store.get(full)
            if isinstance(byte_range, RangeByteRequest):
                return self.store.get_range(full, byte_range.start, byte_range.end)
            if isinstance(byte_range, OffsetByteRequest):
                return self.store.get_range(full, byte_range.offset)
            if isinstance(byte_range, SuffixByteRequest):
                return self.store.get_range(full, -byte_range.suffix)
        except KeyNotFoundError:
            return None
        # A key that is a folder is not a missing chunk (zarr would read the fill value):
        # KeyIsPrefixError goes through, and the matrix reports the block as corrupt.
        raise TypeError(f"unexpected byte range {byte_range!r}")

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        data = await asyncio.to_thread(self._read, key, byte_range)
        if data is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.store.exists, self._key(key))

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self.store.put, self._key(key), [value.as_numpy_array()])

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self.store.put_if_absent, self._key(key),
                                [value.as_numpy_array()])

    async def delete(self, key: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self.store.delete, self._key(key), True)

    def _listing(self) -> list[str]:
        cut = len(self.prefix) + 1
        return [k[cut:] for k in self.store.list(self.prefix) if k.startswith(self.prefix + "/")]

    async def list(self) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._listing):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._listing):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        start = f"{prefix}/" if prefix else ""
        seen = set()
        for key in await asyncio.to_thread(self._listing):
            if key.startswith(start):
                child = key[len(start):].split("/", 1)[0]
                if child not in seen:
                    seen.add(child)
                    yield child
